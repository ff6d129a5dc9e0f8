"""The sm90 (Hopper) family's forward against the float64 CPU reference, forced through
nattn.kernel_choice(family="sm90") and asserted through nattn.explain: random configurations
(ranks 1-3, kernel/stride/dilation/causal per axis, grouped heads, head dims 8-256 in multiples
of 8 with Dv != D, additional keys/values, fp16 and bf16, packed-qkv views and [B, H, X.., D]
tensors viewed heads-last, all read in place, work items over more and fewer CTAs than SMs),
plus the TMA edge cases: extents that are not multiples of the box, dilation up to 8 (TMA element
strides) and above (planned on sm80 with the reason), head dims below the padded one (zero-filled
by the TMA, or refused with the reason where no TMA dimension is spare), windows equal to the
grid, non-positive scales. Skipped unless an sm90 device and sm90 rows are present."""
import random

import pytest
import torch

import nattn

TOL = {torch.bfloat16: 2.5e-2, torch.float16: 5e-3}


def _sm90_rows():
    return [c for c in nattn.kernel_configs() if c.family == "sm90" and c.built]


pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0) or not _sm90_rows(),
    reason="needs an sm90 device and a build with sm90 kernels")

FNS = {1: nattn.na1d, 2: nattn.na2d, 3: nattn.na3d}


def _rel(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    assert torch.isfinite(a).all(), "non-finite values (unwritten output?)"
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def _head_dims(rng):
    """(D, Dv): mostly the padded sizes, sometimes any multiple of 8 up to 256, sometimes Dv != D."""
    d = rng.choice([32, 64, 64, 128, 128, 256, 8 * rng.randint(1, 32)])
    dv = d if rng.random() < 0.7 else 8 * rng.randint(1, 32)
    return d, dv


def _config(rng):
    rank = rng.choice([1, 2, 2, 3, 3])
    budget = {1: 400, 2: 40, 3: 12}[rank]
    extent, kernel, stride, dilation, causal = [], [], [], [], []
    for _ in range(rank):
        d = rng.choice([1, 1, 1, 2, 3])
        k = rng.randint(2, max(2, min(11, budget // d)))
        extent.append(rng.randint(k * d, k * d + rng.choice([0, 5, budget])))
        kernel.append(k)
        dilation.append(d)
        stride.append(rng.randint(1, k))
        causal.append(rng.random() < 0.3)
    hkv = rng.choice([1, 2])
    d, dv = _head_dims(rng)
    return dict(rank=rank, extent=extent, kernel=kernel, stride=stride, dilation=dilation, causal=causal,
                batch=rng.choice([1, 2]), hq=hkv * rng.choice([1, 2, 3]), hkv=hkv, dim=d, dim_v=dv,
                additional=rng.choice([0, 0, 1, 7, 130]),
                dtype=rng.choice([torch.bfloat16, torch.float16]), layout=rng.choice(["dense", "dense", "qkv", "bhxd"]))


def _tensors(c, gen):
    grid = [c["batch"], *c["extent"]]
    dt, d, dv = c["dtype"], c["dim"], c["dim_v"]
    if c["layout"] == "qkv" and c["hq"] == c["hkv"] and d == dv:
        qkv = torch.randn(*grid, 3, c["hq"], d, device="cuda", dtype=dt, generator=gen)
        return qkv.unbind(-3)  # views: token stride 3*H*D, heads packed with head dim
    if c["layout"] == "bhxd":
        def make(h, dim):
            x = torch.randn(c["batch"], h, *c["extent"], dim, device="cuda", dtype=dt, generator=gen)
            return x.movedim(1, -2)  # heads-last view of [B, H, X.., D]: TMA folds heads with the batch
        return make(c["hq"], d), make(c["hkv"], d), make(c["hkv"], dv)
    q = torch.randn(*grid, c["hq"], d, device="cuda", dtype=dt, generator=gen)
    k = torch.randn(*grid, c["hkv"], d, device="cuda", dtype=dt, generator=gen)
    v = torch.randn(*grid, c["hkv"], dv, device="cuda", dtype=dt, generator=gen)
    return q, k, v


def _additional(c, gen):
    if not c["additional"]:
        return {}
    shape = (c["batch"], c["additional"], c["hkv"])
    ak = torch.randn(*shape, c["dim"], device="cuda", dtype=c["dtype"], generator=gen)
    av = torch.randn(*shape, c["dim_v"], device="cuda", dtype=c["dtype"], generator=gen)
    return dict(additional_keys=ak, additional_values=av)


def _padded(d):
    return next(p for p in (32, 64, 128, 256) if p >= d)


def _sm90_refusal(q, kw):
    """Why the sm90 forward refuses the call (a phrase of its reason), or None. Written from the
    TMA limits: a box spans at most 256 elements (1-D boxes of 128 queries allow dilation <= 2 on
    the walk), element strides go up to 8, and a head dim below the padded one is zero-filled
    only through a spare TMA dimension (no third axis, or batch 1)."""
    dil = kw.get("dilation", 1)
    dil = dil if isinstance(dil, tuple) else (dil,) * (q.dim() - 3)
    if max(dil) > 8:
        return "dilation <= 8"
    if q.dim() - 3 == 1 and max(dil) > 2:
        return "TMA"
    d, dv = q.shape[-1], kw.get("_dv", q.shape[-1])
    if q.dim() == 6 and q.shape[0] > 1 and q.shape[3] > 1 and d != _padded(max(d, dv)):
        return "spare TMA dimension"
    return None


def _check(q, k, v, kw, dtype, what, copies=None):
    fn = FNS[q.dim() - 3]
    why = _sm90_refusal(q, dict(kw, _dv=v.shape[-1]))
    if why is not None:
        plan = nattn.explain(q, k, v, **kw)
        assert plan.family == "sm80" and any(f.family == "sm90" and why in f.reason for f in plan.families), str(plan)
        with pytest.raises(NotImplementedError, match=why), nattn.kernel_choice(family="sm90"):
            fn(q, k, v, **kw)
        return
    plan = nattn.explain(q, k, v, **kw, family="sm90")
    assert plan.family == "sm90", f"{what}: {plan}"
    if copies is not None:
        assert list(plan.copies) == copies, f"{what}: {plan}"
    with nattn.kernel_choice(family="sm90"):
        out, lse = fn(q, k, v, return_lse=True, **kw)
    ref_kw = {n: (x.detach().double().cpu() if torch.is_tensor(x) else x) for n, x in kw.items()}
    ref_out, ref_lse = fn(*(x.detach().double().cpu() for x in (q, k, v)), return_lse=True, backend="reference",
                          **ref_kw)
    assert _rel(out, ref_out) < TOL[dtype], f"{what}: out"
    assert _rel(lse, ref_lse) < TOL[dtype], f"{what}: lse"


@pytest.mark.parametrize("seed", range(200))
def test_sm90_random_forward(seed):
    rng = random.Random(seed * 104729 + 3)
    c = _config(rng)
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v = _tensors(c, gen)
    kw = dict(kernel_size=tuple(c["kernel"]), stride=tuple(c["stride"]), dilation=tuple(c["dilation"]),
              is_causal=tuple(c["causal"]), **_additional(c, gen))
    _check(q, k, v, kw, c["dtype"], f"seed {seed} {c}", copies=[])


@pytest.mark.parametrize("dims", [(32, 32), (256, 256), (40, 40), (96, 64), (64, 200), (8, 8), (248, 136)])
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_sm90_head_dims(dims, rank):
    """Every padded head dim and dims below it (zero-filled columns), D != Dv, with additional
    keys; rank 3 with batch 1 (apart map) and batch 2 (refused below the padded dim)."""
    d, dv = dims
    extent = {1: (150,), 2: (19, 23), 3: (6, 7, 9)}[rank]
    kernel = {1: (13,), 2: (5, 7), 3: (3, 3, 5)}[rank]
    for batch in (1, 2):
        gen = torch.Generator(device="cuda").manual_seed(d * 7 + dv + rank + batch)
        q = torch.randn(batch, *extent, 4, d, device="cuda", dtype=torch.bfloat16, generator=gen)
        k = torch.randn(batch, *extent, 2, d, device="cuda", dtype=torch.bfloat16, generator=gen)
        v = torch.randn(batch, *extent, 2, dv, device="cuda", dtype=torch.bfloat16, generator=gen)
        ak = torch.randn(batch, 33, 2, d, device="cuda", dtype=torch.bfloat16, generator=gen)
        av = torch.randn(batch, 33, 2, dv, device="cuda", dtype=torch.bfloat16, generator=gen)
        kw = dict(kernel_size=kernel, additional_keys=ak, additional_values=av)
        _check(q, k, v, kw, torch.bfloat16, f"D {d} Dv {dv} rank {rank} batch {batch}")


def test_sm90_padding_reads_no_neighbouring_head():
    """Head dim 40 padded to 64: the columns past 40 must not pick up the next head's values.
    A huge next head makes any leak visible in the output."""
    gen = torch.Generator(device="cuda").manual_seed(11)
    q, k, v = (torch.randn(1, 20, 24, 3, 40, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(3))
    k[..., 1:, :] *= 1000.0
    _check(q, k, v, dict(kernel_size=(5, 5)), torch.bfloat16, "padding leak")


def test_sm90_persistent_and_one_cta_per_item_agree():
    """More work items than SMs (persistent CTAs loop over items) and fewer: same results as
    the reference either way; the plan's grid is capped at the SM count."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    gen = torch.Generator(device="cuda").manual_seed(5)
    for heads in (1, 24):
        q, k, v = (torch.randn(2, 64, 48, heads, 64, device="cuda", dtype=torch.float16, generator=gen)
                   for _ in range(3))
        plan = nattn.explain(q, k, v, kernel_size=(9, 13), family="sm90")
        (kern,) = [kk for kk in plan.kernels if kk["role"] == "forward"]
        assert kern["grid"][0] <= max(sms, 1), str(plan)
        _check(q, k, v, dict(kernel_size=(9, 13)), torch.float16, f"heads {heads}")


@pytest.mark.parametrize("case", [
    # (extent, kernel, stride, dilation, causal): boxes past the grid's end, large dilation
    ((37,), (5,), (1,), (7,), (False,)),
    ((61,), (7,), (3,), (8,), (True,)),
    ((200, 9), (5, 3), (1, 1), (12, 1), (False, False)),  # dilation above 8: sm80, with the reason
    ((13, 29), (3, 7), (1, 2), (4, 3), (False, True)),
    ((9, 10, 11), (3, 3, 3), (1, 1, 1), (3, 2, 3), (False, False, False)),
    ((16, 16), (16, 16), (1, 1), (1, 1), (False, False)),  # window = grid (dense)
    ((300,), (300,), (1,), (1,), (True,)),  # causal dense 1-D
    ((5, 7, 130), (5, 7, 17), (5, 7, 17), (1, 1, 1), (False, False, False)),  # blocked, uneven
])
@pytest.mark.parametrize("dim", [64, 128])
def test_sm90_edge_cases(case, dim):
    extent, kernel, stride, dilation, causal = case
    gen = torch.Generator(device="cuda").manual_seed(dim + len(extent))
    q, k, v = (torch.randn(2, *extent, 2, dim, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(3))
    kw = dict(kernel_size=kernel, stride=stride, dilation=dilation, is_causal=causal)
    _check(q, k, v, kw, torch.bfloat16, f"{case} d{dim}")


@pytest.mark.parametrize("scale", [-0.3, 0.0, 2.0])
def test_sm90_scales(scale):
    gen = torch.Generator(device="cuda").manual_seed(7)
    q, k, v = (torch.randn(1, 24, 20, 2, 64, device="cuda", dtype=torch.float16, generator=gen) for _ in range(3))
    _check(q, k, v, dict(kernel_size=(5, 7), scale=scale), torch.float16, f"scale {scale}")


def test_sm90_is_the_default_forward_on_hopper():
    q, k, v = (torch.randn(1, 32, 32, 4, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    plan = nattn.explain(q, k, v, kernel_size=7)
    assert plan.family == "sm90", str(plan)
    # (the backward's kernels: test_cuda_sm90_backward.py)
    assert nattn.explain(q, k, v, kernel_size=7, backward=True).family == "sm90"
