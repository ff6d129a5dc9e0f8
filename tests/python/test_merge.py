"""merge_attentions: partials over disjoint key sets merge into one softmax."""
import math

import pytest
import torch

import nattn
from na_reference import masked_attention


def rand(*shape, dtype=torch.float64):
    return torch.randn(*shape, dtype=dtype, requires_grad=True)


def attend_all(q, ak, av, scale):
    """Pure torch: every query of q [B, *X, Hq, D] over ak/av [B, Na, Hkv, *] -> (out, lse)."""
    B, X, Hq = q.shape[0], q.shape[1:-2], q.shape[-2]
    g = Hq // ak.shape[2]
    qf = q.reshape(B, -1, Hq, q.shape[-1]).transpose(1, 2)  # [B, Hq, N, D]
    kf = ak.transpose(1, 2).repeat_interleave(g, 1)
    vf = av.transpose(1, 2).repeat_interleave(g, 1)
    s = qf @ kf.transpose(-1, -2) * scale
    out = (torch.softmax(s, -1) @ vf).transpose(1, 2).reshape(B, *X, Hq, av.shape[-1])
    lse = torch.logsumexp(s, -1).transpose(1, 2).reshape(B, *X, Hq).float()
    return out, lse


def test_merge_reproduces_additional_keys_path():
    # NA partial + a partial over the additional keys, merged, equals one na2d call with
    # additional_keys: forward, and backward through both partials' lse (dlse in nattn).
    q, k, v = rand(2, 5, 6, 4, 8), rand(2, 5, 6, 2, 8), rand(2, 5, 6, 2, 6)
    ak, av = rand(2, 3, 2, 8), rand(2, 3, 2, 6)
    scale = 0.4
    o1, l1 = nattn.na2d(q, k, v, (3, 4), is_causal=(True, False), scale=scale, return_lse=True)
    o2, l2 = attend_all(q, ak, av, scale)
    out, lse = nattn.merge_attentions([o1, o2], [l1, l2])
    ref, ref_lse = nattn.na2d(q, k, v, (3, 4), is_causal=(True, False), scale=scale,
                              additional_keys=ak, additional_values=av, return_lse=True)
    assert out.dtype == q.dtype and lse.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(lse, ref_lse)
    dout, dlse = torch.randn_like(out), torch.randn_like(lse)
    inputs = (q, k, v, ak, av)
    got = torch.autograd.grad((out, lse), inputs, (dout, dlse))
    want = torch.autograd.grad((ref, ref_lse), inputs, (dout, dlse))
    for g, w, name in zip(got, want, ("q", "k", "v", "ak", "av")):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4, msg=f"d{name}")


def test_merge_three_partials_is_one_softmax():
    # Keys split into three disjoint blocks; one softmax over all of them is the oracle.
    q, k, v = rand(1, 12, 2, 4), rand(1, 12, 2, 4), rand(1, 12, 2, 4)
    full, full_lse = masked_attention(q, k, v, None)
    parts = []
    for lo, hi in ((0, 3), (3, 8), (8, 12)):
        mask = torch.zeros(12, 12, dtype=torch.bool)
        mask[:, lo:hi] = True
        parts.append(masked_attention(q, k, v, mask))
    out, lse = nattn.merge_attentions([p[0] for p in parts], [p[1] for p in parts])
    torch.testing.assert_close(out, full, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(lse, full_lse)


def test_merge_neg_inf_partials():
    o1, o2 = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    l1 = torch.randn(2, 3)
    l2 = torch.full((2, 3), -math.inf)
    l2[0, 0] = 0.5
    l1[1, 2] = -math.inf
    l2[1, 2] = -math.inf
    out, lse = nattn.merge_attentions([o1, o2], [l1, l2])
    assert torch.isfinite(out).all()
    # Rows where partial 2 is empty are partial 1 as it is.
    torch.testing.assert_close(out[1, :2], o1[1, :2])
    torch.testing.assert_close(lse[1, :2], l1[1, :2])
    # All partials empty: out 0, lse -inf.
    assert torch.all(out[1, 2] == 0) and lse[1, 2] == -math.inf
    w = torch.softmax(torch.stack([l1[0, 0], l2[0, 0]]), 0)
    torch.testing.assert_close(out[0, 0], w[0] * o1[0, 0] + w[1] * o2[0, 0])


def test_merge_gradients_stay_finite_with_empty_rows():
    o = [torch.randn(3, 2, 4, requires_grad=True) for _ in range(2)]
    ls = [torch.full((3, 2), -math.inf, requires_grad=True) for _ in range(2)]
    out, lse = nattn.merge_attentions(o, ls)
    (out.sum() + lse.masked_fill(torch.isinf(lse), 0).sum()).backward()
    for x in o + ls:
        assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
def test_merge_low_precision(dtype, tol):
    o = [torch.randn(2, 5, 3, 8, dtype=dtype) for _ in range(2)]
    ls = [torch.randn(2, 5, 3) for _ in range(2)]
    out, lse = nattn.merge_attentions(o, ls)
    assert out.dtype == dtype and lse.dtype == torch.float32
    w = torch.softmax(torch.stack(ls), 0).unsqueeze(-1)
    ref = (w[0] * o[0].float() + w[1] * o[1].float()).to(dtype)
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    torch.testing.assert_close(lse, torch.logsumexp(torch.stack(ls), 0))


def test_merge_single_partial_is_identity():
    o, ls = torch.randn(2, 3, 4), torch.randn(2, 3)
    out, lse = nattn.merge_attentions([o], [ls])
    torch.testing.assert_close(out, o)
    torch.testing.assert_close(lse, ls)


def torch_merge(outs, lses):
    """The merge formula in plain torch ops (float64), an oracle for values and gradients."""
    lse = torch.logsumexp(torch.stack(lses), 0)
    out = sum(torch.exp(ls - lse).unsqueeze(-1) * o for o, ls in zip(outs, lses))
    return out, lse


def test_merge_gradients_match_the_formula():
    # d out_i = w_i dout; d lse_i = w_i (<dout, out_i - out> + dlse), against autograd through
    # plain torch in float64 (the library's lse inputs are float32 by contract).
    outs = [rand(2, 5, 3, 4) for _ in range(3)]
    lses32 = [torch.randn(2, 5, 3, requires_grad=True) for _ in range(3)]
    lses64 = [ls.detach().double().requires_grad_() for ls in lses32]
    out, lse = nattn.merge_attentions(outs, lses32)
    ref, ref_lse = torch_merge(outs, lses64)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(lse, ref_lse.float())
    dout, dlse = torch.randn_like(out), torch.randn_like(lse)
    got = torch.autograd.grad((out, lse), outs + lses32, (dout, dlse))
    want = torch.autograd.grad((ref, ref_lse), outs + lses64, (dout, dlse.double()))
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, atol=1e-5, rtol=1e-4)


def test_merge_strided_partials():
    # Partials are read with their strides (views of one packed tensor, permuted lse).
    packed = torch.randn(2, 6, 2, 3, 5)  # [B, X, n, H, Dv]
    outs = list(packed.unbind(2))
    lses = list(torch.randn(2, 3, 6, 2).permute(0, 2, 1, 3).unbind(-1))  # [B, X, H], strided
    assert not lses[0].is_contiguous()
    out, lse = nattn.merge_attentions(outs, lses)
    ref, ref_lse = torch_merge([o.double() for o in outs], [ls.double() for ls in lses])
    assert out.is_contiguous() and lse.is_contiguous()
    torch.testing.assert_close(out, ref.float())
    torch.testing.assert_close(lse, ref_lse.float())


def test_merge_op_is_registered_with_fake_and_autograd():
    outs = [rand(2, 3, 2, 4) for _ in range(2)]
    lses = [torch.randn(2, 3, 2) for _ in range(2)]
    torch.library.opcheck(torch.ops.nattn.merge.default, (outs, lses))
