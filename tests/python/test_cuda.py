"""CUDA tensors. Skipped without torch.cuda. Tests that need nattn's CUDA backend (the
`cuda_backend` fixture, conftest.py) skip when this build has none, unless NATTN_REQUIRE_CUDA=1
(set it where the CUDA backend must be tested)."""
import math

import pytest
import torch

import nattn
from na_reference import reference_na

pytestmark = pytest.mark.cuda

CUDA_INFO = {b.name: b for b in nattn.backends()}["cuda"]


# Tolerances against the float64 oracle on the same rounded inputs.
TOL = {torch.float16: (5e-3, 2e-2), torch.bfloat16: (3e-2, 6e-2), torch.float32: (2e-3, 5e-3)}

CASES = [  # (extents, kernel_size, stride, dilation, is_causal, hq, hkv, d)
    ((64,), 7, 1, 1, False, 4, 4, 64),
    ((96,), 16, 4, 2, True, 4, 2, 128),
    ((12, 20), (5, 7), 1, 1, False, 4, 4, 64),
    ((16, 16), (4, 8), (2, 4), (2, 1), (True, False), 8, 2, 128),
    ((6, 8, 10), 3, 1, 1, False, 2, 2, 64),
    ((6, 8, 10), (2, 4, 5), (1, 2, 5), (2, 1, 1), (False, True, False), 4, 1, 128),
]


def qkv(extents, hq, hkv, d, dtype, device="cuda", b=2):
    def r(h):
        return torch.randn(b, *extents, h, d, dtype=dtype, device=device, requires_grad=True)
    return r(hq), r(hkv), r(hkv)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("extents,ks,st,dil,causal,hq,hkv,d", CASES)
def test_cuda_forward_backward(cuda_backend, dtype, extents, ks, st, dil, causal, hq, hkv, d):
    fn = {1: nattn.na1d, 2: nattn.na2d, 3: nattn.na3d}[len(extents)]
    q, k, v = qkv(extents, hq, hkv, d, dtype)
    out, lse = fn(q, k, v, ks, st, dil, causal, return_lse=True, backend="cuda")
    ref, ref_lse = reference_na(q, k, v, ks, st, dil, causal)
    tol, gtol = TOL[dtype]
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    torch.testing.assert_close(lse, ref_lse, atol=1e-3, rtol=1e-3)
    dout, dlse = torch.randn_like(out), torch.randn_like(lse)
    got = torch.autograd.grad((out, lse), (q, k, v), (dout, dlse))
    want = torch.autograd.grad((ref, ref_lse), (q, k, v), (dout, dlse))
    for g, w, name in zip(got, want, "qkv"):
        torch.testing.assert_close(g, w, atol=gtol, rtol=gtol, msg=f"d{name}")


# Grids large enough that the fused kernels' CTAs own many boxes per axis and walk several
# key (forward, dQ) or query (dK/dV) boxes per axis, with full, partial and skipped boxes.
LARGE = [  # (extents, kernel_size, stride, dilation, is_causal, hq, hkv, d, additional keys)
    ((700,), 65, 1, 1, False, 2, 1, 128, 0),
    ((300,), 33, 8, 2, True, 2, 2, 64, 20),
    ((40, 72), (13, 21), 1, 1, False, 2, 2, 128, 0),
    ((48, 40), (16, 8), (16, 8), 1, False, 2, 1, 64, 0),
    ((36, 44), (9, 12), (2, 3), (2, 1), (True, False), 2, 1, 32, 70),
    ((10, 20, 24), (3, 7, 9), 1, 1, False, 2, 2, 128, 0),
    ((12, 16, 20), (4, 8, 8), (4, 8, 8), (1, 1, 2), (False, True, False), 3, 1, 64, 5),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("extents,ks,st,dil,causal,hq,hkv,d,na", LARGE)
def test_cuda_fused_large_grids(cuda_backend, dtype, extents, ks, st, dil, causal, hq, hkv, d, na):
    fn = {1: nattn.na1d, 2: nattn.na2d, 3: nattn.na3d}[len(extents)]
    q, k, v = qkv(extents, hq, hkv, d, dtype, b=1)
    extra = {}
    if na:
        ak = torch.randn(1, na, hkv, d, device="cuda", dtype=dtype, requires_grad=True)
        av = torch.randn(1, na, hkv, d, device="cuda", dtype=dtype, requires_grad=True)
        extra = dict(additional_keys=ak, additional_values=av)
    out, lse = fn(q, k, v, ks, st, dil, causal, return_lse=True, backend="cuda", **extra)
    ref, ref_lse = reference_na(q, k, v, ks, st, dil, causal, **extra)
    tol, gtol = TOL[dtype]
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    torch.testing.assert_close(lse, ref_lse, atol=1e-3, rtol=1e-3)
    dout, dlse = torch.randn_like(out), torch.randn_like(lse)
    inputs = (q, k, v) + tuple(extra.values())
    got = torch.autograd.grad((out, lse), inputs, (dout, dlse))
    want = torch.autograd.grad((ref, ref_lse), inputs, (dout, dlse))
    for g, w, name in zip(got, want, ["q", "k", "v", "additional_k", "additional_v"]):
        torch.testing.assert_close(g, w, atol=gtol, rtol=gtol, msg=f"d{name}")


@pytest.mark.parametrize("scale", [-0.3, 0.0, 2.0])
def test_cuda_fused_any_scale(cuda_backend, scale):
    # The fused kernels fold the scale into exp2; zero and negative scales take another path.
    q, k, v = qkv((20, 24), 2, 2, 64, torch.float16)
    out, lse = nattn.na2d(q, k, v, (5, 7), scale=scale, return_lse=True, backend="cuda")
    ref, ref_lse = reference_na(q, k, v, (5, 7), scale=scale)
    torch.testing.assert_close(out, ref, atol=5e-3, rtol=5e-3)
    torch.testing.assert_close(lse, ref_lse, atol=2e-3, rtol=2e-3)
    dout = torch.randn_like(out)
    # Relative to the gradient's norm: at scale 2 the softmax is sharp and dS is large, so
    # fp16 rounding of P and dS before the products is large in absolute terms.
    for g, w in zip(torch.autograd.grad(out, (q, k, v), dout), torch.autograd.grad(ref, (q, k, v), dout)):
        assert ((g.double() - w.double()).norm() / w.double().norm().clamp_min(1e-12)).item() < 5e-3


def test_cuda_backward_is_bitwise_reproducible(cuda_backend):
    """Under torch.use_deterministic_algorithms (sm90's opt-in fast backward adds dQ partial sums
    with atomics: not bitwise reproducible, by design; the deterministic pair is the default)."""
    q, k, v = qkv((30, 34), 4, 2, 128, torch.bfloat16, b=1)
    out = nattn.na2d(q, k, v, (7, 9), dilation=(2, 1), backend="cuda")
    dout = torch.randn_like(out)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first = torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)
        for _ in range(3):
            again = torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)
            for a, b in zip(first, again):
                assert torch.equal(a, b)
    finally:
        torch.use_deterministic_algorithms(was)


def test_cuda_additional_keys_and_non_contiguous(cuda_backend):
    packed = torch.randn(2, 10, 12, 3, 4, 64, device="cuda", dtype=torch.bfloat16)
    q, k, v = (x.requires_grad_() for x in packed.unbind(3))
    ak = torch.randn(2, 5, 4, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    av = torch.randn(2, 5, 4, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    out = nattn.na2d(q, k, v, 5, additional_keys=ak, additional_values=av)
    ref, _ = reference_na(q, k, v, 5, additional_keys=ak, additional_values=av)
    torch.testing.assert_close(out, ref, atol=3e-2, rtol=3e-2)
    dout = torch.randn_like(out)
    for g, w in zip(torch.autograd.grad(out, (q, k, v, ak, av), dout),
                    torch.autograd.grad(ref, (q, k, v, ak, av), dout)):
        torch.testing.assert_close(g, w, atol=6e-2, rtol=6e-2)


def test_cuda_runs_on_current_stream(cuda_backend):
    q, k, v = qkv((32, 32), 4, 4, 64, torch.float16)
    expected = nattn.na2d(q, k, v, 7)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = nattn.na2d(q, k, v, 7)
    torch.cuda.current_stream().wait_stream(side)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)


def test_cuda_dense_attention(cuda_backend):
    q, k, v = qkv((200,), 4, 2, 64, torch.float16)
    out = nattn.attention(q, k, v, is_causal=True)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2).double(), k.transpose(1, 2).double().repeat_interleave(2, 1),
        v.transpose(1, 2).double().repeat_interleave(2, 1), is_causal=True)
    torch.testing.assert_close(out, ref.transpose(1, 2).half(), atol=5e-3, rtol=5e-3)


def test_cuda_compile_and_module(cuda_backend):
    torch._dynamo.reset()
    m = nattn.NeighborhoodAttention2D(128, 2, 5).cuda().half()
    x = torch.randn(2, 12, 12, 128, device="cuda", dtype=torch.float16, requires_grad=True)
    compiled = torch.compile(m, fullgraph=True)
    torch.testing.assert_close(compiled(x), m(x), atol=1e-2, rtol=1e-2)
    compiled(x).float().square().sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_cuda_second_device(cuda_backend):
    q, k, v = qkv((8, 8), 2, 2, 64, torch.float16, device="cuda:1")
    out = nattn.na2d(q, k, v, 3)
    assert out.device == torch.device("cuda:1")
    torch.testing.assert_close(out, reference_na(q, k, v, 3)[0], atol=5e-3, rtol=5e-3)


def test_cuda_device_mismatch_is_value_error():
    q = torch.randn(1, 8, 2, 64, device="cuda")
    k = torch.randn(1, 8, 2, 64)
    with pytest.raises(ValueError, match=r"k.device = cpu is invalid: must match q.device \(cuda:0\)"):
        nattn.na1d(q, k, k, 3)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1e-2),
                                       (torch.float32, 1e-5)])
def test_cuda_merge_attentions(cuda_backend, dtype, tol):
    # The library's CUDA merge against its CPU merge: strided partials, empty (-inf) partials
    # and rows, and more partials than one launch takes (merged in rounds).
    for n in (3, 20):
        packed = torch.randn(2, 50, n, 4, 64, device="cuda", dtype=dtype)
        outs = list(packed.unbind(2))
        lses = list(torch.randn(n, 2, 4, 50, device="cuda").transpose(-1, -2).unbind(0))
        lses[1][0, :3] = -math.inf
        for partial in lses:
            partial[1, 0] = -math.inf
        out, lse = nattn.merge_attentions(outs, lses)
        ref, ref_lse = nattn.merge_attentions([o.cpu() for o in outs], [x.cpu() for x in lses])
        assert out.device == outs[0].device and out.dtype == dtype and lse.dtype == torch.float32
        torch.testing.assert_close(out.cpu(), ref, atol=tol, rtol=tol)
        torch.testing.assert_close(lse.cpu(), ref_lse, atol=1e-5, rtol=1e-5)
        assert torch.all(out[1, 0] == 0) and torch.all(lse[1, 0] == -math.inf)


def test_cuda_merge_gradients(cuda_backend):
    outs = [torch.randn(2, 9, 3, 32, device="cuda", requires_grad=True) for _ in range(2)]
    lses = [torch.randn(2, 9, 3, device="cuda", requires_grad=True) for _ in range(2)]
    out, lse = nattn.merge_attentions(outs, lses)
    cpu_outs = [o.detach().cpu().requires_grad_() for o in outs]
    cpu_lses = [x.detach().cpu().requires_grad_() for x in lses]
    ref, ref_lse = nattn.merge_attentions(cpu_outs, cpu_lses)
    dout, dlse = torch.randn_like(ref), torch.randn_like(ref_lse)
    got = torch.autograd.grad((out, lse), outs + lses, (dout.cuda(), dlse.cuda()))
    want = torch.autograd.grad((ref, ref_lse), cpu_outs + cpu_lses, (dout, dlse))
    for g, w in zip(got, want):
        torch.testing.assert_close(g.cpu(), w, atol=1e-5, rtol=1e-5)


def test_cuda_workspace_comes_from_torch_and_goes_back(cuda_backend):
    from nattn import _lib
    ptr = _lib.WORKSPACE_ALLOCATE(1000, 0)
    assert ptr and _lib._WORKSPACE[ptr].device.type == "cuda" and _lib._WORKSPACE[ptr].numel() == 1000
    _lib.WORKSPACE_RELEASE(ptr, 0)
    assert _lib._WORKSPACE == {}
    # A backward with a layout copy takes workspace (Delta rows, the copied dout) and returns it.
    q, k, v = qkv((16, 16), 2, 2, 64, torch.float16)
    nattn.na2d(q, k, v, 5).sum().backward()
    torch.cuda.synchronize()
    assert _lib._WORKSPACE == {}


def test_cuda_tensors_refused_by_reference_backend():
    q = torch.randn(1, 8, 2, 64, device="cuda")
    with pytest.raises(NotImplementedError, match="reference: runs on CPU tensors only"):
        nattn.na1d(q, q, q, 3, backend="reference")


def test_cuda_tensors_without_cuda_backend_list_reasons():
    if CUDA_INFO.available:
        pytest.skip("this build has the CUDA backend")
    q = torch.randn(1, 8, 2, 64, device="cuda")
    with pytest.raises(NotImplementedError, match="no backend can run this call"):
        nattn.na1d(q, q, q, 3)
