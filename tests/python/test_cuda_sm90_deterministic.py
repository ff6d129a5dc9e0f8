"""deterministic=True on Hopper with torch.use_deterministic_algorithms off: the sm90 backward
plans what torch's flag plans, the call runs that plan, its gradients match the float64 CPU
reference and two runs give bitwise identical results, on every call path (test_deterministic.py
has the paths and the CPU checks of the argument itself).

Which kernels a deterministic backward runs is the sm90 family's business (the dQ + dK/dV pair
today; it may change), so nothing here names kernel roles: a per-call plan is compared with the
plan made under torch's flag, kernel by kernel, and the plan a run took is read from the
library's plan cache (its key holds the determinism: after a run, explain(..., deterministic=True)
is cached and the default plan is not). Skipped like test_cuda_sm90_backward.py."""
import contextlib

import pytest
import torch
from test_cuda_sm90 import _rel, _sm90_rows
from test_cuda_sm90_backward import GRAD_TOL, _run
from test_cuda_sm90_backward import pytestmark as _sm90_backward_marks
from test_deterministic import PATHS, _route

import nattn
from nattn import _fast

pytestmark = _sm90_backward_marks


@contextlib.contextmanager
def _torch_flag():
    """torch.use_deterministic_algorithms(True) inside the block."""
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was)


def _gen(seed):
    return torch.Generator(device="cuda").manual_seed(seed)


def _make(gen, dtype, *shape):
    return torch.randn(*shape, device="cuda", dtype=dtype, generator=gen)


def _problems():
    """name -> (tensors and explain/call arguments, the functional call). Long and short walks
    (the default backward differs between them), 1-D, 3-D with additional keys and grouped
    heads, dense attention."""
    gen = _gen(17)
    f16, b16 = torch.float16, torch.bfloat16
    long = _make(gen, f16, 1, 96, 96, 2, 64)
    short = _make(gen, f16, 1, 32, 32, 2, 64)
    q1, k1, v1 = (_make(gen, b16, 1, 1024, 2, 128) for _ in range(3))
    q3, k3, v3 = _make(gen, b16, 1, 10, 12, 14, 4, 64), _make(gen, b16, 1, 10, 12, 14, 2, 64), \
        _make(gen, b16, 1, 10, 12, 14, 2, 64)
    extra = dict(additional_keys=_make(gen, b16, 1, 9, 2, 64),
                 additional_values=_make(gen, b16, 1, 9, 2, 64))
    qd, kd, vd = (_make(gen, b16, 2, 700, 2, 128) for _ in range(3))
    return {
        "2d-long": ((long, long, long), dict(kernel_size=31)),
        "2d-short": ((short, short, short), dict(kernel_size=7)),
        "1d": ((q1, k1, v1), dict(kernel_size=129, stride=4, is_causal=True)),
        "3d-additional": ((q3, k3, v3), dict(kernel_size=(3, 5, 7), dilation=(2, 1, 1), **extra)),
        "dense": ((qd, kd, vd), dict(dense=True, is_causal=True)),
    }


def _plan_of(tensors, kw, **more):
    plan = nattn.explain(*tensors, backward=True, **kw, **more)
    return (plan.family, plan.copies, plan.kernels, plan.workspace_bytes)


@pytest.fixture
def flag_off():
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)
    yield
    torch.use_deterministic_algorithms(was)


PROBLEMS = ["1d", "2d-long", "2d-short", "3d-additional", "dense"]  # _problems()' names


@pytest.mark.parametrize("name", PROBLEMS)
def test_per_call_flag_plans_what_torchs_flag_plans(name, flag_off):
    tensors, kw = _problems()[name]
    per_call = _plan_of(tensors, kw, deterministic=True)
    assert per_call[0] == "sm90", f"{name}: {nattn.explain(*tensors, backward=True, **kw)}"
    with _torch_flag():
        under_flag = _plan_of(tensors, kw)
        # False adds no requirement: it never overrides torch's flag.
        false_under_flag = _plan_of(tensors, kw, deterministic=False)
    assert per_call == under_flag, f"{name}: per call {per_call}, under torch's flag {under_flag}"
    assert false_under_flag == under_flag, name
    assert _plan_of(tensors, kw, deterministic=False) == _plan_of(tensors, kw), name


def test_the_flag_changes_the_default_plan_somewhere(flag_off):
    """Without this the comparisons above could not tell the flag from its absence: on a long
    walk the default backward is not the deterministic one."""
    problems = _problems()
    assert sorted(problems) == PROBLEMS
    differ = [name for name, (tensors, kw) in problems.items()
              if _plan_of(tensors, kw) != _plan_of(tensors, kw, deterministic=True)]
    assert differ, "the deterministic plan equals the default plan on every problem"


def _outcome(fn):
    try:
        plan = fn()
    except (ValueError, NotImplementedError) as e:
        return type(e), str(e)
    return plan.family, plan.kernels, plan.workspace_bytes


def test_forced_rows_meet_the_per_call_flag_as_torchs(flag_off):
    """A forced row of each sm90 backward role (the fast kernel's is refused for a deterministic
    backward today) gets the same answer with deterministic=True as under torch's flag."""
    q = _make(_gen(3), torch.float16, 1, 16, 16, 2, 64)
    rows = [r.id for r in _sm90_rows() if r.role.startswith("backward") and r.dtype == "float16"
            and r.head_dim == 64]
    assert rows
    for row in rows:
        def explain(row=row, **more):
            return nattn.explain(q, q, q, kernel_size=5, backward=True, config=row, **more)
        per_call = _outcome(lambda: explain(deterministic=True))
        with _torch_flag():
            under_flag = _outcome(explain)
        assert per_call == under_flag, f"row {row}: {per_call} against {under_flag}"


@pytest.mark.parametrize("path", PATHS)
def test_per_call_flag_runs_a_reproducible_backward(path, monkeypatch, flag_off):
    """Two runs with deterministic=True give bitwise identical out, dq, dk, dv and additional-key
    gradients, within tolerance of the float64 reference, through each call path; the plan
    cache shows the backward planned the deterministic key and not the default one."""
    _route(path, monkeypatch)
    gen = _gen(5 + PATHS.index(path))
    # An extent per path: each test starts from plans no other call has made.
    x1 = 37 + 2 * PATHS.index(path)
    q, k, v = (_make(gen, torch.bfloat16, 2, x1, 52, 4, 128) for _ in range(3))
    dout = _make(gen, torch.bfloat16, 2, x1, 52, 4, 128)
    extra = {name: _make(gen, torch.bfloat16, 2, 77, 4, 128)
             for name in ("additional_keys", "additional_values")}
    kw = dict(kernel_size=(13, 11), stride=(1, 2), is_causal=(False, True))
    before = dict(_fast.calls())
    first = _run(nattn.na2d, q, k, v, dict(kw, deterministic=True), dout, extra)
    second = _run(nattn.na2d, q, k, v, dict(kw, deterministic=True), dout, extra)
    counted = "op_backward" if path == "custom_op" else "fast_backward"
    assert _fast.calls().get(counted, 0) - before.get(counted, 0) == 2, path
    assert nattn.explain(q, k, v, backward=True, **kw, **extra, deterministic=True).cached, path
    assert not nattn.explain(q, k, v, backward=True, **kw, **extra).cached, path
    names = ("out", "dq", "dk", "dv", "d_additional_keys", "d_additional_values")
    for name, a, b in zip(names, first, second, strict=True):
        assert torch.equal(a, b), f"{path}: {name} differs between two runs"
    ref = _run(lambda *a, **k2: nattn.na2d(*a, backend="reference", **k2),
               *(x.double().cpu() for x in (q, k, v)), kw, dout.double().cpu(),
               {name: x.double().cpu() for name, x in extra.items()})
    for name, g, want in zip(names, first, ref, strict=True):
        assert _rel(g, want) < GRAD_TOL[torch.bfloat16], f"{path}: {name} {_rel(g, want):.3g}"


def test_module_with_the_flag_is_reproducible(flag_off):
    torch.manual_seed(11)
    m = nattn.NeighborhoodAttention2D(256, 2, 13, deterministic=True).cuda().bfloat16()
    x = torch.randn(2, 40, 44, 256, device="cuda", dtype=torch.bfloat16)
    dy = torch.randn_like(x)
    q = torch.empty(2, 40, 44, 2, 128, device="cuda", dtype=torch.bfloat16)
    assert nattn.explain(q, q, q, 13, backward=True, deterministic=True).family == "sm90"

    def grads():
        xi = x.clone().requires_grad_()
        m.zero_grad()
        m(xi).backward(dy)
        return [xi.grad] + [p.grad.clone() for p in m.parameters()]

    for a, b in zip(grads(), grads(), strict=True):
        assert torch.equal(a, b)
