"""The sm90 (Hopper) backward (issue 10) against the float64 CPU reference, in both modes:
  fast (the default where the call does not ask for determinism, except where the deterministic
    pair runs persistent CTAs or two CTAs per SM; or a forced backward_dkdv_dq row): one kernel
    computes dK, dV and adds dQ partial sums into a float32 workspace (TMA reduce-adds), then a
    pass converts them to dQ (backward_dkdv_dq, dq_convert);
  deterministic (under torch.use_deterministic_algorithms), two ways: by default the pair of an
    sm90 dQ kernel and an sm90 dK/dV kernel, each gradient row written once ("pair": backward_dq,
    backward_dkdv); with a forced fast row (or NATTN_SM90_DETERMINISTIC=ordered) the fast kernel
    with its dQ adds in a fixed order per query box ("ordered": backward_dkdv_dq_ordered,
    dq_convert; measured slower than the pair on 2026-12-06).
Forced through nattn.kernel_choice(family="sm90") and asserted through nattn.explain(...,
backward=True): 200 random configurations per mode (fast, pair, ordered) (ranks 1-3, kernel/stride/dilation/causal per
axis, grouped heads, head dims 8-256 in multiples of 8 with Dv != D, fp16 and bf16, packed-qkv
views and [B, H, X.., D] tensors viewed heads-last), run-to-run bitwise reproducibility of both
deterministic kernels, and the default plan on Hopper.

First run on an H100 on 2026-11-28 (the deterministic mode: 202 passed). NATTN_SM90_BACKWARD=0
(a developer switch for A/B timing) hands the backward to sm80; these tests skip then."""
import contextlib
import os
import random

import pytest
import torch
from test_cuda_sm90 import FNS, _additional, _config, _rel, _sm90_rows, _tensors

import nattn

GRAD_TOL = {torch.bfloat16: 4e-2, torch.float16: 1e-2}

pytestmark = [
    pytest.mark.skipif(
        not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0) or not _sm90_rows(),
        reason="needs an sm90 device and a build with sm90 kernels"),
    pytest.mark.skipif(os.environ.get("NATTN_SM90_BACKWARD") == "0",
                       reason="NATTN_SM90_BACKWARD=0 switches the sm90 backward off"),
]


def _backward_config(rng, mode):
    """A random configuration the sm90 backward takes (TMA boxes of 128 keys and 64 queries
    within 256 elements per axis: 1-D dilation <= 2; head dims up to 256 (above 128: the dQ
    kernel walks 32-key boxes and the dK/dV kernel 32-query boxes, its output columns split over
    two CTAs per key box; the fast mode has rows up to 128 only); a 3-D grid with batch > 1 needs
    D = Dv = the padded head dim). Additional keys (0, 1, 7 or 130 of them) as
    _config draws them: the dQ kernel walks them after the neighborhood boxes and the dK/dV
    kernel runs once more over them (role backward_dkdv_additional / backward_dkdv_dq_additional)."""
    c = _config(rng)
    top = 256 if mode == "pair" else 128
    c["dim"], c["dim_v"] = min(c["dim"], top), min(c["dim_v"], top)
    if c["rank"] == 1:
        c["dilation"] = [min(c["dilation"][0], 2)]
        c["extent"] = [max(c["extent"][0], c["kernel"][0] * c["dilation"][0])]
    if c["rank"] == 3 and c["batch"] > 1:
        padded = next(p for p in (32, 64, 128, 256) if p >= max(c["dim"], c["dim_v"]))
        c["dim"] = c["dim_v"] = padded
    return c


def _run(fn, q, k, v, kw, dout, extra=None):
    """out and the gradients of q, k, v (and of the additional keys and values in `extra`)."""
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    extra = {name: x.detach().requires_grad_() for name, x in (extra or {}).items()}
    out = fn(q, k, v, **kw, **extra)
    out.backward(dout)
    return (out, q.grad, k.grad, v.grad, *(extra[name].grad for name in sorted(extra)))


MODES = {"fast": ("backward_dkdv_dq", "dq_convert"), "pair": ("backward_dq", "backward_dkdv"),
         "ordered": ("backward_dkdv_dq_ordered", "dq_convert")}
DETERMINISTIC = ("pair", "ordered")


def _row(role, dtype, dim):
    """The sm90 row of a backward role for a dtype and max(D, Dv) (the smallest head dim that
    covers it; one CTA per SM)."""
    name = str(dtype).replace("torch.", "")
    rows = sorted((r.head_dim, r.id) for r in _sm90_rows()
                  if r.role == role and r.dtype == name and r.head_dim >= dim and r.ctas_per_sm == 1)
    assert rows, f"no sm90 {role} row for {name}, head dim {dim}"
    return rows[0][1]


def _fast_row(dtype, dim):
    return _row("backward_dkdv_dq", dtype, dim)


def _choice(mode, c):
    """sm90 and a row of the mode's kernels (the default picks by the walk: family.cu's
    backward_roles): the fast row (fast; ordered under determinism) or the dQ row (pair)."""
    dim = max(c["dim"], c["dim_v"])
    return dict(family="sm90", config=_row("backward_dq", c["dtype"], dim) if mode == "pair"
                else _fast_row(c["dtype"], dim))


@contextlib.contextmanager
def _mode(mode):
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(mode in DETERMINISTIC)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was)


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("seed", range(200))
def test_sm90_random_backward(seed, mode):
    rng = random.Random(seed * 7919 + 11)
    c = _backward_config(rng, mode)
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v = _tensors(c, gen)
    extra = _additional(c, gen)
    kw = dict(kernel_size=tuple(c["kernel"]), stride=tuple(c["stride"]), dilation=tuple(c["dilation"]),
              is_causal=tuple(c["causal"]))
    what = f"seed {seed}, {mode}: {c}"
    with _mode(mode):
        plan = nattn.explain(q, k, v, backward=True, **_choice(mode, c), **kw, **extra)
    assert plan.family == "sm90", f"{what}: {plan}"
    sm90_ids = [r.id for r in _sm90_rows()]
    row_role, other = MODES[mode]
    dkdv_role = MODES[mode][0] if mode != "pair" else "backward_dkdv"
    kernels = plan.kernels_of(row_role)
    assert len(kernels) == 1 and kernels[0]["config_id"] in sm90_ids, f"{what}: {plan}"
    assert len(plan.kernels_of(other)) == 1, f"{what}: {plan}"
    # The additional keys' dK/dV pass: the same row, exactly when there are additional keys.
    passes = plan.kernels_of(dkdv_role + "_additional")
    assert len(passes) == (1 if extra else 0), f"{what}: {plan}"
    assert all(kk["config_id"] == plan.kernels_of(dkdv_role)[0]["config_id"] for kk in passes), f"{what}: {plan}"
    unexpected = {kk["role"] for kk in plan.kernels} - {"delta", *MODES[mode], dkdv_role + "_additional"}
    assert not unexpected, f"{what}: {plan}"
    fn = FNS[c["rank"]]
    dout = torch.randn(*q.shape[:-1], v.shape[-1], device="cuda", dtype=q.dtype, generator=gen)
    with nattn.kernel_choice(**_choice(mode, c)), _mode(mode):
        got = _run(fn, q, k, v, kw, dout, extra)
    ref = _run(lambda *a, **k2: fn(*a, backend="reference", **k2),
               *(x.detach().double().cpu() for x in (q, k, v)), kw, dout.double().cpu(),
               {name: x.detach().double().cpu() for name, x in extra.items()})
    tol = GRAD_TOL[c["dtype"]]
    names = ("out", "dq", "dk", "dv", *(f"d_{name}" for name in sorted(extra)))
    for name, g, want in zip(names, got, ref, strict=True):
        assert _rel(g, want) < tol, f"{what}: {name} relative error {_rel(g, want):.3g}"


@pytest.mark.parametrize("mode", DETERMINISTIC)
def test_sm90_backward_is_bitwise_reproducible(mode):
    """Both deterministic kernels give bitwise the same outputs and gradients run to run (GQA:
    the ordered adds of two query heads per kv head), with additional keys too (the dQ kernel's
    extra steps and the dK/dV pass over them; ordered: that pass adds dQ in order as well)."""
    gen = torch.Generator(device="cuda").manual_seed(5)
    q = torch.randn(2, 40, 52, 4, 128, device="cuda", dtype=torch.bfloat16, generator=gen)
    k, v = (torch.randn(2, 40, 52, 2, 128, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(2))
    dout = torch.randn_like(q)
    kw = dict(kernel_size=(13, 11), stride=(1, 2), is_causal=(False, True))
    choice = _choice(mode, dict(dtype=torch.bfloat16, dim=128, dim_v=128))
    with nattn.kernel_choice(**choice), _mode(mode):
        assert nattn.explain(q, k, v, backward=True, **kw).kernels_of(MODES[mode][0])
        first = _run(nattn.na2d, q, k, v, kw, dout)
        second = _run(nattn.na2d, q, k, v, kw, dout)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    extra = {name: torch.randn(2, 77, 2, 128, device="cuda", dtype=torch.bfloat16, generator=gen)
             for name in ("additional_keys", "additional_values")}
    dkdv = "backward_dkdv" if mode == "pair" else MODES[mode][0]
    with nattn.kernel_choice(**choice), _mode(mode):
        assert nattn.explain(q, k, v, backward=True, **kw, **extra).kernels_of(dkdv + "_additional")
        first = _run(nattn.na2d, q, k, v, kw, dout, extra)
        second = _run(nattn.na2d, q, k, v, kw, dout, extra)
    assert len(first) == 6
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dims", [(256, 256), (136, 200), (256, 40)])
def test_sm90_backward_above_head_dim_128(dims):
    """Head dims above 128 run the head-dim-256 rows by default: the dQ kernel, the dK/dV kernel
    with its output columns split over two CTAs per key box (128 columns of dK and dV each; D =
    136 leaves the second part 8) and its pass over the additional keys, against the reference."""
    d, dv = dims
    gen = torch.Generator(device="cuda").manual_seed(d * 1000 + dv)

    def make(*shape):
        return torch.randn(*shape, device="cuda", dtype=torch.bfloat16, generator=gen)

    q, k, v = make(1, 20, 18, 2, d), make(1, 20, 18, 2, d), make(1, 20, 18, 2, dv)
    extra = dict(additional_keys=make(1, 9, 2, d), additional_values=make(1, 9, 2, dv))
    kw = dict(kernel_size=(7, 5), stride=(1, 2), dilation=(2, 1), is_causal=(False, True))
    plan = nattn.explain(q, k, v, backward=True, **kw, **extra)
    assert plan.family == "sm90", str(plan)
    rows = {r.id: r for r in _sm90_rows()}
    for role in ("backward_dq", "backward_dkdv", "backward_dkdv_additional"):
        kernels = plan.kernels_of(role)
        assert len(kernels) == 1 and rows[kernels[0]["config_id"]].head_dim == 256, f"{role}: {plan}"
    dout = make(1, 20, 18, 2, dv)
    got = _run(nattn.na2d, q, k, v, kw, dout, extra)
    ref = _run(lambda *a, **k2: nattn.na2d(*a, backend="reference", **k2),
               *(x.double().cpu() for x in (q, k, v)), kw, dout.double().cpu(),
               {name: x.double().cpu() for name, x in extra.items()})
    names = ("out", "dq", "dk", "dv", "d_additional_keys", "d_additional_values")
    for name, g, want in zip(names, got, ref, strict=True):
        assert _rel(g, want) < GRAD_TOL[torch.bfloat16], f"{dims}: {name} relative error {_rel(g, want):.3g}"


def _roles(plan):
    return [kern["role"] for kern in plan.kernels if kern["role"] != "delta"]


FAST_ROLES, PAIR_ROLES = ["backward_dkdv_dq", "dq_convert"], ["backward_dq", "backward_dkdv"]
ORDERED_ROLES = ["backward_dkdv_dq_ordered", "dq_convert"]


def test_sm90_backward_default_modes_on_hopper():
    """sm90 plans the backward by default on Hopper. Without determinism asked for, a long 2-D
    walk (window 31 over 96 x 96: ~30 walked boxes per key box) takes the fast kernel and a short
    one (window 7 over 32 x 32, where the pair runs persistent CTAs) the pair (family.cu
    Sm90Family::backward_roles), unless NATTN_SM90_BACKWARD=fast / 1 / pair decides; a
    deterministic call takes the pair (measured faster than the ordered fast kernel), unless
    NATTN_SM90_DETERMINISTIC=ordered; a forced row of either mode decides."""
    env = os.environ.get("NATTN_SM90_BACKWARD")
    det_env = os.environ.get("NATTN_SM90_DETERMINISTIC")
    long = torch.randn(1, 96, 96, 2, 64, device="cuda", dtype=torch.float16)
    short = torch.randn(1, 32, 32, 2, 64, device="cuda", dtype=torch.float16)
    for q, kernel, rule in ((long, 31, FAST_ROLES), (short, 7, PAIR_ROLES)):
        want = FAST_ROLES if env == "fast" else PAIR_ROLES if env in ("1", "pair") else rule
        plan = nattn.explain(q, q, q, kernel_size=kernel, backward=True)
        assert plan.family == "sm90", str(plan)
        assert _roles(plan) == want, str(plan)
        if want == FAST_ROLES:  # the float32 dQ workspace is part of the call's
            assert plan.workspace_bytes >= q.numel() * 4, str(plan)
        det_want = ORDERED_ROLES if det_env == "ordered" else PAIR_ROLES
        with _mode("pair"):
            det = nattn.explain(q, q, q, kernel_size=kernel, backward=True)
            assert _roles(det) == det_want, str(det)
            if det_want == ORDERED_ROLES:  # the workspace and one counter per aligned box of 64 queries
                counters = q.shape[0] * q.shape[-2] * q.shape[1] * q.shape[2] // 64
                assert det.workspace_bytes >= q.numel() * 4 + counters * 4
        fast = nattn.explain(q, q, q, kernel_size=kernel, backward=True, config=_fast_row(torch.float16, 64))
        assert _roles(fast) == FAST_ROLES, str(fast)
        dq_row = next(r.id for r in _sm90_rows()
                      if r.role == "backward_dq" and r.dtype == "float16" and r.head_dim == 64)
        pair = nattn.explain(q, q, q, kernel_size=kernel, backward=True, config=dq_row)
        assert _roles(pair) == PAIR_ROLES, str(pair)


def test_sm90_fast_row_is_ordered_when_deterministic():
    """A forced fast-mode row under torch.use_deterministic_algorithms plans its ordered variant
    (the dQ adds in a fixed order: deterministic); the default is the pair."""
    q = torch.randn(1, 16, 16, 2, 64, device="cuda", dtype=torch.float16)
    fast = _fast_row(torch.float16, 64)
    with _mode("ordered"):
        if os.environ.get("NATTN_SM90_DETERMINISTIC") != "ordered":
            assert _roles(nattn.explain(q, q, q, kernel_size=5, backward=True)) == PAIR_ROLES
        plan = nattn.explain(q, q, q, kernel_size=5, backward=True, config=fast)
        assert _roles(plan) == ORDERED_ROLES, str(plan)
        assert plan.kernels_of("backward_dkdv_dq_ordered")[0]["config_id"] == fast
