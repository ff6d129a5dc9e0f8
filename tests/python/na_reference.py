"""An independent oracle: neighborhood attention as dense attention with a boolean mask.

The mask is written straight from SPEC.md's pseudo-code ("The neighborhood of query index i
along one axis of extent L"), not from nattn's code. Everything else is plain torch autograd,
so gradients of the oracle come for free.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch


def axis_keys(i: int, L: int, k: int, s: int = 1, d: int = 1, causal: bool = False) -> list[int]:
    """Axis indices of the keys query i attends to along one axis (SPEC.md, verbatim)."""
    g = i % d
    p = i // d
    Lg = L // d + (1 if g < L % d else 0)
    wl = k // 2
    wr = k // 2 + (k % 2) - 1
    if not causal:
        leader = min((p // s) * s + s // 2, Lg - 1)
        start = max(leader - wl, 0)
        if leader + wr >= Lg:
            start += Lg - wr - leader - 1
        end = start + k
    else:
        leader = min((p // s) * s + s - 1, Lg - 1)
        start = max(leader - (k - 1), 0)
        end = min(p + 1, Lg)
    return [j * d + g for j in range(start, end)]


def axis_mask(L: int, k: int, s: int = 1, d: int = 1, causal: bool = False) -> torch.Tensor:
    """[L, L] bool, [query, key]."""
    m = torch.zeros(L, L, dtype=torch.bool)
    for i in range(L):
        m[i, axis_keys(i, L, k, s, d, causal)] = True
    return m


def _per_axis(v, rank):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * rank


def neighborhood_mask(extents: Sequence[int], kernel_size, stride=1, dilation=1,
                      is_causal=False) -> torch.Tensor:
    """[N, N] bool over flattened (row-major) tokens: the Cartesian product of axis masks."""
    r = len(extents)
    ks, st, dil, cz = (_per_axis(x, r) for x in (kernel_size, stride, dilation, is_causal))
    mask = torch.ones(1, 1, dtype=torch.bool)
    for a in range(r):
        m = axis_mask(extents[a], ks[a], st[a], dil[a], cz[a])
        # Outer product over (query, key) pairs: [Nq, Nk] x [Lq, Lk] -> [Nq*Lq, Nk*Lk].
        mask = (mask[:, None, :, None] & m[None, :, None, :]).reshape(
            mask.shape[0] * extents[a], mask.shape[1] * extents[a])
    return mask


def placed_axis_mask(X: int, K: int, G: int, oq: int, ok: int, k: int, s: int = 1, d: int = 1,
                     causal: bool = False) -> torch.Tensor:
    """[X, K] bool (SPEC.md "Placed boxes"): local query i is global query oq + i of an axis of
    extent G; it attends to the keys of its window that lie in the key box [ok, ok + K)."""
    m = torch.zeros(X, K, dtype=torch.bool)
    for i in range(X):
        for j in axis_keys(oq + i, G, k, s, d, causal):
            if ok <= j < ok + K:
                m[i, j - ok] = True
    return m


def placed_mask(q_extents, k_extents, global_extents, q_origin, k_origin, kernel_size,
                stride=1, dilation=1, is_causal=False) -> torch.Tensor:
    """[Nq, Nk] bool over flattened query-box and key-box tokens: the product of axis masks."""
    r = len(q_extents)
    ks, st, dil, cz = (_per_axis(x, r) for x in (kernel_size, stride, dilation, is_causal))
    mask = torch.ones(1, 1, dtype=torch.bool)
    for a in range(r):
        m = placed_axis_mask(q_extents[a], k_extents[a], global_extents[a], q_origin[a],
                             k_origin[a], ks[a], st[a], dil[a], cz[a])
        mask = (mask[:, None, :, None] & m[None, :, None, :]).reshape(
            mask.shape[0] * m.shape[0], mask.shape[1] * m.shape[1])
    return mask


def masked_attention(q, k, v, mask: Optional[torch.Tensor], scale=None, ak=None, av=None,
                     is_causal_dense: bool = False):
    """Heads-last q [B, *X, Hq, D], k [B, *K, Hkv, D], v [B, *K, Hkv, Dv]; mask [Nq, Nk] (None:
    every key; is_causal_dense: key j <= query i). Returns (out [B, *X, Hq, Dv] in q's dtype,
    lse [B, *X, Hq] float32), computed in float64. Additional keys/values [B, Na, Hkv, *] are
    attended by every query. A query with no key gets out = 0, lse = -inf (SPEC.md)."""
    B, X, Hq, D = q.shape[0], q.shape[1:-2], q.shape[-2], q.shape[-1]
    Hkv, Dv = k.shape[-2], v.shape[-1]
    N, Nk = math.prod(X), math.prod(k.shape[1:-2])
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    group = Hq // Hkv
    qf = q.double().reshape(B, N, Hq, D).transpose(1, 2)  # [B, Hq, N, D]
    kf = k.double().reshape(B, Nk, Hkv, D).transpose(1, 2).repeat_interleave(group, dim=1)
    vf = v.double().reshape(B, Nk, Hkv, Dv).transpose(1, 2).repeat_interleave(group, dim=1)
    if mask is None:
        mask = torch.ones(N, Nk, dtype=torch.bool)
        if is_causal_dense:
            mask = torch.tril(mask)
    if ak is not None:
        kf = torch.cat([kf, ak.double().transpose(1, 2).repeat_interleave(group, dim=1)], dim=2)
        vf = torch.cat([vf, av.double().transpose(1, 2).repeat_interleave(group, dim=1)], dim=2)
        mask = torch.cat([mask, torch.ones(N, ak.shape[1], dtype=torch.bool)], dim=1)
    mask = mask.to(q.device)
    some = mask.any(dim=-1)  # [N]: rows with at least one key
    scores = (qf @ kf.transpose(-1, -2)) * scale
    lse = torch.logsumexp(scores.masked_fill(~mask, float("-inf")), dim=-1)  # [B, Hq, N]
    # Empty rows: a finite softmax (scores kept) times 0, so that autograd stays finite there.
    scores = scores.masked_fill(~mask & some[:, None], float("-inf"))
    out = (torch.softmax(scores, dim=-1) @ vf) * some[:, None].double()  # [B, Hq, N, Dv]
    out = out.transpose(1, 2).reshape(B, *X, Hq, Dv).to(q.dtype)
    lse = lse.transpose(1, 2).reshape(B, *X, Hq).float()
    return out, lse


def reference_na(q, k, v, kernel_size, stride=1, dilation=1, is_causal=False, scale=None,
                 additional_keys=None, additional_values=None):
    X = tuple(q.shape[1:-2])
    mask = neighborhood_mask(X, kernel_size, stride, dilation, is_causal)
    return masked_attention(q, k, v, mask, scale, additional_keys, additional_values)
