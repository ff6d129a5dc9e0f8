"""The sm90 (Hopper) family's forward against the float64 CPU reference, forced through
nattn.kernel_choice(family="sm90") and asserted through nattn.explain: random configurations
(ranks 1-3, kernel/stride/dilation/causal per axis, grouped heads, head dims 64 and 128, fp16
and bf16, packed-qkv views and [B, H, X.., D] tensors viewed heads-last, all read in place), plus the TMA edge cases:
extents that are not multiples of the box, dilation up to 8 (TMA element strides), windows equal
to the grid, non-positive scales. Skipped unless an sm90 device and sm90 rows are present."""
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
    return dict(rank=rank, extent=extent, kernel=kernel, stride=stride, dilation=dilation, causal=causal,
                batch=rng.choice([1, 2]), hq=hkv * rng.choice([1, 2, 3]), hkv=hkv, dim=rng.choice([64, 128]),
                dtype=rng.choice([torch.bfloat16, torch.float16]), layout=rng.choice(["dense", "dense", "qkv", "bhxd"]))


def _tensors(c, gen):
    grid = [c["batch"], *c["extent"]]
    dt, d = c["dtype"], c["dim"]
    if c["layout"] == "qkv" and c["hq"] == c["hkv"]:
        qkv = torch.randn(*grid, 3, c["hq"], d, device="cuda", dtype=dt, generator=gen)
        return qkv.unbind(-3)  # views: token stride 3*H*D, heads packed with head dim
    if c["layout"] == "bhxd":
        def make(h):
            x = torch.randn(c["batch"], h, *c["extent"], d, device="cuda", dtype=dt, generator=gen)
            return x.movedim(1, -2)  # heads-last view of [B, H, X.., D]: TMA folds heads with the batch
        return make(c["hq"]), make(c["hkv"]), make(c["hkv"])
    q = torch.randn(*grid, c["hq"], d, device="cuda", dtype=dt, generator=gen)
    k = torch.randn(*grid, c["hkv"], d, device="cuda", dtype=dt, generator=gen)
    v = torch.randn(*grid, c["hkv"], d, device="cuda", dtype=dt, generator=gen)
    return q, k, v


def _fits_tma(q, kw):
    """A TMA box spans at most 256 elements: 1-D boxes of 128 queries allow dilation <= 2."""
    dil = kw.get("dilation", 1)
    dil = dil if isinstance(dil, tuple) else (dil,)
    return q.dim() - 3 > 1 or max(dil) <= 2


def _check(q, k, v, kw, dtype, what, copies=None):
    fn = FNS[q.dim() - 3]
    if not _fits_tma(q, kw):
        plan = nattn.explain(q, k, v, **kw)
        assert plan.family == "sm80" and any(f.family == "sm90" and "TMA" in f.reason for f in plan.families), str(plan)
        with pytest.raises(NotImplementedError, match="TMA"), nattn.kernel_choice(family="sm90"):
            fn(q, k, v, **kw)
        return
    plan = nattn.explain(q, k, v, **kw, family="sm90")
    assert plan.family == "sm90", f"{what}: {plan}"
    if copies is not None:
        assert list(plan.copies) == copies, f"{what}: {plan}"
    with nattn.kernel_choice(family="sm90"):
        out, lse = fn(q, k, v, return_lse=True, **kw)
    ref_out, ref_lse = fn(*(x.detach().double().cpu() for x in (q, k, v)), return_lse=True, backend="reference", **kw)
    assert _rel(out, ref_out) < TOL[dtype], f"{what}: out"
    assert _rel(lse, ref_lse) < TOL[dtype], f"{what}: lse"


@pytest.mark.parametrize("seed", range(120))
def test_sm90_random_forward(seed):
    rng = random.Random(seed * 104729 + 3)
    c = _config(rng)
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v = _tensors(c, gen)
    kw = dict(kernel_size=tuple(c["kernel"]), stride=tuple(c["stride"]), dilation=tuple(c["dilation"]),
              is_causal=tuple(c["causal"]))
    _check(q, k, v, kw, c["dtype"], f"seed {seed} {c}", copies=[])


@pytest.mark.parametrize("case", [
    # (extent, kernel, stride, dilation, causal): boxes past the grid's end, large dilation
    ((37,), (5,), (1,), (7,), (False,)),
    ((61,), (7,), (3,), (8,), (True,)),
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
    # The backward has no sm90 kernels yet: the plan says why and runs sm80.
    bplan = nattn.explain(q, k, v, kernel_size=7, backward=True)
    assert bplan.family == "sm80", str(bplan)
    assert any(f.family == "sm90" and "backward" in f.reason for f in bplan.families), str(bplan)
