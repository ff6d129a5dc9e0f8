"""Cross-attention (any number of keys) and placed boxes (SPEC.md "Placed boxes", "Dense
attention and cross-attention") on the reference backend, against references written from the
definitions: torch's own scaled_dot_product_attention for cross-attention, and the window rule
of SPEC.md evaluated on the global grid and clipped to the key box (na_reference.placed_mask)."""
import random

import pytest
import torch

import nattn
from na_reference import masked_attention, neighborhood_mask, placed_mask


def rand(*shape, dtype=torch.float64, requires_grad=True):
    return torch.randn(*shape, dtype=dtype).requires_grad_(requires_grad)


def grads(inputs, outputs, cotangents):
    return torch.autograd.grad(outputs, inputs, cotangents, retain_graph=True)


def sdpa(q, k, v, is_causal, scale=None):
    """torch's SDPA on heads-last tensors (kv heads repeated for grouped heads)."""
    group = q.shape[-2] // k.shape[-2]
    k, v = (x.repeat_interleave(group, dim=-2) for x in (k, v))
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=is_causal,
        scale=scale)
    return out.transpose(1, 2)


@pytest.mark.parametrize("trial", range(8))
def test_cross_attention_matches_sdpa(trial):
    rng = random.Random(torch.initial_seed() + trial)
    n = rng.randint(1, 19)
    nk = rng.choice([1, rng.randint(1, n), rng.randint(n, 25)])
    hkv = rng.choice([1, 2])
    hq = hkv * rng.choice([1, 3])
    causal = rng.random() < 0.5
    scale = rng.choice([None, 0.3])
    q, k, v = rand(2, n, hq, 6), rand(2, nk, hkv, 6), rand(2, nk, hkv, 5)
    out, lse = nattn.attention(q, k, v, is_causal=causal, scale=scale, return_lse=True,
                               backend="reference")
    ref = sdpa(q, k, v, causal, scale)
    _, ref_lse = masked_attention(q, k, v, None, scale, is_causal_dense=causal)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=1e-5)
    dout, dlse = torch.randn_like(out), torch.randn_like(lse)
    # Gradients through out and lse (the lse term against the masked reference's).
    ref_out2, ref_lse2 = masked_attention(q, k, v, None, scale, is_causal_dense=causal)
    for g, w in zip(grads((q, k, v), (out, lse), (dout, dlse)),
                    grads((q, k, v), (ref_out2, ref_lse2), (dout, dlse))):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-5)  # lse is float32
    for g, w in zip(grads((q, k, v), out, dout), grads((q, k, v), ref, dout)):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-5)  # lse is float32


def test_causal_cross_attention_is_top_left_aligned():
    # 4 queries, 6 keys: query i sees keys 0..i (torch's tril(ones(4, 6))); 6 queries, 3 keys:
    # queries 2..5 see all three keys.
    for n, nk in ((4, 6), (6, 3)):
        q, k = rand(1, n, 1, 4, requires_grad=False), rand(1, nk, 1, 4, requires_grad=False)
        v = torch.eye(nk, dtype=torch.float64)[None, :, None, :]  # value j = one-hot j
        out = nattn.attention(q, k, v, is_causal=True, backend="reference")[0, :, 0]
        seen = out > 0
        want = torch.tril(torch.ones(n, nk, dtype=torch.bool))
        assert torch.equal(seen, want), (n, nk, seen)


def random_placement(rng, rank):
    """A random placed problem: global extents, window, query box and key box per axis."""
    G, X, K, oq, ok, ks, st, dil, cz = ([] for _ in range(9))
    for _ in range(rank):
        g = rng.randint(2, 11)
        d = rng.choice([1, 1, 2]) if g >= 4 else 1
        k = rng.randint(2, g // d)
        causal = rng.random() < 0.3
        s = rng.randint(1, k)
        x = rng.randint(1, g)
        kx = rng.randint(1, g)
        G.append(g), X.append(x), K.append(kx), ks.append(k), st.append(s), dil.append(d)
        cz.append(causal)
        oq.append(rng.randint(0, g - x)), ok.append(rng.randint(0, g - kx))
    return G, X, K, oq, ok, ks, st, dil, cz


@pytest.mark.parametrize("trial", range(12))
def test_placed_boxes_match_the_definition(trial):
    rng = random.Random(torch.initial_seed() + 1000 * trial)
    rank = rng.randint(1, 3)
    G, X, K, oq, ok, ks, st, dil, cz = random_placement(rng, rank)
    hkv = rng.choice([1, 2])
    hq = hkv * rng.choice([1, 2])
    q, k, v = rand(2, *X, hq, 4), rand(2, *K, hkv, 4), rand(2, *K, hkv, 3)
    extra = rng.random() < 0.3
    ak, av = (rand(2, 2, hkv, 4), rand(2, 2, hkv, 3)) if extra else (None, None)
    out, lse = nattn.na_placed(q, k, v, ks, G, oq, ok, stride=st, dilation=dil, is_causal=cz,
                               additional_keys=ak, additional_values=av, return_lse=True,
                               backend="reference")
    mask = placed_mask(X, K, G, oq, ok, ks, st, dil, cz)
    ref, ref_lse = masked_attention(q, k, v, mask, None, ak, av)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=1e-5)
    inputs = (q, k, v) + ((ak, av) if extra else ())
    dout, dlse = torch.randn_like(out), torch.randn_like(lse)
    dlse = dlse.masked_fill(torch.isinf(lse), 0)  # -inf rows: lse has no gradient there
    for g, w in zip(grads(inputs, (out, lse), (dout, dlse)),
                    grads(inputs, (ref, ref_lse), (dout, dlse))):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-5)  # lse is float32


def test_query_without_keys_gets_zero_and_minus_inf():
    # Global axis 10, window 3: query 0 sees keys {0, 1, 2}; the key box is [5, 10).
    q, k, v = rand(1, 2, 1, 4), rand(1, 5, 1, 4), rand(1, 5, 1, 3)
    out, lse = nattn.na_placed(q, k, v, 3, 10, 0, 5, return_lse=True, backend="reference")
    assert torch.equal(out, torch.zeros_like(out))
    assert torch.equal(lse, torch.full_like(lse, float("-inf")))
    dq, dk, dv = grads((q, k, v), out, torch.randn_like(out))
    for g in (dq, dk, dv):
        assert torch.equal(g, torch.zeros_like(g))


@pytest.mark.parametrize("trial", range(6))
def test_slab_with_its_halo_equals_the_whole_grid(trial):
    # The halo-mode property: queries of a slab, keys of the slab plus every key its windows
    # reach, give the whole grid's rows for those queries.
    rng = random.Random(torch.initial_seed() + 77 * trial)
    rank = rng.randint(1, 3)
    G = [rng.randint(3, 9) for _ in range(rank)]
    ks = [rng.randint(2, g) for g in G]
    st = [rng.randint(1, k) for k in ks]
    cz = [rng.random() < 0.3 for _ in G]
    q, k, v = rand(1, *G, 2, 4), rand(1, *G, 2, 4), rand(1, *G, 2, 4)
    full, full_lse = nattn.na_placed(q, k, v, ks, G, stride=st, is_causal=cz, return_lse=True,
                                     backend="reference")
    a = rng.randrange(rank)
    lo = rng.randrange(G[a])
    hi = rng.randint(lo + 1, G[a])
    m = neighborhood_mask(G, ks, st, 1, cz).reshape(G + G)
    rows = [slice(None)] * rank
    rows[a] = slice(lo, hi)
    seen = m[tuple(rows)].reshape(-1, *G).any(0)  # keys the slab's windows reach
    idx = seen.nonzero()[:, a]
    klo, khi = int(idx.min()), int(idx.max()) + 1
    cut = lambda x, s, e: x.narrow(1 + a, s, e - s)
    out, lse = nattn.na_placed(cut(q, lo, hi), cut(k, klo, khi), cut(v, klo, khi), ks, G,
                               [lo if b == a else 0 for b in range(rank)],
                               [klo if b == a else 0 for b in range(rank)], stride=st,
                               is_causal=cz, return_lse=True, backend="reference")
    torch.testing.assert_close(out, cut(full, lo, hi), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(lse, cut(full_lse, lo, hi), atol=1e-6, rtol=1e-6)


def test_gradcheck_cross_and_placed():
    q, k, v = rand(1, 5, 2, 3), rand(1, 3, 1, 3), rand(1, 3, 1, 2)
    for causal in (False, True):
        assert torch.autograd.gradcheck(
            lambda q, k, v, c=causal: nattn.attention(q, k, v, is_causal=c, backend="reference"),
            (q, k, v))
    q, k, v = rand(1, 3, 2, 1, 3), rand(1, 4, 3, 1, 3), rand(1, 4, 3, 1, 2)
    assert torch.autograd.gradcheck(
        lambda q, k, v: nattn.na_placed(q, k, v, (3, 2), (6, 4), (1, 2), (2, 0),
                                        is_causal=(False, True), backend="reference"),
        (q, k, v))


PLACEMENT_ERRORS = [
    # (X, K, G, oq, ok, kernel, fragments)
    ((4,), (4,), (6,), (3,), (0,), 3,
     ["placement.query_origin[0] = 3 is invalid", "query box (extent[0] = 4)",
      "global_extent[0] = 6"]),
    ((4,), (5,), (6,), (0,), (2,), 3,
     ["placement.key_origin[0] = 2 is invalid", "key box (key_extent[0] = 5)"]),
    ((4,), (4,), (6,), (-1,), (0,), 3, ["placement.query_origin[0] = -1 is invalid"]),
    ((4,), (4,), (6,), (0,), (0,), 7,
     ["kernel_size[0] = 7 is invalid", "<= global_extent", "global_extent[0] = 6"]),
]


@pytest.mark.parametrize("case", range(len(PLACEMENT_ERRORS)))
def test_placement_errors_name_the_argument(case):
    X, K, G, oq, ok, kernel, fragments = PLACEMENT_ERRORS[case]
    q, k, v = rand(1, *X, 1, 4), rand(1, *K, 1, 4), rand(1, *K, 1, 4)
    with pytest.raises(ValueError) as info:
        nattn.na_placed(q, k, v, kernel, G, oq, ok, backend="reference")
    for f in fragments:
        assert f in str(info.value), (f, str(info.value))


def test_key_box_shape_must_match_values():
    q, k, v = rand(1, 4, 1, 4), rand(1, 5, 1, 4), rand(1, 4, 1, 4)
    with pytest.raises(ValueError, match=r"v.shape = \[1, 4, 1, 4\] is invalid: expected "
                                         r"\[1, 5, 1, 4\]"):
        nattn.na_placed(q, k, v, 3, 8, 0, 0, backend="reference")
