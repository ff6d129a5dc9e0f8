"""Cross-attention and placed boxes (SPEC.md "Placed boxes") on the CUDA backend, against the
float64 references written from SPEC.md (na_reference.placed_mask, torch's SDPA). The generic
kernels implement placement; the fused families (sm80, sm90) refuse it with a reason."""
import random

import pytest
import torch

import nattn
from na_reference import masked_attention, placed_mask

pytestmark = pytest.mark.cuda

TOL = {torch.float16: (5e-3, 2e-2), torch.bfloat16: (3e-2, 6e-2), torch.float32: (2e-3, 5e-3),
       torch.float64: (1e-10, 1e-9)}


def rand(*shape, dtype):
    return torch.randn(*shape, dtype=dtype, device="cuda", requires_grad=True)


def check(out, lse, ref, ref_lse, inputs, dtype):
    tol, gtol = TOL[dtype]
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    torch.testing.assert_close(lse, ref_lse, atol=1e-3, rtol=1e-3)
    dout, dlse = torch.randn_like(out), torch.randn_like(lse).masked_fill(torch.isinf(lse), 0)
    got = torch.autograd.grad((out, lse), inputs, (dout, dlse), retain_graph=True)
    want = torch.autograd.grad((ref, ref_lse), inputs, (dout, dlse), retain_graph=True)
    for i, (g, w) in enumerate(zip(got, want)):
        assert torch.isfinite(g).all(), f"input {i}"
        torch.testing.assert_close(g, w, atol=gtol, rtol=gtol, msg=f"gradient of input {i}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("n,nk,causal,hq,hkv,d", [
    (96, 17, False, 4, 2, 64), (96, 17, True, 4, 2, 64), (17, 130, True, 2, 1, 128),
    (1, 40, False, 2, 2, 32), (65, 1, True, 3, 1, 64)])
def test_cuda_cross_attention(cuda_backend, dtype, n, nk, causal, hq, hkv, d):
    q, k, v = rand(2, n, hq, d, dtype=dtype), rand(2, nk, hkv, d, dtype=dtype), \
        rand(2, nk, hkv, d, dtype=dtype)
    out, lse = nattn.attention(q, k, v, is_causal=causal, return_lse=True, backend="cuda")
    ref, ref_lse = masked_attention(q, k, v, None, is_causal_dense=causal)
    check(out, lse, ref, ref_lse, (q, k, v), dtype)


def test_cuda_cross_attention_plan_names_the_refusals(cuda_backend):
    q = torch.randn(1, 96, 2, 64, device="cuda", dtype=torch.float16)
    k = torch.randn(1, 17, 2, 64, device="cuda", dtype=torch.float16)
    plan = nattn.explain(q, k, k, dense=True)
    assert plan.family == "generic", plan
    for f in plan.families:
        if f.family in ("sm80", "sm90"):
            assert "placed" in f.reason, f


@pytest.mark.parametrize("trial", range(10))
def test_cuda_placed_boxes(cuda_backend, trial):
    rng = random.Random(torch.initial_seed() + trial)
    dtype = rng.choice([torch.float16, torch.bfloat16, torch.float32, torch.float64])
    rank = rng.randint(1, 3)
    G, X, K, oq, ok, ks, st, dil, cz = ([] for _ in range(9))
    for _ in range(rank):
        g = rng.randint(4, 24 if rank < 3 else 10)
        dd = rng.choice([1, 1, 2])
        k = rng.randint(2, g // dd)
        x, kx = rng.randint(1, g), rng.randint(1, g)
        G.append(g), X.append(x), K.append(kx), ks.append(k), st.append(rng.randint(1, k))
        dil.append(dd), cz.append(rng.random() < 0.3)
        oq.append(rng.randint(0, g - x)), ok.append(rng.randint(0, g - kx))
    hkv = rng.choice([1, 2])
    hq = hkv * rng.choice([1, 2])
    q, k, v = rand(2, *X, hq, 32, dtype=dtype), rand(2, *K, hkv, 32, dtype=dtype), \
        rand(2, *K, hkv, 32, dtype=dtype)
    extra = rng.random() < 0.3
    ak, av = (rand(2, 5, hkv, 32, dtype=dtype), rand(2, 5, hkv, 32, dtype=dtype)) if extra \
        else (None, None)
    out, lse = nattn.na_placed(q, k, v, ks, G, oq, ok, stride=st, dilation=dil, is_causal=cz,
                               additional_keys=ak, additional_values=av, return_lse=True,
                               backend="cuda")
    ref, ref_lse = masked_attention(q, k, v, placed_mask(X, K, G, oq, ok, ks, st, dil, cz),
                                    None, ak, av)
    check(out, lse, ref, ref_lse, (q, k, v) + ((ak, av) if extra else ()), dtype)
