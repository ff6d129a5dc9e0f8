"""na1d/na2d/na3d and attention against the masked-attention oracle: forward, lse and backward
(including gradients that flow through lse), grouped heads, Dv != D, additional keys, scale,
non-contiguous inputs."""
import math

import pytest
import torch

import nattn
from na_reference import masked_attention, reference_na

NA = {1: nattn.na1d, 2: nattn.na2d, 3: nattn.na3d}

# (extents, kernel_size, stride, dilation, is_causal): every parameter, per axis too.
CASES = [
    ((12,), 3, 1, 1, False),
    ((11,), 4, 2, 1, False),
    ((13,), 3, 1, 2, False),
    ((12,), 4, 2, 1, True),
    ((10,), 5, 5, 1, False),  # blocked
    ((9,), 9, 1, 1, False),  # full self-attention
    ((7, 9), 3, 1, 1, False),
    ((8, 9), (2, 5), (2, 3), (2, 1), (False, True)),
    ((6, 10), (3, 4), (3, 1), (1, 2), True),
    ((4, 5, 6), 3, 1, 1, False),
    ((4, 6, 5), (2, 3, 4), (1, 3, 2), (2, 1, 1), (True, False, True)),
]


def rand(*shape, dtype=torch.float64, requires_grad=False):
    return torch.randn(*shape, dtype=dtype).requires_grad_(requires_grad)


def make_qkv(extents, b=2, hq=4, hkv=2, d=8, dv=6, dtype=torch.float64, requires_grad=True):
    q = rand(b, *extents, hq, d, dtype=dtype, requires_grad=requires_grad)
    k = rand(b, *extents, hkv, d, dtype=dtype, requires_grad=requires_grad)
    v = rand(b, *extents, hkv, dv, dtype=dtype, requires_grad=requires_grad)
    return q, k, v


def grads(tensors, outputs, cotangents):
    return torch.autograd.grad(outputs, tensors, cotangents)


@pytest.mark.parametrize("extents,ks,st,dil,causal", CASES)
def test_forward_backward_match_reference(extents, ks, st, dil, causal):
    q, k, v = make_qkv(extents)
    out, lse = NA[len(extents)](q, k, v, ks, st, dil, causal, return_lse=True)
    ref_out, ref_lse = reference_na(q, k, v, ks, st, dil, causal)
    assert out.shape == ref_out.shape and out.dtype == q.dtype and out.is_contiguous()
    assert lse.shape == ref_lse.shape and lse.dtype == torch.float32
    torch.testing.assert_close(out, ref_out, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=1e-6)
    # Gradients through out and through lse (dlse), against the oracle's autograd.
    dout, dlse = torch.randn_like(out), torch.randn_like(lse)
    got = grads((q, k, v), (out, lse), (dout, dlse))
    want = grads((q, k, v), (ref_out, ref_lse), (dout, dlse))
    for g, w, name in zip(got, want, "qkv"):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4, msg=f"d{name}")


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_float32_out_only(rank):
    extents = {1: (16,), 2: (6, 7), 3: (3, 4, 5)}[rank]
    q, k, v = make_qkv(extents, dtype=torch.float32, hq=2, hkv=2, d=16, dv=16)
    out = NA[rank](q, k, v, 3)
    assert isinstance(out, torch.Tensor)
    ref, _ = reference_na(q, k, v, 3)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    dout = torch.randn_like(out)
    for g, w in zip(grads((q, k, v), out, dout), grads((q, k, v), ref, dout)):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("hq,hkv", [(1, 1), (6, 3), (6, 1), (4, 4)])
def test_grouped_heads(hq, hkv):
    q, k, v = make_qkv((9, 8), hq=hq, hkv=hkv, d=5, dv=7)
    out = nattn.na2d(q, k, v, (3, 4), dilation=(2, 1))
    ref, _ = reference_na(q, k, v, (3, 4), dilation=(2, 1))
    torch.testing.assert_close(out, ref)
    dout = torch.randn_like(out)
    for g, w in zip(grads((q, k, v), out, dout), grads((q, k, v), ref, dout)):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-5)


def test_grouped_heads_expanded_kv_not_copied():
    # K/V stored once and expanded to the query heads (stride 0): accepted as they are.
    q = rand(2, 10, 4, 8, requires_grad=True)
    k1 = rand(2, 10, 1, 8, requires_grad=True)
    v1 = rand(2, 10, 1, 8, requires_grad=True)
    k, v = k1.expand(2, 10, 4, 8), v1.expand(2, 10, 4, 8)
    assert k.stride(2) == 0
    out = nattn.na1d(q, k, v, 5)
    ref, _ = reference_na(q, k1, v1, 5)
    torch.testing.assert_close(out, ref)
    dout = torch.randn_like(out)
    for g, w in zip(grads((q, k1, v1), out, dout), grads((q, k1, v1), ref, dout)):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-5)


def test_non_contiguous_inputs():
    # q, k, v as views of one packed qkv tensor with permuted spatial axes, and a strided dout.
    packed = rand(2, 3, 9, 7, 2, 8, requires_grad=True)  # [B, 3, X2, X1, H, D]
    q, k, v = (packed[:, i].transpose(1, 2) for i in range(3))  # [B, X1=7, X2=9, H, D]
    assert not q.is_contiguous()
    out, lse = nattn.na2d(q, k, v, (3, 5), stride=(1, 2), is_causal=(True, False),
                          return_lse=True)
    assert out.is_contiguous() and lse.is_contiguous()
    ref, ref_lse = reference_na(q, k, v, (3, 5), stride=(1, 2), is_causal=(True, False))
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(lse, ref_lse)
    dout = torch.randn(2, 9, 7, 2, 8, dtype=torch.float64).transpose(1, 2)
    (g,) = grads((packed,), out, dout)
    (w,) = grads((packed,), ref, dout)
    torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-5)


def test_head_dim_slices():
    # Strided last dim (every other element) and an offset into storage.
    base = rand(2, 8, 3, 17)
    q, k, v = base[..., 1::2], base[..., :16:2], base[..., 3:9]
    out = nattn.na1d(q, k, v, 3, dilation=2)
    torch.testing.assert_close(out, reference_na(q, k, v, 3, dilation=2)[0])


@pytest.mark.parametrize("scale", [0.0, 0.37, -1.5, 2])
def test_explicit_scale(scale):
    q, k, v = make_qkv((5, 6))
    out, lse = nattn.na2d(q, k, v, 3, scale=scale, return_lse=True)
    ref, ref_lse = reference_na(q, k, v, 3, scale=scale)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(lse, ref_lse)
    if scale == 0.0:  # uniform weights over the k*k neighborhood: lse = log(9)
        torch.testing.assert_close(lse, torch.full_like(lse, math.log(9)))


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_additional_keys(rank):
    extents = {1: (10,), 2: (5, 6), 3: (3, 4, 4)}[rank]
    q, k, v = make_qkv(extents)
    ak, av = rand(2, 3, 2, 8, requires_grad=True), rand(2, 3, 2, 6, requires_grad=True)
    out, lse = NA[rank](q, k, v, 3, is_causal=True, additional_keys=ak, additional_values=av,
                        return_lse=True)
    ref, ref_lse = reference_na(q, k, v, 3, is_causal=True, additional_keys=ak,
                                additional_values=av)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(lse, ref_lse)
    dout, dlse = torch.randn_like(out), torch.randn_like(lse)
    inputs = (q, k, v, ak, av)
    for g, w in zip(grads(inputs, (out, lse), (dout, dlse)),
                    grads(inputs, (ref, ref_lse), (dout, dlse))):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)


def test_empty_additional_keys_are_none():
    q, k, v = make_qkv((8,))
    ak, av = rand(2, 0, 2, 8), rand(2, 0, 2, 6)
    torch.testing.assert_close(nattn.na1d(q, k, v, 3, additional_keys=ak, additional_values=av),
                               nattn.na1d(q, k, v, 3))


def test_lse_only_loss():
    # Only lse feeds the loss: dout is absent and the gradient comes from dlse alone.
    q, k, v = make_qkv((7, 7))
    _, lse = nattn.na2d(q, k, v, 3, return_lse=True)
    _, ref_lse = reference_na(q, k, v, 3)
    dl = torch.randn_like(lse)
    got, want = grads((q, k), lse, dl), grads((q, k), ref_lse, dl)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)


def test_empty_batch():
    q, k, v = make_qkv((6, 6), b=0)
    out, lse = nattn.na2d(q, k, v, 3, return_lse=True)
    assert out.shape == (0, 6, 6, 4, 6) and lse.shape == (0, 6, 6, 4)


def test_no_grad_and_requires_grad_subsets():
    q, k, v = make_qkv((9,), requires_grad=False)
    with torch.no_grad():
        out = nattn.na1d(q, k, v, 3)
    assert not out.requires_grad
    v.requires_grad_(True)
    out = nattn.na1d(q, k, v, 3)
    out.sum().backward()
    assert q.grad is None and v.grad is not None


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("hq,hkv", [(2, 2), (4, 1)])
def test_dense_attention(is_causal, hq, hkv):
    q, k, v = make_qkv((13,), hq=hq, hkv=hkv, d=8, dv=5)
    out, lse = nattn.attention(q, k, v, is_causal=is_causal, return_lse=True)
    ref, ref_lse = masked_attention(q, k, v, None, is_causal_dense=is_causal)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(lse, ref_lse)
    dout, dlse = torch.randn_like(out), torch.randn_like(lse)
    for g, w in zip(grads((q, k, v), (out, lse), (dout, dlse)),
                    grads((q, k, v), (ref, ref_lse), (dout, dlse))):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)


def test_dense_equals_full_window():
    q, k, v = make_qkv((11,), requires_grad=False)
    torch.testing.assert_close(nattn.attention(q, k, v, scale=0.5),
                               nattn.na1d(q, k, v, 11, scale=0.5))


def test_ops_are_registered_with_fake_and_autograd():
    # torch.library's own consistency check: schema, fake (meta) impl vs real strides,
    # autograd registration and AOT dispatch.
    q, k, v = make_qkv((6, 5), hq=2, hkv=1, d=4, dv=3)
    ak, av = rand(2, 2, 1, 4, requires_grad=True), rand(2, 2, 1, 3, requires_grad=True)
    args = (q, k, v, ak, av, [3, 2], [1, 2], [2, 1], [False, True], None, False, 0, [], "", [], [])
    torch.library.opcheck(torch.ops.nattn.na_forward.default, args)
    dense = (q[:, :, 0], k[:, :, 0], v[:, :, 0], None, None, [], [], [], [True], 0.5, True, 0,
             [], "", [], [])
    torch.library.opcheck(torch.ops.nattn.na_forward.default, dense)
    cross = (q[:, :, 0], k[:, :3, 0], v[:, :3, 0], None, None, [], [], [], [True], None, True, 0,
             [], "", [], [])
    torch.library.opcheck(torch.ops.nattn.na_forward.default, cross)
    placed = (q[:, :4], k[:, 1:], v[:, 1:], None, None, [3, 2], [1, 1], [1, 1], [False, True],
              None, False, 0, [9, 5, 2, 0, 3, 0], "", [], [])
    torch.library.opcheck(torch.ops.nattn.na_forward.default, placed)
