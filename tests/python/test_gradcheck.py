"""torch.autograd.gradcheck in float64. The outputs checked are `out` (float64); lse is float32
by definition, so its gradient is compared with the oracle's autograd in test_functional.py.
The backward reads the float32 lse, hence atol=1e-5, rtol=1e-3."""
import pytest
import torch

import nattn

TOL = dict(atol=1e-5, rtol=1e-3)


def rand(*shape):
    return torch.randn(*shape, dtype=torch.float64, requires_grad=True)


@pytest.mark.parametrize("ks,st,dil,causal", [(3, 1, 1, False), (4, 2, 1, True), (3, 2, 2, False)])
def test_gradcheck_na1d(ks, st, dil, causal):
    q, k, v = rand(1, 9, 2, 4), rand(1, 9, 1, 4), rand(1, 9, 1, 3)
    fn = lambda q, k, v: nattn.na1d(q, k, v, ks, st, dil, causal)
    assert torch.autograd.gradcheck(fn, (q, k, v), **TOL)


def test_gradcheck_na2d():
    q, k, v = rand(1, 5, 6, 2, 4), rand(1, 5, 6, 2, 4), rand(1, 5, 6, 2, 3)
    fn = lambda q, k, v: nattn.na2d(q, k, v, (3, 2), stride=(1, 2), dilation=(1, 2),
                                    is_causal=(False, True), scale=0.7)
    assert torch.autograd.gradcheck(fn, (q, k, v), **TOL)


def test_gradcheck_na3d():
    q, k, v = rand(1, 3, 4, 4, 1, 3), rand(1, 3, 4, 4, 1, 3), rand(1, 3, 4, 4, 1, 3)
    fn = lambda q, k, v: nattn.na3d(q, k, v, (2, 3, 2), is_causal=(True, False, False))
    assert torch.autograd.gradcheck(fn, (q, k, v), **TOL)


def test_gradcheck_additional_keys():
    q, k, v = rand(1, 6, 2, 4), rand(1, 6, 2, 4), rand(1, 6, 2, 3)
    ak, av = rand(1, 2, 2, 4), rand(1, 2, 2, 3)
    fn = lambda q, k, v, ak, av: nattn.na1d(q, k, v, 3, additional_keys=ak,
                                            additional_values=av)
    assert torch.autograd.gradcheck(fn, (q, k, v, ak, av), **TOL)


@pytest.mark.parametrize("is_causal", [False, True])
def test_gradcheck_attention(is_causal):
    q, k, v = rand(2, 7, 2, 4), rand(2, 7, 1, 4), rand(2, 7, 1, 5)
    fn = lambda q, k, v: nattn.attention(q, k, v, is_causal=is_causal)
    assert torch.autograd.gradcheck(fn, (q, k, v), **TOL)


def test_gradcheck_merge_attentions():
    # The merge runs in the library (float64 accumulation); its autograd formula is torch ops.
    # lse inputs are float32 by contract, so their gradient is checked in test_merge.py.
    outs = [rand(2, 3, 2, 4) for _ in range(3)]
    lses = [torch.randn(2, 3, 2, dtype=torch.float32) for _ in range(3)]

    def fn(*outs):
        out, _ = nattn.merge_attentions(list(outs), lses)
        return out
    assert torch.autograd.gradcheck(fn, tuple(outs), **TOL)
