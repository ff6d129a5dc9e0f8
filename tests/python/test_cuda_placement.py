"""Cross-attention and placed boxes (SPEC.md "Placed boxes") on the CUDA backend, against the
float64 references written from SPEC.md (na_reference.placed_mask, torch's SDPA). The generic
sm80 and sm90 kernels implement placement (forced and asserted through nattn.explain below)."""
import random

import pytest
import torch

import nattn
from na_reference import masked_attention, placed_mask

pytestmark = pytest.mark.cuda

# (output, gradient) tolerances. float64 (the generic kernels): outputs exact to 1e-10; the
# backward reads the forward's lse, which is float32 by the API (SPEC.md), so gradients carry
# its rounding (~1e-7 relative), as in the CPU tests (test_placement.py).
TOL = {torch.float16: (5e-3, 2e-2), torch.bfloat16: (3e-2, 6e-2), torch.float32: (2e-3, 5e-3),
       torch.float64: (1e-10, 1e-5)}


def rand(*shape, dtype):
    return torch.randn(*shape, dtype=dtype, device="cuda", requires_grad=True)


def check(out, lse, ref, ref_lse, inputs, dtype, backward=True):
    tol, gtol = TOL[dtype]
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    torch.testing.assert_close(lse, ref_lse, atol=1e-3, rtol=1e-3)
    if not backward:
        return
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


def sm80_head_dims():
    return sorted({r.head_dim for r in nattn.kernel_configs()
                   if r.family == "sm80" and r.built and r.role == "forward"})


def sm80_backward_head_dims():
    """Head dims of the built sm80 backward rows (the fused backward takes head dims up to 128;
    a forced sm80 backward past them is refused with the reason, not run)."""
    return sorted({r.head_dim for r in nattn.kernel_configs()
                   if r.family == "sm80" and r.built and r.role == "backward_dq"})


def sm80_runs_backward(d):
    return any(d <= x for x in sm80_backward_head_dims())


def needs_sm80():
    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("the sm80 family needs compute capability 8.0")
    if not sm80_head_dims():
        pytest.skip("no sm80 rows are built into this library")


def test_cuda_cross_attention_runs_fused(cuda_backend):
    """Cross-attention (a placed problem) is not handed to the generic kernels: forward and
    backward run on sm90 on a Hopper device (else sm80)."""
    needs_sm80()
    d = sm80_head_dims()[0]
    q = torch.randn(1, 96, 2, d, device="cuda", dtype=torch.float16)
    k = torch.randn(1, 17, 2, d, device="cuda", dtype=torch.float16)
    hopper = torch.cuda.get_device_capability() == (9, 0)
    for backward in (False, True):
        plan = nattn.explain(q, k, k, dense=True, backward=backward)
        assert plan.family == ("sm90" if hopper else "sm80"), plan


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


# ---- The sm80 family forced on placed problems (cross-attention and boxes of a global grid).

def sm80_plan(backward, q, k, v, **kw):
    plan = nattn.explain(q, k, v, backward=backward, family="sm80", **kw)
    assert plan.family == "sm80", plan
    return plan


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,nk,causal,hq,hkv", [
    (96, 17, False, 4, 2), (96, 17, True, 4, 2), (17, 130, True, 2, 1), (17, 130, False, 2, 1),
    (1, 40, False, 2, 2), (65, 1, True, 3, 1), (300, 77, False, 2, 1), (33, 1000, True, 4, 4),
    (1000, 333, True, 2, 2)])
def test_cuda_sm80_cross_attention(cuda_backend, dtype, n, nk, causal, hq, hkv):
    needs_sm80()
    for d in sm80_head_dims():
        q, k, v = rand(2, n, hq, d, dtype=dtype), rand(2, nk, hkv, d, dtype=dtype), \
            rand(2, nk, hkv, d, dtype=dtype)
        backward = sm80_runs_backward(d)  # (head dims past the backward rows: forward only)
        for b in (False, True) if backward else (False,):
            sm80_plan(b, q.detach(), k.detach(), v.detach(), dense=True, is_causal=causal)
        with nattn.kernel_choice(family="sm80"):  # a forced family never falls back
            out, lse = nattn.attention(q, k, v, is_causal=causal, return_lse=True,
                                       backend="cuda")
            ref, ref_lse = masked_attention(q, k, v, None, is_causal_dense=causal)
            check(out, lse, ref, ref_lse, (q, k, v), dtype, backward)


def random_placed(rng, rank, allow_empty):
    """A random placed problem: per axis (G, X, K, oq, ok, kernel, stride, dilation, causal).
    With allow_empty the key box may miss some queries' windows (lse -inf rows)."""
    axes = []
    for _ in range(rank):
        g = rng.randint(4, {1: 300, 2: 40, 3: 10}[rank])
        dd = rng.choice([1, 1, 2, 3]) if g >= 6 else 1
        k = rng.randint(2, max(2, min(g // dd, {1: 40, 2: 9, 3: 5}[rank])))
        x, kx = rng.randint(1, g), rng.randint(1, g)
        oq, ok = rng.randint(0, g - x), rng.randint(0, g - kx)
        if not allow_empty and rng.random() < 0.7:
            kx, ok = g, 0  # a key box holding every window (the halo shape)
        axes.append((g, x, kx, oq, ok, k, rng.randint(1, k), dd, rng.random() < 0.3))
    return [list(t) for t in zip(*axes)]


@pytest.mark.parametrize("trial", range(24))
def test_cuda_sm80_placed_boxes(cuda_backend, trial):
    needs_sm80()
    rng = random.Random(torch.initial_seed() * 31 + trial)
    dtype = rng.choice([torch.float16, torch.bfloat16])
    rank = 1 + trial % 3
    extra = rng.random() < 0.3
    G, X, K, oq, ok, ks, st, dil, cz = random_placed(rng, rank, allow_empty=not extra
                                                     or rng.random() < 0.5)
    d = rng.choice(sm80_head_dims())
    hkv = rng.choice([1, 2])
    hq = hkv * rng.choice([1, 2, 3])
    b = rng.choice([1, 2])
    q, k, v = rand(b, *X, hq, d, dtype=dtype), rand(b, *K, hkv, d, dtype=dtype), \
        rand(b, *K, hkv, d, dtype=dtype)
    na = rng.randint(1, 70)
    ak, av = (rand(b, na, hkv, d, dtype=dtype), rand(b, na, hkv, d, dtype=dtype)) if extra \
        else (None, None)
    kw = dict(stride=st, dilation=dil, is_causal=cz, additional_keys=ak, additional_values=av)
    backward = sm80_runs_backward(d)  # (head dims past the backward rows: forward only)
    for b in (False, True) if backward else (False,):
        sm80_plan(b, q.detach(), k.detach(), v.detach(), kernel_size=ks, global_extent=G,
                  query_origin=oq, key_origin=ok, **kw)
    with nattn.kernel_choice(family="sm80"):  # a forced family never falls back
        out, lse = nattn.na_placed(q, k, v, ks, G, oq, ok, return_lse=True, backend="cuda", **kw)
        ref, ref_lse = masked_attention(q, k, v, placed_mask(X, K, G, oq, ok, ks, st, dil, cz),
                                        None, ak, av)
        check(out, lse, ref, ref_lse, (q, k, v) + ((ak, av) if extra else ()), dtype, backward)


def test_cuda_sm80_queries_without_keys(cuda_backend):
    """Queries whose windows miss the key box: out = 0, lse = -inf, dq = 0 exactly, and the
    other queries' results and the key gradients as the reference (SPEC.md)."""
    needs_sm80()
    d = sm80_head_dims()[0]
    # 1-D, causal k=3 on a grid of 200: keys 0..49; queries 40..199 (those past 51 see none).
    G, X, K, oq, ok = [200], [160], [50], [40], [0]
    q, k, v = (rand(2, X[0], 2, d, dtype=torch.float16), rand(2, K[0], 1, d, dtype=torch.float16),
               rand(2, K[0], 1, d, dtype=torch.float16))
    with nattn.kernel_choice(family="sm80"):
        out, lse = nattn.na_placed(q, k, v, 3, G, oq, ok, is_causal=True, return_lse=True,
                                   backend="cuda")
        empty = torch.arange(X[0], device="cuda") + oq[0] >= K[0] + 2  # window [i-2, i] misses 0..49
        assert torch.isneginf(lse[:, empty]).all() and (out[:, empty] == 0).all()
        assert torch.isfinite(lse[:, ~empty]).all()
        ref, ref_lse = masked_attention(q, k, v, placed_mask(X, K, G, oq, ok, 3, 1, 1, True))
        check(out, lse, ref, ref_lse, (q, k, v), torch.float16)
        dq, = torch.autograd.grad(out, q, torch.randn_like(out))
        assert (dq[:, empty] == 0).all()


# ---- The sm90 family (Hopper forward) forced on placed problems: forward only (no sm90
# backward yet), against the same SPEC-written masks.

def needs_sm90():
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the sm90 family needs an sm90 device")
    if not [c for c in nattn.kernel_configs() if c.family == "sm90" and c.built]:
        pytest.skip("no sm90 rows are built into this library")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,nk,causal,hq,hkv,d", [
    (96, 17, False, 4, 2, 64), (96, 17, True, 4, 2, 128), (17, 130, True, 2, 1, 32),
    (1, 40, False, 2, 2, 64), (65, 1, True, 3, 1, 128), (300, 77, False, 2, 1, 256),
    (33, 1000, True, 4, 4, 64), (1000, 333, True, 2, 2, 128), (4096, 512, False, 8, 8, 128)])
def test_cuda_sm90_cross_attention(cuda_backend, dtype, n, nk, causal, hq, hkv, d):
    """Cross-attention (Nk != Nq) runs on the Hopper forward by default and matches SDPA's
    convention (causal: top-left aligned)."""
    needs_sm90()
    q, k, v = rand(2, n, hq, d, dtype=dtype), rand(2, nk, hkv, d, dtype=dtype), rand(2, nk, hkv, d, dtype=dtype)
    with torch.no_grad():
        plan = nattn.explain(q, k, v, dense=True, is_causal=causal)
        assert plan.family == "sm90", plan
        out, lse = nattn.attention(q, k, v, is_causal=causal, return_lse=True, backend="cuda")
        ref, ref_lse = masked_attention(q.double(), k.double(), v.double(), None, is_causal_dense=causal)
    tol = TOL[dtype][0]
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)
    torch.testing.assert_close(lse.double(), ref_lse.double(), atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("trial", range(30))
def test_cuda_sm90_placed_boxes(cuda_backend, trial):
    """Random placed problems (halo-like key boxes and disjoint ones, queries without keys,
    ranks 1-3, stride/dilation/causal, grouped heads, additional keys) forced on sm90."""
    needs_sm90()
    rng = random.Random(torch.initial_seed() * 37 + trial)
    dtype = rng.choice([torch.float16, torch.bfloat16])
    rank = 1 + trial % 3
    extra = rng.random() < 0.3
    G, X, K, oq, ok, ks, st, dil, cz = random_placed(rng, rank, allow_empty=not extra or rng.random() < 0.5)
    d = rng.choice([32, 64, 128])
    hkv = rng.choice([1, 2])
    hq = hkv * rng.choice([1, 2, 3])
    b = 1 if rank == 3 else rng.choice([1, 2])
    q, k, v = rand(b, *X, hq, d, dtype=dtype), rand(b, *K, hkv, d, dtype=dtype), rand(b, *K, hkv, d, dtype=dtype)
    na = rng.randint(1, 70)
    ak, av = (rand(b, na, hkv, d, dtype=dtype), rand(b, na, hkv, d, dtype=dtype)) if extra else (None, None)
    kw = dict(stride=st, dilation=dil, is_causal=cz, additional_keys=ak, additional_values=av)
    with torch.no_grad():
        if rank == 1 and dil[0] > 2:  # a 1-D box of 128 keys spans 128 x dilation > 256 elements
            with pytest.raises(NotImplementedError, match="TMA limit of 256 elements"):
                nattn.explain(q, k, v, kernel_size=ks, global_extent=G, query_origin=oq, key_origin=ok,
                              family="sm90", **kw)
            plan = nattn.explain(q, k, v, kernel_size=ks, global_extent=G, query_origin=oq, key_origin=ok, **kw)
            assert plan.family == "sm80", plan
            return
        plan = nattn.explain(q, k, v, kernel_size=ks, global_extent=G, query_origin=oq, key_origin=ok,
                             family="sm90", **kw)
        assert plan.family == "sm90", plan
        with nattn.kernel_choice(family="sm90"):  # a forced family never falls back
            out, lse = nattn.na_placed(q, k, v, ks, G, oq, ok, return_lse=True, backend="cuda", **kw)
        ref, ref_lse = masked_attention(q, k, v, placed_mask(X, K, G, oq, ok, ks, st, dil, cz), None, ak, av)
    tol = TOL[dtype][0]
    torch.testing.assert_close(out, ref.to(out.dtype), atol=tol, rtol=tol)
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite), "queries without keys must have lse = -inf"
    torch.testing.assert_close(lse[finite], ref_lse[finite].to(lse.dtype), atol=1e-3, rtol=1e-3)
