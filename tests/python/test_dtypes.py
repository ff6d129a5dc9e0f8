"""float16 / bfloat16 on CPU against the float64 oracle evaluated on the same rounded inputs,
with tolerances of the output dtype; lse stays float32."""
import pytest
import torch

import nattn
from na_reference import reference_na

TOL = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float32: 2e-5}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_forward_backward(dtype):
    tol = TOL[dtype]
    q = torch.randn(2, 7, 6, 4, 16, dtype=dtype, requires_grad=True)
    k = torch.randn(2, 7, 6, 2, 16, dtype=dtype, requires_grad=True)
    v = torch.randn(2, 7, 6, 2, 8, dtype=dtype, requires_grad=True)
    out, lse = nattn.na2d(q, k, v, (3, 4), stride=(2, 1), is_causal=(False, True),
                          return_lse=True)
    assert out.dtype == dtype and lse.dtype == torch.float32
    ref, ref_lse = reference_na(q, k, v, (3, 4), stride=(2, 1), is_causal=(False, True))
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    torch.testing.assert_close(lse, ref_lse, atol=1e-4, rtol=1e-5)
    dout = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), dout)
    want = torch.autograd.grad(ref, (q, k, v), dout)
    for g, w in zip(got, want):
        assert g.dtype == dtype
        torch.testing.assert_close(g, w, atol=4 * tol, rtol=4 * tol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_attention(dtype):
    q, k, v = (torch.randn(1, 20, 2, 16, dtype=dtype) for _ in range(3))
    out = nattn.attention(q, k, v, is_causal=True)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.double().transpose(1, 2), k.double().transpose(1, 2), v.double().transpose(1, 2),
        is_causal=True).transpose(1, 2).to(dtype)
    torch.testing.assert_close(out, ref, atol=TOL[dtype], rtol=TOL[dtype])
