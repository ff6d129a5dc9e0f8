"""The C++ dispatcher ops of libnattn_torch_ops.so (src/torch_ops/ops.cpp, python/nattn/_native.py):
when loaded they are what the eager fast path runs, and they give bitwise what the ctypes call
gives (same library, same kernels), with the same exceptions and messages. Skipped where the
library was not built, unless NATTN_REQUIRE_TORCH_OPS=1 (then it fails)."""
import os

import pytest
import torch

import nattn
from nattn import _fast, _native, _native_autograd

if not _native.LOADED:
    if os.environ.get("NATTN_REQUIRE_TORCH_OPS") == "1":
        raise RuntimeError(f"NATTN_REQUIRE_TORCH_OPS=1 but the C++ ops are not loaded: {_native.REASON}")
    pytest.skip(f"C++ ops not loaded: {_native.REASON}", allow_module_level=True)


def native_calls():
    """_native.CALLS plus the backward calls of the C++ autograd node (counted in C++)."""
    c = dict(_native.CALLS)
    c["backward"] += _native_autograd.backward_calls()
    return c


def run(native: bool, fn):
    """fn() with the fast path calling the C++ ops (native) or the ctypes C ABI."""
    before = native_calls()
    _native.LOADED = native
    try:
        result = fn()
    finally:
        _native.LOADED = True
    after = native_calls()
    ran = {k: after[k] - before[k] for k in before}
    return result, ran


def test_op_path_says_the_cpp_ops_run():
    path = nattn.op_path()
    assert (path.name, path.call) == ("fast", "native") and "libnattn_torch_ops" in path.reason
    q, k, v = (torch.randn(1, 5, 4, 2, 8) for _ in range(3))
    _, ran = run(True, lambda: nattn.na2d(q, k, v, 3))
    assert ran == {"forward": 1, "backward": 0}
    _, ran = run(False, lambda: nattn.na2d(q, k, v, 3))
    assert ran == {"forward": 0, "backward": 0}


# (rank, extent, kernel, stride, dilation, causal, heads_q, heads_kv, additional keys, dense)
CASES = [
    (1, (13,), 5, 2, 2, (True,), 2, 1, 0, False),
    (2, (6, 7), (3, 5), (1, 2), (2, 1), (False, True), 4, 2, 3, False),
    (3, (4, 5, 3), 3, 1, 1, (False, False, True), 2, 2, 0, False),
    (2, (5, 5), 5, 5, 1, (False, False), 3, 3, 2, False),
    (1, (9,), 0, 0, 0, (True,), 4, 2, 0, True),
]


def _call(case, q, k, v, ak, av):
    rank, _, ks, st, dil, causal, _, _, _, dense = case
    if dense:
        return nattn.attention(q, k, v, is_causal=causal[0], return_lse=True, backend="reference")
    fn = (nattn.na1d, nattn.na2d, nattn.na3d)[rank - 1]
    return fn(q, k, v, ks, stride=st, dilation=dil, is_causal=causal, additional_keys=ak,
              additional_values=av, return_lse=True, backend="reference")


@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_backward_bitwise_equal_to_ctypes(case, dtype):
    _, extent, _, _, _, _, hq, hkv, na, _ = case
    d, dv = 8, 6
    q = torch.randn(2, *extent, hq, d, dtype=dtype)
    k = torch.randn(2, *extent, hkv, d, dtype=dtype)
    v = torch.randn(2, *extent, hkv, dv, dtype=dtype)
    ak = torch.randn(2, na, hkv, d, dtype=dtype) if na else None
    av = torch.randn(2, na, hkv, dv, dtype=dtype) if na else None
    w_out = torch.randn(2, *extent, hq, dv, dtype=dtype)
    w_lse = torch.randn(2, *extent, hq, dtype=torch.float32)
    inputs = [x for x in (q, k, v, ak, av) if x is not None]

    def step():
        leaves = [x.clone().requires_grad_() for x in inputs]
        it = iter(leaves)
        args = [next(it) if x is not None else None for x in (q, k, v, ak, av)]
        out, lse = _call(case, *args)
        # The loss reads out and lse, so the backward gets both gradients (dlse too).
        ((out * w_out).sum() + (lse * w_lse).sum()).backward()
        return out.detach(), lse.detach(), [x.grad for x in leaves]

    (out_n, lse_n, grads_n), ran = run(True, step)
    assert ran == {"forward": 1, "backward": 1}
    (out_c, lse_c, grads_c), ran = run(False, step)
    assert ran == {"forward": 0, "backward": 0}
    assert not out_n.isnan().any() and not any(g.isnan().any() for g in grads_n)
    assert torch.equal(out_n, out_c) and torch.equal(lse_n, lse_c)
    for gn, gc in zip(grads_n, grads_c):
        assert gn.shape == gc.shape and gn.dtype == gc.dtype and torch.equal(gn, gc)


def _error(native, fn):
    with pytest.raises(Exception) as info:
        run(native, fn)
    return type(info.value), str(info.value)


@pytest.mark.parametrize("bad", ["kernel", "heads", "value_dim", "dtype_mix", "additional"])
def test_errors_are_the_ctypes_paths(bad):
    q, k, v = (torch.randn(1, 6, 5, 4, 8) for _ in range(3))
    ak = av = None
    ks, expect = 3, None
    if bad == "kernel":
        ks, expect = 7, "kernel_size[0] = 7"
    elif bad == "heads":
        k = torch.randn(1, 6, 5, 3, 8)
        expect = "heads"
    elif bad == "value_dim":
        v = torch.randn(1, 6, 5, 4, 8, 1)
        expect = "v"
    elif bad == "dtype_mix":
        k = k.double()
        expect = "k.dtype"
    elif bad == "additional":
        ak = torch.randn(1, 2, 4, 8)
        expect = "additional_v"

    def call():
        return nattn.na2d(q, k, v, ks, additional_keys=ak, additional_values=av)

    native, ctypes_path = _error(True, call), _error(False, call)
    assert native == ctypes_path
    kind, message = native
    assert kind is ValueError and message.startswith("nattn.na2d: ") and expect in message


def test_backward_errors_are_the_ctypes_paths():
    q, k, v = (torch.randn(1, 6, 5, 2, 8) for _ in range(3))
    out, lse = nattn.na2d(q, k, v, 3, return_lse=True)
    # kernel_size, stride, dilation, is_causal, scale, dense, backend, placement, deterministic
    params = ([3, 3], [1, 1], [1, 1], [False, False], None, False, 0, (), False)
    choice = nattn._choice.current()
    bad_dout = torch.randn(1, 6, 5, 2, 7)
    tensors = (q, k, v, None, None, out, lse, bad_dout, None)
    native = _error(True, lambda: _fast.run_backward(tensors, params, choice))
    assert native == _error(False, lambda: _fast.run_backward(tensors, params, choice))
    assert native[0] is ValueError and native[1].startswith("nattn.na2d backward: dout")


def test_compiles_with_fake_implementations():
    """torch.compile traces the C++ ops through their fake implementations (aot_eager: fake
    tensors and functionalization without inductor's C++ compile, which is slow on CI's cores)."""
    q, k, v = (torch.randn(2, 6, 7, 4, 8) for _ in range(3))
    window = _native.window([3, 5], [1, 2], [2, 1], [False, True], False, [])
    options = _native.options(1, nattn._choice.current())

    def f(q, k, v):
        out, lse = torch.ops.nattn_native.na_forward(q, k, v, None, None, window, 0.5, options, "")
        return out * 2, lse

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    got, want = compiled(q, k, v), f(q, k, v)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    expected = nattn.na2d(q, k, v, (3, 5), stride=(1, 2), dilation=(2, 1), is_causal=(False, True),
                          scale=0.5, return_lse=True)
    assert torch.equal(want[0], expected[0] * 2) and torch.equal(want[1], expected[1])


def test_fake_tensor_shapes_match_the_op():
    from torch._subclasses.fake_tensor import FakeTensorMode
    q = torch.randn(1, 5, 6, 4, 8)
    k, v = torch.randn(1, 5, 6, 2, 8), torch.randn(1, 5, 6, 2, 3)
    window = _native.window([3, 3], [1, 1], [1, 1], [False, False], False, [])
    options = _native.options(1, nattn._choice.current())
    real = torch.ops.nattn_native.na_forward(q, k, v, None, None, window, None, options, "")
    with FakeTensorMode() as mode:
        fq, fk, fv = (mode.from_tensor(x) for x in (q, k, v))
        fake = torch.ops.nattn_native.na_forward(fq, fk, fv, None, None, window, None, options, "")
    for r, f in zip(real, fake):
        assert r.shape == f.shape and r.dtype == f.dtype and r.stride() == f.stride()


def test_kernel_choice_reaches_the_ops(monkeypatch):
    # A forced choice travels in the ops' `options` and `family` arguments, the backward's too
    # (with the forward's choice, outside the block): test_plans.py checks the same for ctypes.
    seen = []
    real = _native.options

    def spy(backend, choice, deterministic=False):
        seen.append(choice)
        return real(backend, nattn._choice.AUTO, deterministic)  # the reference takes no choice
    monkeypatch.setattr(_native, "options", spy)
    q, k, v = (torch.randn(1, 6, 7, 2, 8, requires_grad=True) for _ in range(3))
    with nattn.kernel_choice(family="reference", config=[3, 4], tile=((2, 4), (1, 2))) as c:
        out = nattn.na2d(q, k, v, 3)
    out.sum().backward()
    # The C++ autograd node keeps the forward's packed options for its backward (one call);
    # the Python autograd.Function packs them again from the saved choice.
    assert seen == ([c] if _native_autograd.LOADED else [c, c])
    assert real(0, c)[3:] == [3, 4, -1, -1, 2, 4, 1, 1, 2, 1]


@pytest.mark.parametrize("window", [[], [4, 0, 0, 0, 0, 0, 3, 3, 3, 3, 3], [2, 0, 0, 0, 3, 3, 1, 1, 1]])
def test_malformed_window_is_refused_by_name(window):
    # Only the package builds `window`; a direct caller who gets it wrong is told which rule.
    q = torch.randn(1, 5, 5, 2, 8)
    options = _native.options(1, nattn._choice.current())
    with pytest.raises(RuntimeError) as info:
        torch.ops.nattn_native.na_forward(q, q, q, None, None, window, None, options, "")
    with pytest.raises(ValueError, match=r"^nattn_native: window = list of \d+ ints is invalid: "):
        _native._raise(info.value)


# CUDA calls (bf16) take the C++ ops by default: (rank, extent, kernel, stride, dilation, causal,
# heads_q, heads_kv, additional keys, dense, head dim). The first is a NAT stage's shape (head dim
# 32: the sm90 backward's two-CTAs-per-SM rows), the others 1-D/3-D, grouped heads, additional
# keys, causal, a dense call.
CUDA_CASES = [
    (2, (14, 14), 7, 1, 1, (False, False), 4, 4, 0, False, 32),
    (1, (300,), 33, 4, 2, (True,), 4, 2, 5, False, 64),
    (3, (6, 8, 8), (3, 5, 5), 1, 1, (True, False, False), 2, 2, 0, False, 128),
    (1, (200,), 0, 0, 0, (False,), 4, 1, 0, True, 64),
]


def _cuda_inputs(case, device="cuda", dtype=torch.bfloat16):
    _, extent, _, _, _, _, hq, hkv, na, _, d = case
    q = torch.randn(2, *extent, hq, d, device=device, dtype=dtype)
    k = torch.randn(2, *extent, hkv, d, device=device, dtype=dtype)
    v = torch.randn(2, *extent, hkv, d, device=device, dtype=dtype)
    ak = torch.randn(2, na, hkv, d, device=device, dtype=dtype) if na else None
    av = torch.randn(2, na, hkv, d, device=device, dtype=dtype) if na else None
    return q, k, v, ak, av


def _cuda_call(case, q, k, v, ak, av, backend=None):
    rank, _, ks, st, dil, causal, _, _, _, dense, _ = case
    if dense:
        return nattn.attention(q, k, v, is_causal=causal[0], return_lse=True, backend=backend)
    fn = (nattn.na1d, nattn.na2d, nattn.na3d)[rank - 1]
    return fn(q, k, v, ks, stride=st, dilation=dil, is_causal=causal, additional_keys=ak,
              additional_values=av, return_lse=True, backend=backend)


def _step(case, inputs, w_out, w_lse, backend=None):
    """out, lse and the gradients of a loss that reads both (so dlse reaches the backward)."""
    leaves = [None if x is None else x.clone().requires_grad_() for x in inputs]
    out, lse = _cuda_call(case, *leaves, backend=backend)
    ((out.float() * w_out).sum() + (lse * w_lse).sum()).backward()
    return out.detach(), lse.detach(), [x.grad for x in leaves if x is not None]


@pytest.mark.cuda
@pytest.mark.parametrize("case", CUDA_CASES, ids=[f"case{i}" for i in range(len(CUDA_CASES))])
def test_cuda_forward_backward_bitwise_equal_to_ctypes_and_near_the_reference(cuda_backend, case):
    assert _native.CUDA, "CUDA tensors should take the C++ ops by default (NATTN_TORCH_OPS_CUDA)"
    inputs = _cuda_inputs(case)
    hq, d = case[6], case[10]
    w_out = torch.randn(*inputs[0].shape[:-1], d, device="cuda")
    w_lse = torch.randn(*inputs[0].shape[:-2], hq, device="cuda")
    (out_n, lse_n, grads_n), ran = run(True, lambda: _step(case, inputs, w_out, w_lse))
    assert ran == {"forward": 1, "backward": 1}
    (out_c, lse_c, grads_c), ran = run(False, lambda: _step(case, inputs, w_out, w_lse))
    assert ran == {"forward": 0, "backward": 0}
    assert not out_n.isnan().any() and not any(g.isnan().any() for g in grads_n)
    assert torch.equal(out_n, out_c) and torch.equal(lse_n, lse_c)
    for gn, gc in zip(grads_n, grads_c):
        assert gn.shape == gc.shape and gn.dtype == gc.dtype and torch.equal(gn, gc)
    # And the values: the float64 reference backend on the same (bf16-rounded) inputs.
    ref = [None if x is None else x.double().cpu() for x in inputs]
    out_r, lse_r, grads_r = _step(case, ref, w_out.double().cpu(), w_lse.double().cpu(), "reference")
    torch.testing.assert_close(out_n.double().cpu(), out_r, atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(lse_n.double().cpu(), lse_r.double(), atol=3e-2, rtol=3e-2)
    for gn, gr in zip(grads_n, grads_r):
        scale = gr.abs().max().item()
        assert (gn.double().cpu() - gr).abs().max().item() <= 4e-2 * scale + 1e-2


@pytest.mark.cuda
def test_cuda_graph_capture_of_forward_backward_through_the_ops(cuda_backend):
    """A forward+backward step through the C++ ops captures into a CUDA graph (current stream,
    workspace from torch's caching allocator inside the graph's pool) and replays on new inputs
    to the eager step's results, bitwise."""
    q, k, v = (torch.randn(2, 14, 14, 4, 32, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    dout = torch.randn_like(q)

    def step():
        out = nattn.na2d(q, k, v, 7)
        return (out, *torch.autograd.grad(out, (q, k, v), dout))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the default stream, as torch's docs ask
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    before = native_calls()
    with torch.cuda.graph(graph):
        captured = step()
    after = native_calls()
    assert {k: after[k] - before[k] for k in before} == {"forward": 1, "backward": 1}
    with torch.no_grad():
        for x in (q, k, v, dout):
            x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    eager = step()
    for a, b in zip(captured, eager):
        assert not a.isnan().any()
        assert torch.equal(a, b)
