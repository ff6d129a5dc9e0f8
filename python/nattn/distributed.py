"""Multi-GPU neighborhood attention on torch.distributed (NCCL on GPUs, gloo on CPU).

Every rank of `group` holds a spatial shard of the same problem: q/k/v [B, *local X, H, D], the
grid split along one spatial axis (`shard_axis`) into contiguous slabs in rank order; slabs may
differ in size. Calls return the rank's shard of the output (and lse).

Modes (docs: ../shared/DISTRIBUTED.md for the arithmetic):
- "heads" (Ulysses): an all-to-all gives each rank every token of H/P heads, the single-device
  kernels run, a second all-to-all returns the output to the slabs. Bit-identical to one
  device. Needs Hq and Hkv divisible by P.
- "halo": each rank receives from the ranks that own them only the key/value rows its queries'
  windows reach (SPEC.md's window rule on the global grid, multi-hop when a halo spans several
  slabs) and runs the placed-box problem (SPEC.md "Placed boxes"). Backward: the key box's
  gradients are sent back to their owners and summed in rank order (deterministic).
- "allgather" (baseline): every rank gathers all keys/values, then runs the placed problem.
- "auto": halo when it moves fewer bytes than heads mode (or heads mode is impossible).

Additional keys/values are the same on every rank (replicated); their gradients are summed
over ranks in the backward, so each rank receives the gradient of the whole problem.

The collectives are torch.library custom ops with autograd formulas, so torch.compile traces
them as calls; the process group travels as its name.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

from ._checks import per_axis
from .functional import na_placed

_MODES = ("auto", "heads", "halo", "allgather")


def _group(name: str):
    from torch.distributed.distributed_c10d import _resolve_process_group
    return _resolve_process_group(name)


def _group_name(group) -> str:
    group = group if group is not None else dist.group.WORLD
    return group.group_name


# ---- Heads mode: "slab of every head" <-> "every token of H/P heads" ------------------------

def _scatter_heads(x: Tensor, dim: int, sizes: List[int], group: str) -> Tensor:
    """[.., local slab along dim, .., H, *] -> [.., whole axis along dim, .., H/P, *]."""
    P, r = len(sizes), dist.get_rank(_group(group))
    H = x.shape[-2]
    xm = x.movedim(dim, 0)  # [slab, .., H, C]
    parts = xm.unflatten(-2, (P, H // P)).movedim(-3, 0)  # [P, slab, .., H/P, C]
    send = parts.contiguous().flatten(0, 1)
    recv = x.new_empty((sum(sizes),) + tuple(send.shape[1:]))
    dist.all_to_all_single(recv, send, [int(s) for s in sizes], [sizes[r]] * P,
                           group=_group(group))
    return recv.movedim(0, dim)


def _gather_heads(x: Tensor, dim: int, sizes: List[int], group: str) -> Tensor:
    """The inverse of _scatter_heads."""
    P, r = len(sizes), dist.get_rank(_group(group))
    xm = x.movedim(dim, 0).contiguous()  # [whole axis, .., H/P, C]
    recv = x.new_empty((P * sizes[r],) + tuple(xm.shape[1:]))
    dist.all_to_all_single(recv, xm, [sizes[r]] * P, [int(s) for s in sizes],
                           group=_group(group))
    parts = recv.unflatten(0, (P, sizes[r]))  # [P, slab, .., H/P, C]
    return parts.movedim(0, -3).flatten(-3, -2).movedim(0, dim)


@torch.library.custom_op("nattn::dist_scatter_heads", mutates_args=())
def dist_scatter_heads(x: Tensor, dim: int, sizes: List[int], group: str) -> Tensor:
    return _scatter_heads(x, dim, sizes, group)


@dist_scatter_heads.register_fake
def _(x, dim, sizes, group):
    shape = list(x.shape)
    shape[dim], shape[-2] = sum(sizes), shape[-2] // len(sizes)
    return x.new_empty(shape)


@torch.library.custom_op("nattn::dist_gather_heads", mutates_args=())
def dist_gather_heads(x: Tensor, dim: int, sizes: List[int], group: str) -> Tensor:
    return _gather_heads(x, dim, sizes, group)


@dist_gather_heads.register_fake
def _(x, dim, sizes, group):
    shape = list(x.shape)
    shape[dim], shape[-2] = sizes[dist.get_rank(_group(group))], shape[-2] * len(sizes)
    return x.new_empty(shape)


def _save_layout(ctx, inputs, output):
    _, ctx.dim, ctx.sizes, ctx.group = inputs


dist_scatter_heads.register_autograd(
    lambda ctx, g: (dist_gather_heads(g.contiguous(), ctx.dim, ctx.sizes, ctx.group), None, None,
                    None), setup_context=_save_layout)
dist_gather_heads.register_autograd(
    lambda ctx, g: (dist_scatter_heads(g.contiguous(), ctx.dim, ctx.sizes, ctx.group), None, None,
                    None), setup_context=_save_layout)


@torch.library.custom_op("nattn::dist_sum_gradients", mutates_args=())
def dist_sum_gradients(x: Tensor, group: str) -> Tensor:
    """Identity; its backward sums the gradient over the ranks (inputs replicated on every rank)."""
    return x.clone()


@dist_sum_gradients.register_fake
def _(x, group):
    return torch.empty_like(x)


def _sum_backward(ctx, g):
    g = g.contiguous().clone()
    dist.all_reduce(g, group=_group(ctx.group))
    return g, None


dist_sum_gradients.register_autograd(
    _sum_backward, setup_context=lambda ctx, inputs, output: setattr(ctx, "group", inputs[1]))


# ---- Halo mode: rows of other ranks' slabs ---------------------------------------------------

def _exchange(x: Tensor, dim: int, owned: List[int], boxes: List[int], group: str,
              reverse: bool) -> Tensor:
    """Forward (reverse=False): x is the rank's slab [owned[r], owned[r+1]) along dim; returns
    its key box [boxes[2r], boxes[2r+1]) assembled from the owners' slabs. Reverse: x is the key
    box (a gradient); returns the slab with every rank's rows of it summed in rank order."""
    pg = _group(group)
    P, r = len(owned) - 1, dist.get_rank(pg)

    def overlap(box_rank, slab_rank):  # global rows of box_rank's key box owned by slab_rank
        lo = max(boxes[2 * box_rank], owned[slab_rank])
        hi = min(boxes[2 * box_rank + 1], owned[slab_rank + 1])
        return lo, hi

    ops, recvs = [], {}
    if not reverse:
        for s in range(P):  # rows of my slab that rank s's box needs
            lo, hi = overlap(s, r)
            if s != r and hi > lo:
                ops.append(dist.P2POp(dist.isend, x.narrow(dim, lo - owned[r], hi - lo)
                                      .contiguous(), s, pg))
        for s in range(P):  # rows of my box that rank s owns
            lo, hi = overlap(r, s)
            if s != r and hi > lo:
                shape = list(x.shape)
                shape[dim] = hi - lo
                recvs[s] = x.new_empty(shape)
                ops.append(dist.P2POp(dist.irecv, recvs[s], s, pg))
    else:
        for s in range(P):  # my box's rows that rank s owns: back to s
            lo, hi = overlap(r, s)
            if s != r and hi > lo:
                ops.append(dist.P2POp(dist.isend, x.narrow(dim, lo - boxes[2 * r], hi - lo)
                                      .contiguous(), s, pg))
        for s in range(P):  # rank s's box rows that I own: their gradients
            lo, hi = overlap(s, r)
            if s != r and hi > lo:
                shape = list(x.shape)
                shape[dim] = hi - lo
                recvs[s] = x.new_empty(shape)
                ops.append(dist.P2POp(dist.irecv, recvs[s], s, pg))
    if ops:
        for req in dist.batch_isend_irecv(ops):
            req.wait()
    if not reverse:
        pieces = []
        for s in range(P):
            lo, hi = overlap(r, s)
            if hi > lo:
                pieces.append(x.narrow(dim, lo - owned[r], hi - lo) if s == r else recvs[s])
        return torch.cat(pieces, dim)
    shape = list(x.shape)
    shape[dim] = owned[r + 1] - owned[r]
    out = x.new_zeros(shape)
    for s in range(P):  # fixed order: deterministic sums
        lo, hi = overlap(s, r)
        if hi <= lo:
            continue
        part = x.narrow(dim, lo - boxes[2 * r], hi - lo) if s == r else recvs[s]
        out.narrow(dim, lo - owned[r], hi - lo).add_(part)
    return out


@torch.library.custom_op("nattn::dist_halo_gather", mutates_args=())
def dist_halo_gather(x: Tensor, dim: int, owned: List[int], boxes: List[int],
                     group: str) -> Tensor:
    return _exchange(x, dim, owned, boxes, group, reverse=False)


@dist_halo_gather.register_fake
def _(x, dim, owned, boxes, group):
    r = dist.get_rank(_group(group))
    shape = list(x.shape)
    shape[dim] = boxes[2 * r + 1] - boxes[2 * r]
    return x.new_empty(shape)


@torch.library.custom_op("nattn::dist_halo_scatter_add", mutates_args=())
def dist_halo_scatter_add(x: Tensor, dim: int, owned: List[int], boxes: List[int],
                          group: str) -> Tensor:
    return _exchange(x, dim, owned, boxes, group, reverse=True)


@dist_halo_scatter_add.register_fake
def _(x, dim, owned, boxes, group):
    r = dist.get_rank(_group(group))
    shape = list(x.shape)
    shape[dim] = owned[r + 1] - owned[r]
    return x.new_empty(shape)


def _save_exchange(ctx, inputs, output):
    _, ctx.dim, ctx.owned, ctx.boxes, ctx.group = inputs


dist_halo_gather.register_autograd(
    lambda ctx, g: (dist_halo_scatter_add(g.contiguous(), ctx.dim, ctx.owned, ctx.boxes,
                                          ctx.group), None, None, None, None),
    setup_context=_save_exchange)
dist_halo_scatter_add.register_autograd(
    lambda ctx, g: (dist_halo_gather(g.contiguous(), ctx.dim, ctx.owned, ctx.boxes, ctx.group),
                    None, None, None, None),
    setup_context=_save_exchange)


# ---- Window arithmetic (SPEC.md) ------------------------------------------------------------

def _group_window(p: int, Lg: int, k: int, s: int, causal: bool) -> Tuple[int, int]:
    """SPEC.md's window of group position p in a group of length Lg: [start, end)."""
    if causal:
        leader = min((p // s) * s + s - 1, Lg - 1)
        return max(leader - (k - 1), 0), min(p + 1, Lg)
    wl, wr = k // 2, k // 2 + (k % 2) - 1
    leader = min((p // s) * s + s // 2, Lg - 1)
    start = max(leader - wl, 0)
    if leader + wr >= Lg:
        start += Lg - wr - leader - 1
    return start, start + k


def key_range(lo: int, hi: int, L: int, k: int, s: int = 1, d: int = 1,
              causal: bool = False) -> Tuple[int, int]:
    """The smallest index range [klo, khi) of an axis of extent L holding every key of the
    windows of queries lo..hi-1 (hi > lo). Window ends are monotone in the position within a
    dilation group, so each group's first and last query of the range bound it."""
    klo, khi = L, 0
    for g in range(d):
        Lg = L // d + (1 if g < L % d else 0)
        first = max((lo - g + d - 1) // d, 0)  # group positions inside [lo, hi)
        last = min((hi - 1 - g) // d, Lg - 1) if hi - 1 >= g else -1
        if last < first:
            continue
        klo = min(klo, _group_window(first, Lg, k, s, causal)[0] * d + g)
        khi = max(khi, (_group_window(last, Lg, k, s, causal)[1] - 1) * d + g + 1)
    return klo, khi


def _bytes_per_rank(mode: str, owned: List[int], boxes: List[int], P: int, tokens_other: int,
                    q_row: int, kv_row: int, o_row: int) -> float:
    """Forward bytes a rank sends (the most of any rank); rows along the split axis, each of
    tokens_other tokens of q_row/kv_row/o_row bytes."""
    if mode == "heads":
        worst = max(owned[r + 1] - owned[r] for r in range(P))
        return worst * tokens_other * (q_row + 2 * kv_row + o_row) * (P - 1) / P
    if mode == "halo":
        sent = [0] * P
        for r in range(P):
            for s in range(P):
                lo, hi = max(boxes[2 * r], owned[s]), min(boxes[2 * r + 1], owned[s + 1])
                if s != r and hi > lo:
                    sent[s] += hi - lo
        return max(sent) * tokens_other * 2 * kv_row
    worst = max(owned[r + 1] - owned[r] for r in range(P))
    return worst * tokens_other * 2 * kv_row * (P - 1)


# ---- The calls ------------------------------------------------------------------------------

def _slabs(x: Tensor, dim: int, group) -> List[int]:
    """Every rank's slab size along dim (one small all-gather)."""
    P = dist.get_world_size(group)
    mine = torch.tensor([x.shape[dim]], dtype=torch.int64,
                        device=x.device if x.device.type == "cuda" else "cpu")
    out = [torch.zeros_like(mine) for _ in range(P)]
    dist.all_gather(out, mine, group=group)
    return [int(t.item()) for t in out]


def plan(q: Tensor, k: Tensor, kernel_size, stride=1, dilation=1, is_causal=False, group=None,
         shard_axis: int = 0, mode: str = "auto", sizes: Optional[Sequence[int]] = None) -> dict:
    """What a call would do: the mode, every rank's slab bounds and key box along the split
    axis, and the bytes each mode would send per rank (forward)."""
    if mode not in _MODES:
        raise ValueError(f"mode = {mode!r} is invalid: must be one of {', '.join(_MODES)}")
    rank = q.dim() - 3
    if not 1 <= rank <= 3:
        raise ValueError(f"query.shape = {list(q.shape)} is invalid: the rank is "
                         "query.dim() - 3, which must be 1, 2 or 3")
    if not isinstance(shard_axis, int) or not 0 <= shard_axis < rank:
        raise ValueError(f"shard_axis = {shard_axis!r} is invalid: must be an int in "
                         f"[0, {rank})")
    ks, st, dil = (per_axis(n, v, rank) for n, v in
                   (("kernel_size", kernel_size), ("stride", stride), ("dilation", dilation)))
    cz = per_axis("is_causal", is_causal, rank, want_bool=True)
    g = group if group is not None else dist.group.WORLD
    P = dist.get_world_size(g)
    a, dim = shard_axis, 1 + shard_axis
    sizes = list(sizes) if sizes is not None else _slabs(q, dim, g)
    if min(sizes) < 1:
        raise ValueError(f"slab sizes along shard_axis = {sizes} are invalid: every rank needs "
                         "at least one position of the split axis")
    owned = [0]
    for n in sizes:
        owned.append(owned[-1] + n)
    L = owned[-1]
    boxes = []
    for r in range(P):
        if sizes[r] == 0:
            boxes += [owned[r], owned[r]]
        else:
            boxes += list(key_range(owned[r], owned[r + 1], L, ks[a], st[a], dil[a], cz[a]))
    other = 1
    for b in range(rank):
        if b != a:
            other *= q.shape[1 + b]
    B, Hq, D = q.shape[0], q.shape[-2], q.shape[-1]
    Hkv, Dv, e = k.shape[-2], D, q.element_size()
    rows = dict(q_row=B * Hq * D * e, kv_row=B * Hkv * D * e, o_row=B * Hq * Dv * e)
    cost = {m: _bytes_per_rank(m, owned, boxes, P, other, **rows)
            for m in ("heads", "halo", "allgather")}
    heads_ok = Hq % P == 0 and Hkv % P == 0
    chosen = mode
    if mode == "auto":
        chosen = "heads" if heads_ok and cost["heads"] < cost["halo"] else "halo"
    if chosen == "heads" and not heads_ok:
        raise ValueError(f"mode = 'heads' is invalid here: heads_q = {Hq} and heads_kv = {Hkv} "
                         f"must both be multiples of the group size ({P})")
    return dict(mode=chosen, sizes=sizes, owned=owned, boxes=boxes, global_extent=L,
                bytes=cost, rank=rank, kernel_size=ks, stride=st, dilation=dil, is_causal=cz)


def neighborhood_attention(query: Tensor, key: Tensor, value: Tensor, kernel_size, stride=1,
                           dilation=1, is_causal=False, scale: Optional[float] = None,
                           additional_keys: Optional[Tensor] = None,
                           additional_values: Optional[Tensor] = None, return_lse: bool = False,
                           group=None, shard_axis: int = 0, mode: str = "auto",
                           backend: Optional[str] = None):
    """Neighborhood attention of rank query.dim() - 3 on this rank's shards (module docs)."""
    if not dist.is_initialized():
        raise RuntimeError("nattn.distributed needs torch.distributed initialized "
                           "(init_process_group)")
    pl = plan(query, key, kernel_size, stride, dilation, is_causal, group, shard_axis, mode)
    g = group if group is not None else dist.group.WORLD
    name, P, r = _group_name(g), dist.get_world_size(g), dist.get_rank(g)
    rank, dim, sizes = pl["rank"], 1 + shard_axis, pl["sizes"]
    window = dict(stride=pl["stride"], dilation=pl["dilation"], is_causal=pl["is_causal"],
                  scale=scale, backend=backend)
    ak, av = additional_keys, additional_values
    if ak is not None and av is not None and P > 1:
        ak, av = dist_sum_gradients(ak, name), dist_sum_gradients(av, name)
    full = [query.shape[1 + b] for b in range(rank)]
    full[shard_axis] = pl["global_extent"]
    if pl["mode"] == "heads":
        q, k, v = (dist_scatter_heads(x.contiguous(), dim, sizes, name)
                   for x in (query, key, value))
        if ak is not None and av is not None:
            hk = key.shape[-2] // P
            ak, av = ak[:, :, r * hk:(r + 1) * hk], av[:, :, r * hk:(r + 1) * hk]
        out, lse = na_placed(q, k, v, pl["kernel_size"], full, additional_keys=ak,
                             additional_values=av, return_lse=True, **window)
        out = dist_gather_heads(out, dim, sizes, name)
        lse = dist_gather_heads(lse.unsqueeze(-1), dim, sizes, name).squeeze(-1) \
            if return_lse else None
    else:
        owned, boxes = pl["owned"], pl["boxes"]
        if pl["mode"] == "allgather":
            boxes = [0, pl["global_extent"]] * P
        k, v = (dist_halo_gather(x, dim, owned, boxes, name) for x in (key, value))
        q_origin = [0] * rank
        k_origin = [0] * rank
        q_origin[shard_axis], k_origin[shard_axis] = owned[r], boxes[2 * r]
        out, lse = na_placed(query, k, v, pl["kernel_size"], full, q_origin, k_origin,
                             additional_keys=ak, additional_values=av, return_lse=True,
                             **window)
    return (out, lse) if return_lse else out


def na1d(query, key, value, kernel_size, stride=1, dilation=1, is_causal=False, scale=None,
         additional_keys=None, additional_values=None, return_lse=False, group=None,
         shard_axis=0, mode="auto", backend=None):
    """1-D neighborhood attention on local shards [B, local X, H, D] (split along X)."""
    _need_rank(query, 1)
    return neighborhood_attention(query, key, value, kernel_size, stride, dilation, is_causal,
                                  scale, additional_keys, additional_values, return_lse, group,
                                  shard_axis, mode, backend)


def na2d(query, key, value, kernel_size, stride=1, dilation=1, is_causal=False, scale=None,
         additional_keys=None, additional_values=None, return_lse=False, group=None,
         shard_axis=0, mode="auto", backend=None):
    """2-D neighborhood attention on local shards [B, X1, X2, H, D] split along shard_axis."""
    _need_rank(query, 2)
    return neighborhood_attention(query, key, value, kernel_size, stride, dilation, is_causal,
                                  scale, additional_keys, additional_values, return_lse, group,
                                  shard_axis, mode, backend)


def na3d(query, key, value, kernel_size, stride=1, dilation=1, is_causal=False, scale=None,
         additional_keys=None, additional_values=None, return_lse=False, group=None,
         shard_axis=0, mode="auto", backend=None):
    """3-D neighborhood attention on local shards [B, X1, X2, X3, H, D] split along shard_axis."""
    _need_rank(query, 3)
    return neighborhood_attention(query, key, value, kernel_size, stride, dilation, is_causal,
                                  scale, additional_keys, additional_values, return_lse, group,
                                  shard_axis, mode, backend)


def _need_rank(query, rank: int) -> None:
    if not isinstance(query, Tensor) or query.dim() != rank + 3:
        shape = list(query.shape) if isinstance(query, Tensor) else type(query).__name__
        raise ValueError(f"query.shape = {shape} is invalid: na{rank}d takes "
                         f"[B, {rank} spatial dims, H, D]")
