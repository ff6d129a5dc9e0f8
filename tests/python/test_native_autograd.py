"""The fast path's C++ autograd node (src/torch_autograd/autograd.cpp, python/nattn/_native_autograd.py):
where built for the running torch, a recorded eager call takes it, and it gives bitwise what the
Python autograd.Function gives (same native ops, same kernels) on every kind of call: additional
keys, grouped heads, cross-attention, gradients through lse only or out only, inputs of which
only some need gradients, retained graphs. Skipped where the library was not built for this
torch, unless NATTN_REQUIRE_TORCH_AUTOGRAD=1 (then it fails)."""
import os
import subprocess
import sys

import pytest
import torch

import nattn
from nattn import _native_autograd

if not _native_autograd.LOADED:
    if os.environ.get("NATTN_REQUIRE_TORCH_AUTOGRAD") == "1":
        raise RuntimeError("NATTN_REQUIRE_TORCH_AUTOGRAD=1 but the C++ autograd is not loaded: "
                           f"{_native_autograd.REASON}")
    pytest.skip(f"C++ autograd not loaded: {_native_autograd.REASON}", allow_module_level=True)


def both(fn):
    """fn() recorded by the C++ node, then by the Python autograd.Function; each with the
    backward calls the C++ node made."""
    results = []
    for cpp in (True, False):
        _native_autograd.LOADED = cpp
        before = _native_autograd.backward_calls()
        try:
            results.append((fn(), _native_autograd.backward_calls() - before))
        finally:
            _native_autograd.LOADED = True
    return results


def _grad_fn_name(t):
    return type(t.grad_fn).__name__ if t.grad_fn is not None else None


def test_op_path_says_cpp_and_the_graph_holds_the_cpp_node():
    path = nattn.op_path()
    assert path.autograd == "cpp" and "C++ node" in path.reason
    q, k, v = (torch.randn(1, 5, 4, 2, 8, requires_grad=True) for _ in range(3))
    (out, cpp_calls), (ref, py_calls) = both(lambda: nattn.na2d(q, k, v, 3))
    assert _grad_fn_name(out) != _grad_fn_name(ref)
    assert "_Attention" in _grad_fn_name(ref)  # the Python Function's node
    before = _native_autograd.backward_calls()
    out.sum().backward()
    assert _native_autograd.backward_calls() - before == 1


CASES = ["plain", "additional", "grouped_cross", "lse_only", "out_only", "some_inputs",
         "strided", "dilated_causal"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpp_node_matches_the_python_function(case, dtype):
    g = torch.Generator().manual_seed(hash((case, str(dtype))) % 2**31)

    def make(*shapes):
        return [torch.randn(*s, dtype=dtype, generator=g) for s in shapes]

    grads_of = None  # which inputs need gradients (default: all)
    if case == "additional":
        base = make((1, 4, 5, 2, 8), (1, 4, 5, 2, 8), (1, 4, 5, 2, 6), (1, 3, 2, 8), (1, 3, 2, 6))
        call = lambda q, k, v, ak, av: nattn.na2d(q, k, v, 3, additional_keys=ak,  # noqa: E731
                                                  additional_values=av, return_lse=True)
    elif case == "grouped_cross":
        base = make((2, 9, 4, 8), (2, 5, 2, 8), (2, 5, 2, 8))
        call = lambda q, k, v: nattn.attention(q, k, v, is_causal=True, return_lse=True)  # noqa: E731
    elif case == "lse_only":
        base = make((1, 5, 6, 2, 4), (1, 5, 6, 2, 4), (1, 5, 6, 2, 4))
        call = lambda q, k, v: (nattn.na2d(q, k, v, 3, return_lse=True)[1],)  # noqa: E731
    elif case == "out_only":
        base = make((1, 5, 6, 2, 4), (1, 5, 6, 2, 4), (1, 5, 6, 2, 4))
        call = lambda q, k, v: (nattn.na2d(q, k, v, 3, return_lse=True)[0],)  # noqa: E731
    elif case == "some_inputs":
        base = make((1, 11, 2, 8), (1, 11, 2, 8), (1, 11, 2, 8))
        grads_of = [False, True, False]
        call = lambda q, k, v: nattn.na1d(q, k, v, 5, return_lse=True)  # noqa: E731
    elif case == "strided":
        packed = make((1, 6, 6, 3, 2, 8))[0]
        base = list(packed.unbind(3))
        call = lambda q, k, v: nattn.na2d(q, k, v, (3, 5), stride=(2, 1), return_lse=True)  # noqa: E731
    elif case == "dilated_causal":
        base = make((1, 4, 6, 5, 2, 8), (1, 4, 6, 5, 2, 8), (1, 4, 6, 5, 2, 8))
        call = lambda q, k, v: nattn.na3d(q, k, v, (2, 3, 3), dilation=(1, 2, 1),  # noqa: E731
                                          is_causal=(True, False, False), return_lse=True)
    else:
        base = make((2, 13, 3, 16), (2, 13, 3, 16), (2, 13, 3, 16))
        call = lambda q, k, v: nattn.na1d(q, k, v, 7, return_lse=True)  # noqa: E731
    grads_of = grads_of or [True] * len(base)

    def run():
        xs = [x.detach().clone().requires_grad_(r) for x, r in zip(base, grads_of)]
        outs = call(*xs)
        weights = [torch.randn(o.shape, dtype=o.dtype, generator=torch.Generator().manual_seed(i))
                   for i, o in enumerate(outs)]
        sum((o * w).sum() for o, w in zip(outs, weights)).backward()
        return list(outs) + [x.grad for x in xs]

    (cpp, cpp_calls), (py, py_calls) = both(run)
    assert (cpp_calls, py_calls) == (1, 0)
    for a, b in zip(cpp, py):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_retained_graph_runs_the_backward_twice():
    q, k, v = (torch.randn(1, 9, 2, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    out = nattn.na1d(q, k, v, 3)
    out.sum().backward(retain_graph=True)
    once = [x.grad.clone() for x in (q, k, v)]
    out.sum().backward()
    for x, g in zip((q, k, v), once):
        torch.testing.assert_close(x.grad, 2 * g, rtol=0, atol=0)


def test_no_grad_and_inference_mode_record_nothing():
    q, k, v = (torch.randn(1, 9, 2, 8, requires_grad=True) for _ in range(3))
    with torch.no_grad():
        assert nattn.na1d(q, k, v, 3).grad_fn is None
    with torch.inference_mode():
        a, b, c = (torch.randn(1, 9, 2, 8) for _ in range(3))
        assert nattn.na1d(a, b, c, 3).grad_fn is None


@pytest.mark.parametrize("env, expect", [("0", "disabled (NATTN_TORCH_AUTOGRAD=0)"),
                                         ("/nonexistent/libnattn_torch_autograd_x.so", "not found")])
def test_switch_and_missing_library_keep_the_python_function(env, expect):
    code = ("import nattn, torch; p = nattn.op_path(); print(p.autograd); print(p.reason); "
            "q = torch.randn(1, 7, 2, 4, requires_grad=True); nattn.na1d(q, q, q, 3).sum().backward(); "
            "print(type(q.grad).__name__)")
    env_vars = dict(os.environ, NATTN_TORCH_AUTOGRAD=env)  # the same nattn as this process
    out = subprocess.run([sys.executable, "-c", code], env=env_vars, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "python" and expect in lines[1] and lines[2] == "Tensor"


@pytest.mark.cuda
def test_cuda_bf16_cpp_node_matches_the_python_function(cuda_backend):
    dev = torch.device("cuda")
    base = [torch.randn(2, 14, 14, 4, 32, device=dev, dtype=torch.bfloat16) for _ in range(3)]
    dout = torch.randn_like(base[0])

    def run():
        xs = [x.clone().requires_grad_() for x in base]
        out = nattn.na2d(*xs, 7)
        out.backward(dout)
        return [out] + [x.grad for x in xs]

    (cpp, n), (py, m) = both(run)
    assert (n, m) == (1, 0)
    for a, b in zip(cpp, py):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
