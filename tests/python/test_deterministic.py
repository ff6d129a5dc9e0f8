"""The per-call `deterministic` argument of every public entry point that runs a backward.

deterministic=True asks for a bitwise reproducible backward for one call (Options::deterministic
= 1) without torch.use_deterministic_algorithms; None and False add no requirement, so the
library gets `deterministic or torch.are_deterministic_algorithms_enabled()`, torch's flag read
when the backward runs. The CPU reference is deterministic whatever it is told, so here the value
is read where each call path hands it to the library: the C ABI's nattn_options (ctypes fast
path, custom ops, compiled graphs), the C++ dispatcher ops' `options` list (the Python
autograd.Function and the C++ autograd node, whose backward is seen by a TorchDispatchMode).
test_cuda_sm90_deterministic.py checks the kernels it selects on Hopper."""
import contextlib
import re

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import nattn
import nattn.distributed as nd
from nattn import _fast, _lib, _native, _native_autograd


def rand(*shape, requires_grad=True):
    return torch.randn(*shape, dtype=torch.float64, requires_grad=requires_grad)


def qkv(spatial, requires_grad=True):
    return [rand(2, *spatial, 2, 8, requires_grad=requires_grad) for _ in range(3)]


BAD = [1, 0, "yes", 1.0, torch.tensor(True)]


def _entries():
    """One call per public entry point that takes `deterministic`, as fn(deterministic)."""
    q1, k1, v1 = qkv((9,))
    q2, k2, v2 = qkv((6, 7))
    q3, k3, v3 = qkv((4, 5, 3))
    return {
        "na1d": lambda d: nattn.na1d(q1, k1, v1, 3, deterministic=d),
        "na2d": lambda d: nattn.na2d(q2, k2, v2, (3, 5), deterministic=d),
        "na3d": lambda d: nattn.na3d(q3, k3, v3, 3, deterministic=d),
        "attention": lambda d: nattn.attention(q1, k1, v1, is_causal=True, deterministic=d),
        "na_placed": lambda d: nattn.na_placed(q2, k2, v2, 3, (6, 7), deterministic=d),
        "explain": lambda d: nattn.explain(q2, k2, v2, 3, backward=True, deterministic=d),
        "module": lambda d: nattn.NeighborhoodAttention2D(16, 2, 3, deterministic=d),
        "distributed": lambda d: nd.na2d(q2, k2, v2, 3, deterministic=d),
    }


ENTRIES = sorted(_entries())


@pytest.mark.parametrize("fast", [True, False], ids=["fast_path", "custom_ops"])
@pytest.mark.parametrize("bad", BAD, ids=[repr(b) for b in BAD])
@pytest.mark.parametrize("entry", ENTRIES)
def test_invalid_values_are_refused_before_anything_runs(entry, bad, fast, monkeypatch):
    monkeypatch.setattr(_fast, "ENABLED", fast)
    fn = _entries()[entry]
    before = dict(_fast.calls())
    want = (f"deterministic = {bad!r} is invalid: must be None, True or False, not "
            f"{type(bad).__name__}")
    with pytest.raises(TypeError, match=re.escape(want)) as info:
        fn(bad)
    assert "torch.are_deterministic_algorithms_enabled()" in str(info.value)  # the rule
    assert dict(_fast.calls()) == before  # no op ran, so nothing was written


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e not in ("module", "distributed")])
@pytest.mark.parametrize("value", [None, True, False])
def test_valid_values_give_the_same_results(entry, value):
    # The reference backend is deterministic either way: the argument changes no result.
    fn = _entries()[entry]
    got, want = fn(value), fn(None)
    if entry == "explain":
        assert got.family == want.family == "reference"
        assert [k["role"] for k in got.kernels] == [k["role"] for k in want.kernels]
    else:
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.fixture
def global_flag():
    """Sets torch.use_deterministic_algorithms, restored after the test."""
    was = torch.are_deterministic_algorithms_enabled()
    yield lambda on: torch.use_deterministic_algorithms(on)
    torch.use_deterministic_algorithms(was)


class _NativeBackwards(TorchDispatchMode):
    """The `options` of every nattn_native::na_backward call made inside the mode (the C++
    autograd node calls the native op through the dispatcher, so the mode sees it)."""

    def __init__(self, seen):
        super().__init__()
        self.seen = seen

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.nattn_native.na_backward.default:
            self.seen.append(bool(args[-2][1]))
        return func(*args, **(kwargs or {}))


PATHS = ["ctypes", "custom_op", "native_python", "native_cpp"]


def _route(path, monkeypatch):
    """Plain eager calls take `path`: the fast path's ctypes call, the custom ops (fast path
    off), the C++ dispatcher ops with the Python autograd.Function, or with the C++ node."""
    if path in ("native_python", "native_cpp") and not _native.LOADED:
        pytest.skip(f"C++ ops not loaded: {_native.REASON}")
    if path == "native_cpp" and not _native_autograd.LOADED:
        pytest.skip(f"C++ autograd not loaded: {_native_autograd.REASON}")
    monkeypatch.setattr(_fast, "ENABLED", path != "custom_op")
    if path == "ctypes":
        monkeypatch.setattr(_native, "LOADED", False)  # _native_autograd.takes() reads it too
    if path == "native_python":
        monkeypatch.setattr(_native_autograd, "LOADED", False)


def _spy_c_abi(monkeypatch):
    """The determinism nattn_options carries into each backward call of the C ABI (ctypes:
    the fast path's entries and the custom ops), as bools."""
    seen = []
    monkeypatch.setattr(_fast, "_BACKWARD", {})  # entries made from now on take the spies
    for name in ("nattn_backward", "nattn_attention_backward"):
        real = getattr(_lib.LIB, name)

        def spy(p, arr, options, *rest, real=real):
            seen.append(bool(getattr(options, "_obj", options).deterministic))
            return real(p, arr, options, *rest)
        monkeypatch.setattr(_lib.LIB, name, spy)
    return seen


def _spy_native_python(monkeypatch):
    """The determinism in the `options` of the C++ ops' backward called from Python."""
    seen = []
    real = _native._BACKWARD

    def spy(*args):
        seen.append(bool(args[-2][1]))
        return real(*args)
    monkeypatch.setattr(_native, "_BACKWARD", spy)
    return seen


def _spy_path(path, monkeypatch):
    """Routes plain calls through `path`; returns (seen, context): seen collects the
    determinism the library gets for each backward call run inside context, as a bool."""
    _route(path, monkeypatch)
    if path in ("ctypes", "custom_op"):
        return _spy_c_abi(monkeypatch), contextlib.nullcontext()
    if path == "native_python":
        return _spy_native_python(monkeypatch), contextlib.nullcontext()
    seen = []
    return seen, _NativeBackwards(seen)


# (deterministic=, torch's flag at the forward, torch's flag at the backward)
CASES = [(None, False, False), (True, False, False), (False, False, False), (False, False, True),
         (None, True, False), (True, True, False), (None, False, True), (True, False, True)]


@pytest.mark.parametrize("case", CASES, ids=[f"det={d}-fwd={f}-bwd={b}" for d, f, b in CASES])
@pytest.mark.parametrize("path", PATHS)
def test_backward_gets_the_call_or_torchs_flag(path, case, monkeypatch, global_flag):
    """The backward's determinism is `deterministic or torch's flag when the backward runs`
    on every path: True survives into a backward run with torch's flag off, False never
    overrides torch's flag, and torch's flag at the forward does not matter."""
    det, at_forward, at_backward = case
    seen, backward_context = _spy_path(path, monkeypatch)
    q, k, v = qkv((6, 7))
    ak, av = rand(2, 3, 2, 8), rand(2, 3, 2, 8)
    q2, k2, v2 = qkv((11,))
    global_flag(at_forward)
    out, lse = nattn.na2d(q, k, v, (3, 5), stride=(1, 2), additional_keys=ak,
                          additional_values=av, return_lse=True, deterministic=det)
    dense = nattn.attention(q2, k2, v2, is_causal=True, deterministic=det)
    global_flag(at_backward)
    loss = (out * torch.randn_like(out)).sum() + lse.sum() + dense.square().sum()
    with backward_context:
        loss.backward()
    want = bool(det) or at_backward
    assert seen == [want, want], f"{path}: the library got {seen}"
    assert all(x.grad is not None and torch.isfinite(x.grad).all() for x in (q, k, v, ak, av))


@pytest.mark.parametrize("path", ["ctypes", "native_python", "native_cpp"])
def test_double_backward_route_keeps_the_call_flag(path, monkeypatch, global_flag):
    """A backward run with create_graph=True goes to the custom op na_backward (from the Python
    autograd.Function, or from the C++ node, which unpacks its options list for it): the call's
    deterministic=True reaches the library with torch's flag off."""
    _route(path, monkeypatch)
    seen = _spy_c_abi(monkeypatch)  # where na_backward ends
    global_flag(False)
    q, k, v = qkv((6, 7))
    before = dict(_fast.calls())
    out = nattn.na2d(q, k, v, 3, deterministic=True)
    assert _fast.calls().get("fast_forward", 0) == before.get("fast_forward", 0) + 1
    grads = torch.autograd.grad(out.square().sum(), (q, k, v), create_graph=True)
    assert seen == [True], f"{path}: the library got {seen}"
    assert _fast.calls().get("op_backward", 0) == before.get("op_backward", 0) + 1
    assert all(torch.isfinite(g).all() for g in grads)


def test_compiled_graph_records_the_call_flag(monkeypatch, global_flag):
    """torch.compile(fullgraph=True) records deterministic=True as the custom ops' argument:
    the compiled backward hands the library deterministic = 1 with torch's flag off."""
    torch._dynamo.reset()
    seen, _ = _spy_path("ctypes", monkeypatch)  # compiling takes the custom ops anyway
    global_flag(False)

    def fn(q, k, v):
        return nattn.na2d(q, k, v, 3, deterministic=True).square().sum()

    q, k, v = qkv((6, 7))
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(q, k, v), (q, k, v))
    assert seen == [True], f"the library got {seen}"
    want = torch.autograd.grad(fn(q, k, v), (q, k, v))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_explain_passes_the_flag_to_the_planner(monkeypatch, global_flag):
    """explain(deterministic=...) plans with the call's flag (a reference plan shows no
    difference, so the options handed to nattn_explain_backward are read)."""
    seen = []
    real = _lib.LIB.nattn_explain_backward

    def spy(p, arr, options, *rest):
        seen.append(bool(options._obj.deterministic))
        return real(p, arr, options, *rest)
    monkeypatch.setattr(_lib.LIB, "nattn_explain_backward", spy)
    q, k, v = qkv((6, 7), requires_grad=False)
    global_flag(False)
    for det in (None, False, True):
        nattn.explain(q, k, v, 3, backward=True, deterministic=det)
    global_flag(True)
    nattn.explain(q, k, v, 3, backward=True, deterministic=False)
    assert seen == [False, False, True, True]


@pytest.mark.parametrize("det", [None, True])
def test_module_forwards_the_flag(det, monkeypatch, global_flag):
    seen, _ = _spy_path("custom_op", monkeypatch)
    global_flag(False)
    m = nattn.NeighborhoodAttention2D(16, 2, 3, deterministic=det).double()
    assert ("deterministic=True" in repr(m)) == bool(det)
    x = rand(2, 5, 6, 16)
    m(x).sum().backward()
    assert seen == [bool(det)]
    assert torch.isfinite(x.grad).all()


def test_distributed_checks_the_flag_before_needing_a_process_group():
    q, k, v = qkv((6, 7))
    with pytest.raises(RuntimeError, match="needs torch.distributed initialized"):
        nd.na2d(q, k, v, 3, deterministic=True)
