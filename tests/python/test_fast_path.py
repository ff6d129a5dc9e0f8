"""The eager fast path (python/nattn/_fast.py): plain calls skip torch.library dispatch and
give what the custom ops give; everything that needs the ops (compile, fake tensors, modes,
double backward) still takes them. Which path ran is read from nattn._fast.calls() (nattn._ops.CALLS
and the C++ autograd node's backward count)."""
import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import nattn
from nattn import _fast


@contextlib.contextmanager
def fast_path(enabled: bool):
    previous = _fast.ENABLED
    _fast.ENABLED = enabled
    try:
        yield
    finally:
        _fast.ENABLED = previous


def counts():
    return _fast.calls()


def delta(before):
    after = counts()
    return {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}


def both_paths(fn):
    """fn() with the fast path, then with the custom ops; returns both results and the calls
    each made."""
    results = []
    for enabled in (True, False):
        with fast_path(enabled):
            before = counts()
            results.append((fn(), delta(before)))
    return results


def leaves(*shapes, dtype=torch.float64):
    return [torch.randn(*s, dtype=dtype, requires_grad=True) for s in shapes]


def test_op_path_reports_the_active_path():
    with fast_path(True):
        assert nattn.op_path().name == "fast"
    with fast_path(False):
        path = nattn.op_path()
        assert path.name == "custom_op" and "NATTN_FAST_PATH=0" in path.reason


def test_plain_forward_takes_the_fast_path():
    q, k, v = (torch.randn(1, 6, 5, 2, 8) for _ in range(3))
    before = counts()
    out = nattn.na2d(q, k, v, 3)
    assert delta(before) == {"fast_forward": 1}
    assert out.grad_fn is None
    with fast_path(False):
        before = counts()
        ref = nattn.na2d(q, k, v, 3)
        assert delta(before) == {"op_forward": 1}
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_forward_backward_take_the_fast_path_and_match_the_ops():
    base = [x.detach() for x in leaves((2, 7, 2, 4), (2, 7, 1, 4), (2, 7, 1, 6))]

    def run():
        q, k, v = (x.clone().requires_grad_() for x in base)
        out, lse = nattn.na1d(q, k, v, 3, is_causal=True, return_lse=True)
        (out.square().sum() + lse.sum()).backward()
        return [out, lse, q.grad, k.grad, v.grad]

    (fast, fast_calls), (ops, op_calls) = both_paths(run)
    assert fast_calls == {"fast_forward": 1, "fast_backward": 1}
    assert op_calls == {"op_forward": 1, "op_backward": 1}
    for a, b in zip(fast, ops):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("case", ["na3d_additional", "attention_cross", "placed", "lse_only",
                                  "strided"])
def test_fast_path_matches_the_ops(case):
    g = torch.Generator().manual_seed(7)

    def make(*shapes):
        return [torch.randn(*s, dtype=torch.float64, generator=g) for s in shapes]

    if case == "na3d_additional":
        base = make((1, 3, 4, 5, 2, 4), (1, 3, 4, 5, 2, 4), (1, 3, 4, 5, 2, 4), (1, 3, 2, 4),
                    (1, 3, 2, 4))
        call = lambda q, k, v, ak, av: nattn.na3d(q, k, v, (3, 2, 3), dilation=(1, 2, 1),  # noqa: E731
                                                  additional_keys=ak, additional_values=av,
                                                  return_lse=True)
    elif case == "attention_cross":
        base = make((2, 9, 4, 8), (2, 5, 2, 8), (2, 5, 2, 8))
        call = lambda q, k, v: nattn.attention(q, k, v, is_causal=True, return_lse=True)  # noqa: E731
    elif case == "placed":
        base = make((1, 4, 3, 8), (1, 6, 3, 8), (1, 6, 3, 8))
        call = lambda q, k, v: nattn.na_placed(q, k, v, 3, global_extent=10, query_origin=2,  # noqa: E731
                                               key_origin=1, return_lse=True)
    elif case == "lse_only":  # the backward gets no gradient for out
        base = make((1, 5, 6, 2, 4), (1, 5, 6, 2, 4), (1, 5, 6, 2, 4))
        call = lambda q, k, v: (nattn.na2d(q, k, v, 3, return_lse=True)[1],)  # noqa: E731
    else:  # strided views of a packed tensor
        packed = make((1, 6, 6, 3, 2, 8))[0]
        base = list(packed.unbind(3))
        call = lambda q, k, v: nattn.na2d(q, k, v, (3, 5), stride=(2, 1), return_lse=True)  # noqa: E731

    def run():
        xs = [x.detach().clone().requires_grad_() for x in base]
        outs = call(*xs)
        sum(o.sum() * (i + 1) for i, o in enumerate(outs)).backward()
        return list(outs) + [x.grad for x in xs]

    (fast, fast_calls), (ops, op_calls) = both_paths(run)
    assert fast_calls == {"fast_forward": 1, "fast_backward": 1}
    assert op_calls == {"op_forward": 1, "op_backward": 1}
    for a, b in zip(fast, ops):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_cached_signature_reads_the_new_tensors():
    # The second call hits the cached entry: the data pointers must be the new tensors'.
    q1, k1, v1, q2, k2, v2 = (torch.randn(1, 6, 6, 2, 8) for _ in range(6))
    a = nattn.na2d(q1, k1, v1, 3)
    b = nattn.na2d(q2, k2, v2, 3)
    with fast_path(False):
        torch.testing.assert_close(a, nattn.na2d(q1, k1, v1, 3), rtol=0, atol=0)
        torch.testing.assert_close(b, nattn.na2d(q2, k2, v2, 3), rtol=0, atol=0)


def test_errors_are_the_ops_errors_and_never_cached():
    q, k, v = (torch.randn(1, 6, 6, 2, 8) for _ in range(3))
    messages = []
    for enabled in (True, True, False):  # twice: a failed check leaves no cache entry
        with fast_path(enabled), pytest.raises(ValueError) as e:
            nattn.na2d(q, k, v, 7)
        messages.append(str(e.value))
    assert messages[0] == messages[1] == messages[2]
    assert "kernel_size[0] = 7" in messages[0]


def test_no_grad_records_no_graph():
    q, k, v = leaves((1, 5, 5, 1, 4), (1, 5, 5, 1, 4), (1, 5, 5, 1, 4))
    before = counts()
    with torch.no_grad():
        out = nattn.na2d(q, k, v, 3)
    assert out.grad_fn is None and not out.requires_grad
    assert delta(before) == {"fast_forward": 1}


def test_double_backward_goes_through_the_op():
    # The fast backward hands a differentiated backward to the custom op, so both paths give
    # the same outcome (the op has no double-backward formula).
    outcomes = []
    for enabled in (True, False):
        q, k, v = leaves((1, 5, 2, 4), (1, 5, 2, 4), (1, 5, 2, 4))
        with fast_path(enabled):
            before = counts()
            out = nattn.na1d(q, k, v, 3)
            (gq,) = torch.autograd.grad(out.sum(), q, create_graph=True)
            try:
                gq.sum().backward()
                outcomes.append("ok")
            except RuntimeError as e:
                outcomes.append(type(e).__name__)
            calls = delta(before)
        assert calls.get("op_backward") == 1
        assert calls.get("fast_backward", 0) == 0
    assert outcomes[0] == outcomes[1]


def test_compile_runs_the_custom_ops():
    torch._dynamo.reset()
    q, k, v = (torch.randn(1, 5, 6, 2, 8) for _ in range(3))
    compiled = torch.compile(lambda q, k, v: nattn.na2d(q, k, v, 3), fullgraph=True,
                             backend="aot_eager")
    compiled(q, k, v)  # traced
    before = counts()
    out = compiled(q, k, v)
    assert delta(before) == {"op_forward": 1}
    torch.testing.assert_close(out, nattn.na2d(q, k, v, 3), rtol=0, atol=0)


def test_fake_tensors_and_dispatch_modes_take_the_ops():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(1, 5, 6, 2, 8)
        out = nattn.na2d(q, q, q, 3)
    assert out.shape == (1, 5, 6, 2, 8)

    seen = []

    class Log(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    q = torch.randn(1, 5, 6, 2, 8)
    before = counts()
    with Log():
        nattn.na2d(q, q, q, 3)
    assert any("nattn.na_forward" in s for s in seen), seen
    assert delta(before) == {"op_forward": 1}


def test_autocast_casts_on_the_fast_path():
    q, k, v = (torch.randn(1, 5, 6, 2, 8) for _ in range(3))
    before = counts()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = nattn.na2d(q, k, v, 3)
    assert out.dtype == torch.bfloat16
    assert delta(before) == {"fast_forward": 1}
    with fast_path(False), torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(out, nattn.na2d(q, k, v, 3), rtol=0, atol=0)


def test_profiler_sees_the_op_names():
    q, k, v = leaves((1, 5, 6, 2, 8), (1, 5, 6, 2, 8), (1, 5, 6, 2, 8))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        nattn.na2d(q, k, v, 3).sum().backward()
    names = {e.key for e in prof.key_averages()}
    assert {"nattn::na_forward", "nattn::na_backward"} <= names, names


def test_kernel_choice_and_determinism_are_part_of_the_signature():
    q, k, v = (torch.randn(1, 5, 6, 2, 8) for _ in range(3))
    nattn.na2d(q, k, v, 3)
    with nattn.kernel_choice(family="no-such-family"):
        with pytest.raises((ValueError, NotImplementedError)) as fast_err:
            nattn.na2d(q, k, v, 3)
        with fast_path(False), pytest.raises(type(fast_err.value)) as op_err:
            nattn.na2d(q, k, v, 3)
    assert str(fast_err.value) == str(op_err.value)


@pytest.mark.cuda
def test_cuda_graph_capture_of_fast_path_calls(cuda_backend):
    dev = torch.device("cuda")
    q, k, v = (torch.randn(1, 16, 16, 2, 32, device=dev, dtype=torch.bfloat16) for _ in range(3))
    nattn.na2d(q, k, v, 7)  # warm: plan cached, entry built
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    before = counts()
    with torch.cuda.graph(graph):
        out = nattn.na2d(q, k, v, 7)
    assert delta(before) == {"fast_forward": 1}
    for x in (q, k, v):
        x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    with fast_path(False):
        torch.testing.assert_close(out, nattn.na2d(q, k, v, 7), rtol=0, atol=0)


@pytest.mark.cuda
def test_cuda_fast_path_forward_backward_matches_the_ops(cuda_backend):
    def run():
        torch.manual_seed(3)
        q, k, v = (torch.randn(2, 12, 10, 4, 64, device="cuda", dtype=torch.bfloat16,
                               requires_grad=True) for _ in range(3))
        out = nattn.na2d(q, k, v, 5)
        out.sum().backward()  # an expanded (stride-0) gradient
        return [out, q.grad, k.grad, v.grad]

    (fast, fast_calls), (ops, _) = both_paths(run)
    assert fast_calls == {"fast_forward": 1, "fast_backward": 1}
    for a, b in zip(fast, ops):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_a_call_returning_no_lse_writes_none(device, monkeypatch):
    """A no-grad call without return_lse takes the fast path with no lse (the ctypes call: none
    allocated, none written; the library takes an absent lse view) and gives the out of the
    call with lse, which matches the reference."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from nattn import _native
    monkeypatch.setattr(_native, "LOADED", False)  # the ctypes call (the C++ ops take CPU tensors)
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    q, k, v = (torch.randn(2, 6, 5, 3, 16, device=device, dtype=dtype) for _ in range(3))
    before = counts()
    out = nattn.na2d(q, k, v, 3)
    out_lse, lse = nattn.na2d(q, k, v, 3, return_lse=True)
    assert delta(before) == {"fast_forward": 2}
    assert any(key[1] is False for key in _fast._FORWARD), "no entry without lse was made"
    assert torch.equal(out, out_lse)
    ref, ref_lse = nattn.na2d(*(x.double().cpu() for x in (q, k, v)), 3, return_lse=True,
                              backend="reference")
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(out.double().cpu(), ref, atol=tol, rtol=tol)
    torch.testing.assert_close(lse.double().cpu(), ref_lse.double(), atol=tol, rtol=tol)
