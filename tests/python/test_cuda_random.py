"""CUDA backend vs the float64 CPU reference on 200 random configurations (forward and backward):
ranks 1-3, odd extents, kernel/stride/dilation/causal per axis, grouped heads, additional keys,
head dims on and off the fused kernels' list, fp16/bf16/fp32, contiguous and strided inputs.
Skipped without CUDA; the GPU check script (scripts/gpu_check.sh) runs it on the H100."""
import random

import pytest
import torch

import nattn

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TOL = {torch.bfloat16: 2.5e-2, torch.float16: 5e-3, torch.float32: 1e-4}


def _config(rng: random.Random):
    rank = rng.choice([1, 2, 2, 3, 3])
    extent, kernel, stride, dilation, causal = [], [], [], [], []
    budget = {1: 300, 2: 24, 3: 9}[rank]
    for _ in range(rank):
        d = rng.choice([1, 1, 1, 2, 3])
        k = rng.randint(2, max(2, min(9, budget // d)))
        x = rng.randint(k * d, k * d + rng.choice([0, 3, budget]))
        extent.append(x)
        kernel.append(k)
        dilation.append(d)
        stride.append(rng.randint(1, k))
        causal.append(rng.random() < 0.3)
    hkv = rng.choice([1, 2])
    hq = hkv * rng.choice([1, 2, 3])
    dim = rng.choice([32, 64, 128, 64, 128, 8 * rng.randint(1, 32), rng.randint(1, 40)])
    dim_v = dim if rng.random() < 0.7 else rng.choice([32, 64, 8 * rng.randint(1, 16)])
    return dict(rank=rank, extent=extent, kernel=kernel, stride=stride, dilation=dilation,
                causal=causal, batch=rng.choice([1, 2]), hq=hq, hkv=hkv, dim=dim, dim_v=dim_v,
                na=rng.choice([0, 0, 0, 3, 17]),
                dtype=rng.choice([torch.bfloat16, torch.float16, torch.float32]),
                strided=rng.random() < 0.25)


def _make(shape, dtype, strided):
    if not strided:
        return torch.randn(shape, device="cuda", dtype=dtype)
    # A view into a wider buffer: every non-batch stride differs from the contiguous one.
    big = torch.randn(*shape[:-1], shape[-1] + 8, device="cuda", dtype=dtype)
    return big[..., 4:4 + shape[-1]]


def _rel(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    assert torch.isfinite(a).all(), "non-finite values (unwritten output?)"
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


@pytest.mark.parametrize("seed", range(200))
def test_random_config_forward_backward(seed):
    rng = random.Random(seed * 7919 + 17)
    c = _config(rng)
    torch.manual_seed(seed)
    fn = {1: nattn.na1d, 2: nattn.na2d, 3: nattn.na3d}[c["rank"]]
    grid = [c["batch"], *c["extent"]]
    q = _make(grid + [c["hq"], c["dim"]], c["dtype"], c["strided"])
    k = _make(grid + [c["hkv"], c["dim"]], c["dtype"], c["strided"])
    v = _make(grid + [c["hkv"], c["dim_v"]], c["dtype"], c["strided"])
    extra = {}
    if c["na"]:
        extra = dict(
            additional_keys=torch.randn(c["batch"], c["na"], c["hkv"], c["dim"], device="cuda",
                                        dtype=c["dtype"]),
            additional_values=torch.randn(c["batch"], c["na"], c["hkv"], c["dim_v"], device="cuda",
                                          dtype=c["dtype"]))
    args = dict(kernel_size=tuple(c["kernel"]), stride=tuple(c["stride"]), dilation=tuple(c["dilation"]),
                is_causal=tuple(c["causal"]), return_lse=True)
    ins = [q, k, v] + list(extra.values())
    gpu_in = [x.detach().requires_grad_() for x in ins]
    cpu_in = [x.detach().double().cpu().requires_grad_() for x in ins]

    def call(t, backend):
        kw = dict(args)
        if c["na"]:
            kw.update(additional_keys=t[3], additional_values=t[4])
        return fn(t[0], t[1], t[2], backend=backend, **kw)

    out, lse = call(gpu_in, "cuda")
    ref_out, ref_lse = call(cpu_in, "reference")
    tol = TOL[c["dtype"]]
    assert _rel(out, ref_out) < tol, f"seed {seed} {c}: out"
    assert _rel(lse, ref_lse) < tol, f"seed {seed} {c}: lse"

    dout = torch.randn_like(ref_out)
    dlse = torch.randn_like(ref_lse)
    g_gpu = torch.autograd.grad((out.double() * dout.cuda()).sum() + (lse.double() * dlse.cuda()).sum(),
                                gpu_in)
    g_ref = torch.autograd.grad((ref_out * dout).sum() + (ref_lse * dlse).sum(), cpu_in)
    names = ["dq", "dk", "dv", "d_additional_k", "d_additional_v"]
    for name, a, b in zip(names, g_gpu, g_ref):
        assert _rel(a, b) < 2 * tol, f"seed {seed} {c}: {name}"
