"""Multi-GPU neighborhood attention on torch.distributed (NCCL on GPUs, gloo on CPU).

Every rank of `group` holds a box of the same problem: q/k/v [B, *local X, H, D]. The token
grid is split along one or two spatial axes (`shard_axes`) over a process grid
(`process_grid`, ranks in row-major order over it; default (P,) for one axis and the squarest
P0 x P1 with P0 <= P1 for two): rank r = c0 * P1 + c1 holds rows [o0[c0], o0[c0 + 1]) of the
first shard axis and [o1[c1], o1[c1 + 1]) of the second. Shards may differ in size (DTensor's
torch.chunk sizes included); each needs at least one row. Calls return the rank's shard of the
output (and lse).

Modes (../shared/DISTRIBUTED.md has the arithmetic):
- "heads" (Ulysses): an all-to-all gives each rank every token of H/P heads, the single-device
  kernels run, a second all-to-all returns the output to the shards. Bit-identical to one
  device. Needs Hq and Hkv divisible by P.
- "halo": each rank receives from their owners only the key/value rows its queries' windows
  reach (SPEC.md's window rule on the global grid, shifted windows at the grid ends, stride,
  dilation, causal; from up to 8 neighbours on a 2-D process grid, several hops away when a
  halo is wider than a neighbour's shard) and runs the placed-box problem (SPEC.md "Placed
  boxes": query box = its shard, key box = shard + halo).
  Backward, two designs (`halo_backward`):
  - "sum" (the default): the backward of the forward (dK/dV of the whole key box) sends the
    halo's key gradients back to their owners, which add them in rank order (deterministic;
    the same bytes as the forward's K/V halo; no extra kernel work, but key gradients rounded
    to the input dtype before the sum).
  - "owned" (issue 12's first design): each rank gathers the queries, output gradients, lse
    and Delta = do.o - dlse (float32, as the kernels keep it) of the other ranks' queries whose
    windows reach its keys (the query box less its shard: up to two strips per shard axis).
    One placed backward of its own queries against its key box gives dQ (complete: the key box
    holds their windows), the additional keys' partials and their part of dK/dV of its own
    keys; one placed backward per strip against its own keys adds the rest of dK/dV (P exact
    from the global lse), in a fixed order. No key gradient crosses ranks; deterministic; the
    key gradients are rounded once, as on one device. Cost over the forward's mirror: the
    strips' pairs (a query and a key on different ranks) are walked twice, once here and once
    by the query's owner: 1.08-1.11x the shard's backward pairs at 2 shards on the
    Hunyuan/Cosmos/Flux anchors, 1.15-1.42x at 4 on a 2 x 2 grid, 1.39-1.60x at 4 on one axis
    (counted pair by pair from SPEC.md's windows).
  Measured on 2 and 4 H100s (bench/results/2026-11-28-h100x4-distributed-strong.md), "sum" is
  faster everywhere: forward+backward 1.11-1.15x at 2 GPUs and 1.23-1.56x at 4 (the extra
  pairs and the strips' small placed calls cost more kernel time than the bytes they save).
- "allgather" (baseline): every rank gathers all keys/values, then runs the placed problem; the
  backward is the "sum" design.
- "auto": the mode moving the fewest bytes per rank (forward, plus backward when an input
  requires grad), among those that apply (heads needs divisible head counts).

Additional keys/values are the same on every rank (replicated). Their gradients are per-rank
partials (each rank's queries), all-gathered and added in rank order on every rank
(deterministic, the same on every rank): each rank receives the gradient of the whole problem.

The collectives are torch.library custom ops with autograd formulas, so torch.compile traces
them as calls; the process group travels as its name. Under torch.compile pass `shard_sizes`
(the only call that otherwise needs a collective at plan time, to learn the shard sizes).
DTensor inputs sharded (Shard) on one or two spatial dims of a 1-D or 2-D device mesh are
accepted (outputs are DTensors with the same placements).
"""
from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

from . import _choice, _ops
from ._checks import check_deterministic, check_tensor, is_int, per_axis
from .functional import na_placed, neighborhood_call

_MODES = ("auto", "heads", "halo", "allgather")
_HALO_BACKWARDS = ("owned", "sum")


def _group(name: str):
    from torch.distributed.distributed_c10d import _resolve_process_group
    return _resolve_process_group(name)


def _group_name(group) -> str:
    group = group if group is not None else dist.group.WORLD
    return group.group_name


def _boxes(flat: List[int], r: int, n: int) -> List[Tuple[int, int]]:
    """Rank r's box from a flat list [rank][shard axis][lo, hi]."""
    return [(flat[2 * (r * n + i)], flat[2 * (r * n + i) + 1]) for i in range(n)]


def _meet(a, b) -> Optional[List[Tuple[int, int]]]:
    """The intersection of two boxes (lists of (lo, hi)), or None when empty."""
    out = [(max(x[0], y[0]), min(x[1], y[1])) for x, y in zip(a, b)]
    return None if any(hi <= lo for lo, hi in out) else out


def _narrow(x: Tensor, dims: List[int], box, origin) -> Tensor:
    for d, (lo, hi), o in zip(dims, box, origin):
        x = x.narrow(d, lo - o[0], hi - lo)
    return x


def _shape(x, dims: List[int], box) -> List[int]:
    """The shape of x (a tensor or a shape) with the box's extents along dims."""
    shape = list(x.shape if isinstance(x, Tensor) else x)
    for d, (lo, hi) in zip(dims, box):
        shape[d] = hi - lo
    return shape


# ---- Heads mode: "box of every head" <-> "every token of H/P heads" -------------------------

def _heads_exchange(x: Tensor, dims: List[int], boxes: List[int], full: List[int], group: str,
                    scatter: bool) -> Tensor:
    """scatter: x [B, *own box, H, C] -> [B, *whole grid, H/P, C]; else the inverse. Pure
    copies through one all_to_all_single of flat buffers (uneven splits allowed)."""
    pg = _group(group)
    P, r, n = dist.get_world_size(pg), dist.get_rank(pg), len(dims)
    mine = _boxes(boxes, r, n)
    if scatter:
        h = x.shape[-2] // P
        send = torch.cat([x[..., s * h:(s + 1) * h, :].contiguous().flatten() for s in range(P)])
        shape = list(x.shape)
        shape[-2] = h
        for d, L in zip(dims, full):
            shape[d] = L
        pieces = [_shape(shape, dims, _boxes(boxes, s, n))
                  for s in range(P)]
        in_split = [send.numel() // P] * P
        out_split = [math.prod(p) for p in pieces]
    else:
        h = x.shape[-2]
        send = torch.cat([_narrow(x, dims, _boxes(boxes, s, n), [(0, 0)] * n)
                          .contiguous().flatten() for s in range(P)])
        shape = _shape(x, dims, mine)
        shape[-2] = h * P
        piece = list(shape)
        piece[-2] = h
        pieces = [piece] * P
        in_split = [math.prod(_shape(x, dims, _boxes(boxes, s, n))) for s in range(P)]
        out_split = [math.prod(piece)] * P
    recv = x.new_empty(sum(out_split))
    dist.all_to_all_single(recv, send, out_split, in_split, group=pg)
    out = x.new_empty(shape)
    for s, part in enumerate(recv.split(out_split)):
        if scatter:
            _narrow(out, dims, _boxes(boxes, s, n), [(0, 0)] * n).copy_(part.view(pieces[s]))
        else:
            out[..., s * h:(s + 1) * h, :].copy_(part.view(pieces[s]))
    return out


def _full(boxes: List[int], n: int) -> List[int]:
    return [max(boxes[2 * i + 1::2 * n]) for i in range(n)]


@torch.library.custom_op("nattn::dist_scatter_heads", mutates_args=())
def dist_scatter_heads(x: Tensor, dims: List[int], boxes: List[int], group: str) -> Tensor:
    return _heads_exchange(x, dims, boxes, _full(boxes, len(dims)), group, scatter=True)


@dist_scatter_heads.register_fake
def _(x, dims, boxes, group):
    shape = list(x.shape)
    for d, L in zip(dims, _full(boxes, len(dims))):
        shape[d] = L
    shape[-2] //= dist.get_world_size(_group(group))
    return x.new_empty(shape)


@torch.library.custom_op("nattn::dist_gather_heads", mutates_args=())
def dist_gather_heads(x: Tensor, dims: List[int], boxes: List[int], group: str) -> Tensor:
    return _heads_exchange(x, dims, boxes, _full(boxes, len(dims)), group, scatter=False)


@dist_gather_heads.register_fake
def _(x, dims, boxes, group):
    pg = _group(group)
    shape = _shape(x, dims, _boxes(boxes, dist.get_rank(pg), len(dims)))
    shape[-2] *= dist.get_world_size(pg)
    return x.new_empty(shape)


def _save_layout(ctx, inputs, output):
    _, ctx.dims, ctx.boxes, ctx.group = inputs


dist_scatter_heads.register_autograd(
    lambda ctx, g: (dist_gather_heads(g.contiguous(), ctx.dims, ctx.boxes, ctx.group), None,
                    None, None), setup_context=_save_layout)
dist_gather_heads.register_autograd(
    lambda ctx, g: (dist_scatter_heads(g.contiguous(), ctx.dims, ctx.boxes, ctx.group), None,
                    None, None), setup_context=_save_layout)


def _ordered_sum(x: Tensor, group: str) -> Tensor:
    """The sum over the ranks of x, added in rank order on every rank (deterministic and the
    same everywhere, unlike an all-reduce whose order is the library's)."""
    pg = _group(group)
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(pg))]
    dist.all_gather(parts, x.contiguous(), group=pg)
    out = parts[0].clone()
    for p in parts[1:]:
        out.add_(p)
    return out


@torch.library.custom_op("nattn::dist_sum_gradients", mutates_args=())
def dist_sum_gradients(x: Tensor, group: str) -> Tensor:
    """Identity; its backward sums the gradient over the ranks in rank order (inputs replicated
    on every rank, such as the additional keys/values)."""
    return x.clone()


@dist_sum_gradients.register_fake
def _(x, group):
    return torch.empty_like(x)


@torch.library.custom_op("nattn::dist_ordered_sum", mutates_args=())
def dist_ordered_sum(x: Tensor, group: str) -> Tensor:
    return _ordered_sum(x, group)


@dist_ordered_sum.register_fake
def _(x, group):
    return torch.empty_like(x)


dist_sum_gradients.register_autograd(
    lambda ctx, g: (dist_ordered_sum(g, ctx.group), None),
    setup_context=lambda ctx, inputs, output: setattr(ctx, "group", inputs[1]))


# ---- Halo mode: boxes of other ranks' shards -------------------------------------------------

def _exchange(xs: List[Tensor], dims: List[int], src: List[int], dst: List[int], group: str,
              reverse: bool) -> List[Tensor]:
    """Forward (reverse=False): each x is the rank's box src[r] (the boxes src tile the grid);
    returns its box dst[r], assembled from the owners' boxes. Reverse: each x is box dst[r] (a
    gradient); returns box src[r] with every rank's rows of it added in rank order."""
    pg = _group(group)
    P, r, n = dist.get_world_size(pg), dist.get_rank(pg), len(dims)
    have, want = _boxes(src, r, n), _boxes(dst, r, n)
    if reverse:
        have, want = want, have
    # forward: send my src ∩ their dst, receive my dst ∩ their src; reverse: the transpose.
    outgoing = [_meet(have, _boxes(src if reverse else dst, s, n)) for s in range(P)]
    incoming = [_meet(want, _boxes(dst if reverse else src, s, n)) for s in range(P)]
    ops, recvs = [], [dict() for _ in xs]
    for i, x in enumerate(xs):  # same (tensor, peer) order on both ends of every pair
        for s in range(P):
            if s != r and outgoing[s] is not None:
                ops.append(dist.P2POp(dist.isend, _narrow(x, dims, outgoing[s], have)
                                      .contiguous(), s, pg))
        for s in range(P):
            if s != r and incoming[s] is not None:
                recvs[i][s] = x.new_empty(_shape(x, dims, incoming[s]))
                ops.append(dist.P2POp(dist.irecv, recvs[i][s], s, pg))
    # The rank's own part is the bulk of every result (a whole shard): copy it on the compute
    # stream while the transfers run on NCCL's, and only then wait for the halos. In reverse
    # the sum starts from the own part (a clone, no zero fill) and adds the other ranks' rows in
    # rank order: a fixed order, so the sums are bitwise reproducible.
    reqs = dist.batch_isend_irecv(ops) if ops else []

    def place(out: Tensor, s: int, part: Tensor) -> None:
        dst_part = _narrow(out, dims, incoming[s], want)
        if reverse:
            dst_part.add_(part)
        else:
            dst_part.copy_(part)

    outs = []
    for x in xs:
        mine = _narrow(x, dims, incoming[r], have) if incoming[r] is not None else None
        if reverse and mine is not None and incoming[r] == want:
            out = mine.clone(memory_format=torch.contiguous_format)  # the usual case: src[r] ⊂ dst[r]
        else:
            out = x.new_zeros(_shape(x, dims, want)) if reverse else \
                x.new_empty(_shape(x, dims, want))
            if mine is not None:
                place(out, r, mine)
        outs.append(out)
    for req in reqs:
        req.wait()
    for i, out in enumerate(outs):
        for s in range(P):  # fixed order: deterministic sums
            if s != r and incoming[s] is not None:
                place(out, s, recvs[i][s])
    return outs


@torch.library.custom_op("nattn::dist_halo_gather", mutates_args=())
def dist_halo_gather(xs: List[Tensor], dims: List[int], src: List[int], dst: List[int],
                     group: str) -> List[Tensor]:
    return _exchange(xs, dims, src, dst, group, reverse=False)


@dist_halo_gather.register_fake
def _(xs, dims, src, dst, group):
    box = _boxes(dst, dist.get_rank(_group(group)), len(dims))
    return [x.new_empty(_shape(x, dims, box)) for x in xs]


@torch.library.custom_op("nattn::dist_halo_scatter_add", mutates_args=())
def dist_halo_scatter_add(xs: List[Tensor], dims: List[int], src: List[int], dst: List[int],
                          group: str) -> List[Tensor]:
    return _exchange(xs, dims, src, dst, group, reverse=True)


@dist_halo_scatter_add.register_fake
def _(xs, dims, src, dst, group):
    box = _boxes(src, dist.get_rank(_group(group)), len(dims))
    return [x.new_empty(_shape(x, dims, box)) for x in xs]


dist_halo_gather.register_autograd(
    lambda ctx, gs: (dist_halo_scatter_add(_grads_for(ctx, gs), ctx.dims, ctx.src, ctx.dst,
                                           ctx.group), None, None, None, None),
    setup_context=lambda ctx, inputs, output: _save_box_shapes(ctx, inputs, output))
dist_halo_scatter_add.register_autograd(
    lambda ctx, gs: (dist_halo_gather(_grads_for(ctx, gs), ctx.dims, ctx.src, ctx.dst,
                                      ctx.group), None, None, None, None),
    setup_context=lambda ctx, inputs, output: _save_box_shapes(ctx, inputs, output))


def _save_box_shapes(ctx, inputs, output):
    _, ctx.dims, ctx.src, ctx.dst, ctx.group = inputs
    ctx.like = [(y.shape, y.dtype, y.device) for y in output]


def _grads_for(ctx, gs):
    """The output gradients, zeros for an output that fed nothing."""
    return [g.contiguous() if g is not None else torch.zeros(s, dtype=t, device=d)
            for g, (s, t, d) in zip(gs, ctx.like)]


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


def _groups(lo: int, hi: int, L: int, d: int):
    """Per dilation group g: (g, Lg, first, last), the group positions inside [lo, hi)."""
    for g in range(d):
        Lg = L // d + (1 if g < L % d else 0)
        first = max((lo - g + d - 1) // d, 0)
        last = min((hi - 1 - g) // d, Lg - 1) if hi - 1 >= g else -1
        if last >= first:
            yield g, Lg, first, last


def key_range(lo: int, hi: int, L: int, k: int, s: int = 1, d: int = 1,
              causal: bool = False) -> Tuple[int, int]:
    """The smallest index range [klo, khi) of an axis of extent L holding every key of the
    windows of queries lo..hi-1 (hi > lo). Window ends are monotone in the position within a
    dilation group, so each group's first and last query of the range bound it."""
    klo, khi = L, 0
    for g, Lg, first, last in _groups(lo, hi, L, d):
        klo = min(klo, _group_window(first, Lg, k, s, causal)[0] * d + g)
        khi = max(khi, (_group_window(last, Lg, k, s, causal)[1] - 1) * d + g + 1)
    return klo, khi


def _first_true(n: int, pred) -> int:
    """The first p in [0, n) where pred (False..False True..True) holds; n when none does."""
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if pred(mid) else (mid + 1, hi)
    return lo


def query_range(lo: int, hi: int, L: int, k: int, s: int = 1, d: int = 1,
                causal: bool = False) -> Tuple[int, int]:
    """The smallest index range [qlo, qhi) of an axis of extent L holding every query whose
    window holds a key of lo..hi-1 ((lo, lo) when none does). Window starts and ends are
    monotone in the group position, so within a group those queries are contiguous: from the
    first whose window ends past the range's first key to the last whose window starts at or
    before its last key (binary searches)."""
    qlo, qhi = L, 0
    for g, Lg, a, b in _groups(lo, hi, L, d):
        p0 = _first_true(Lg, lambda p, Lg=Lg, a=a: _group_window(p, Lg, k, s, causal)[1] > a)
        p1 = _first_true(Lg, lambda p, Lg=Lg, b=b: _group_window(p, Lg, k, s, causal)[0] > b) - 1
        if p0 <= p1:
            qlo, qhi = min(qlo, p0 * d + g), max(qhi, p1 * d + g + 1)
    return (qlo, qhi) if qhi > qlo else (lo, lo)


# ---- The plan -------------------------------------------------------------------------------

class Plan(NamedTuple):
    """What a call does (see plan())."""
    mode: str                    # "heads", "halo" or "allgather"
    shard_axes: Tuple[int, ...]  # spatial axes split over the process grid
    process_grid: Tuple[int, ...]  # ranks along each shard axis (row-major rank order)
    sizes: Tuple[Tuple[int, ...], ...]  # shard sizes along each shard axis
    extent: Tuple[int, ...]      # the global grid (every spatial axis)
    owned: List[int]             # [rank][shard axis][lo, hi]: the shards (global indices)
    key_boxes: List[int]         # the same for the forward's key boxes (shard + halo)
    query_boxes: List[int]       # the queries whose windows reach each shard's keys (+ shard)
    bytes: dict                  # per mode: bytes sent per rank (the most of any rank)
    kernel_size: Tuple[int, ...]
    stride: Tuple[int, ...]
    dilation: Tuple[int, ...]
    is_causal: Tuple[bool, ...]


def _shard_axes(shard_axes, shard_axis, rank: int) -> Tuple[int, ...]:
    if shard_axis is not None:
        if shard_axes is not None:
            raise ValueError(f"shard_axis = {shard_axis!r} is invalid together with shard_axes "
                             f"= {shard_axes!r}: pass one of them (shard_axes)")
        shard_axes = shard_axis
    if shard_axes is None:
        shard_axes = 0
    axes = (shard_axes,) if is_int(shard_axes) else shard_axes
    if (not isinstance(axes, (tuple, list)) or not 1 <= len(axes) <= 2
            or not all(is_int(a) and 0 <= a < rank for a in axes) or len(set(axes)) != len(axes)):
        raise ValueError(f"shard_axes = {shard_axes!r} is invalid: must be one spatial axis or "
                         f"a tuple of one or two distinct spatial axes, each an int in "
                         f"[0, {rank})")
    return tuple(int(a) for a in axes)


def _process_grid(process_grid, n: int, P: int) -> Tuple[int, ...]:
    if process_grid is None:
        if n == 1:
            return (P,)
        p0 = max(d for d in range(1, math.isqrt(P) + 1) if P % d == 0)
        return (p0, P // p0)
    grid = tuple(process_grid) if isinstance(process_grid, (tuple, list)) else (process_grid,)
    if (len(grid) != n or not all(is_int(g) and g >= 1 for g in grid)
            or math.prod(grid) != P):
        raise ValueError(f"process_grid = {process_grid!r} is invalid: needs one int >= 1 per "
                         f"shard axis ({n}) with product = the group size ({P})")
    return tuple(int(g) for g in grid)


def _coords(r: int, grid: Sequence[int]) -> List[int]:
    out = []
    for g in reversed(grid):
        out.append(r % g)
        r //= g
    return out[::-1]


def _exchange_shapes(q: Tensor, k: Tensor, v: Tensor, axes, grid, group) -> List[List[int]]:
    """Every rank's local shard sizes along the shard axes, from one small all-gather of the
    shapes, checked for agreement (batch, heads, head dims, the other axes) on every rank."""
    P = dist.get_world_size(group)
    spatial = list(q.shape[1:-2])
    row = [q.shape[0], q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]] + spatial
    mine = torch.tensor(row, dtype=torch.int64,
                        device=q.device if q.device.type == "cuda" else "cpu")
    parts = [torch.empty_like(mine) for _ in range(P)]
    dist.all_gather(parts, mine, group=group)
    rows = [[int(x) for x in t.tolist()] for t in parts]
    names = ["batch", "heads_q", "heads_kv", "head_dim", "head_dim_v"]
    for i, name in enumerate(names):
        if any(rw[i] != rows[0][i] for rw in rows):
            raise ValueError(f"{name} = {[rw[i] for rw in rows]} (per rank) is invalid: must be "
                             "the same on every rank")
    sizes = []
    for j, a in enumerate(axes):
        along = [None] * grid[j]
        for r, rw in enumerate(rows):
            c = _coords(r, grid)[j]
            if along[c] is None:
                along[c] = rw[5 + a]
            elif along[c] != rw[5 + a]:
                raise ValueError(
                    f"query.shape[{1 + a}] = {[rw[5 + a] for rw in rows]} (per rank) is "
                    f"invalid: ranks at the same position {c} of process grid axis {j} "
                    f"({list(grid)}, row-major) must hold the same rows of shard axis {a}")
        sizes.append(along)
    for a in range(len(spatial)):
        if a not in axes and any(rw[5 + a] != rows[0][5 + a] for rw in rows):
            raise ValueError(f"query.shape[{1 + a}] = {[rw[5 + a] for rw in rows]} (per rank) "
                             f"is invalid: spatial axis {a} is not sharded (shard_axes = "
                             f"{list(axes)}), so it must be whole on every rank")
    return sizes


def _bytes_per_rank(pl_boxes, P: int, n: int, axes, extent, shard_tokens: List[int],
                    rows: dict, needs_grad: bool, halo_backward: str) -> dict:
    """Bytes each mode sends per rank (the most of any rank): forward, plus the backward when
    needs_grad. A "row" is one token of B * heads * head dim elements."""
    owned, kbox, qbox = pl_boxes
    other = math.prod(L for a, L in enumerate(extent) if a not in axes)

    def sent(dst):  # tokens each rank sends: its shard ∩ the other ranks' boxes
        worst = 0
        for r in range(P):
            mine, t = _boxes(owned, r, n), 0
            for s in range(P):
                m = _meet(mine, _boxes(dst, s, n))
                if s != r and m is not None:
                    t += math.prod(hi - lo for lo, hi in m)
            worst = max(worst, t)
        return worst * other

    q, kv, o, lse = rows["q"], rows["kv"], rows["o"], rows["lse"]
    worst_shard = max(shard_tokens)
    heads = worst_shard * (q + 2 * kv + o) * (P - 1) / P
    kv_halo = sent(kbox) * 2 * kv
    gather = sent([x for _ in range(P) for a in axes for x in (0, extent[a])]) * 2 * kv
    cost = dict(heads=heads, halo=kv_halo, allgather=gather)
    if needs_grad:  # heads: dout in, dq/dk/dv out; halo: the query halo (q, do, lse, Delta)
        cost["heads"] *= 2
        cost["halo"] += kv_halo if halo_backward == "sum" else sent(qbox) * (q + o + 2 * lse)
        cost["allgather"] *= 2
    return cost


def plan(q: Tensor, k: Tensor, kernel_size, stride=1, dilation=1, is_causal=False, group=None,
         shard_axes=None, mode: str = "auto", shard_sizes=None, process_grid=None,
         shard_axis=None, v: Optional[Tensor] = None, needs_grad: bool = False,
         halo_backward: str = "sum") -> Plan:
    """What a call would do: the mode, the shards, the key boxes (forward) and query boxes
    (halo backward) of every rank, and the bytes each mode would send per rank.
    `shard_sizes`: per shard axis, the shard sizes along it (one per process grid position);
    without it one small all-gather learns (and checks) them."""
    if mode not in _MODES:
        raise ValueError(f"mode = {mode!r} is invalid: must be one of {', '.join(_MODES)}")
    if halo_backward not in _HALO_BACKWARDS:
        raise ValueError(f"halo_backward = {halo_backward!r} is invalid: must be one of "
                         f"{', '.join(_HALO_BACKWARDS)}")
    check_tensor("query", q)
    check_tensor("key", k)
    rank = q.dim() - 3
    if not 1 <= rank <= 3:
        raise ValueError(f"query.shape = {list(q.shape)} is invalid: the rank is "
                         "query.dim() - 3, which must be 1, 2 or 3")
    axes = _shard_axes(shard_axes, shard_axis, rank)
    ks, st, dil = (per_axis(n, x, rank) for n, x in
                   (("kernel_size", kernel_size), ("stride", stride), ("dilation", dilation)))
    cz = per_axis("is_causal", is_causal, rank, want_bool=True)
    g = group if group is not None else dist.group.WORLD
    P = dist.get_world_size(g)
    grid = _process_grid(process_grid, len(axes), P)
    if shard_sizes is None:
        sizes = _exchange_shapes(q, k, v if v is not None else k, axes, grid, g)
    else:
        sizes = [list(s) for s in shard_sizes] if isinstance(shard_sizes, (tuple, list)) else 0
        if (not sizes or len(sizes) != len(axes)
                or any(len(s) != n or not all(is_int(x) for x in s)
                       for s, n in zip(sizes, grid))):
            raise ValueError(f"shard_sizes = {shard_sizes!r} is invalid: needs, per shard axis "
                             f"({list(axes)}), a list of ints, one per process grid position "
                             f"({list(grid)})")
        c = _coords(dist.get_rank(g), grid)
        for j, a in enumerate(axes):
            if sizes[j][c[j]] != q.shape[1 + a]:
                raise ValueError(f"shard_sizes[{j}] = {sizes[j]} is invalid: this rank holds "
                                 f"query.shape[{1 + a}] = {q.shape[1 + a]} rows at position "
                                 f"{c[j]} of the process grid")
    for j, a in enumerate(axes):
        if min(sizes[j]) < 1:
            raise ValueError(f"shard sizes along shard axis {a} = {sizes[j]} are invalid: "
                             "every rank needs at least one row of each shard axis")
    starts = []
    for s in sizes:
        o = [0]
        for x in s:
            o.append(o[-1] + x)
        starts.append(o)
    extent = [q.shape[1 + a] for a in range(rank)]
    for j, a in enumerate(axes):
        extent[a] = starts[j][-1]
    owned, kbox, qbox = [], [], []
    for r in range(P):
        c = _coords(r, grid)
        for j, a in enumerate(axes):
            lo, hi = starts[j][c[j]], starts[j][c[j] + 1]
            w = (extent[a], ks[a], st[a], dil[a], cz[a])
            klo, khi = key_range(lo, hi, *w)
            qlo, qhi = query_range(lo, hi, *w)
            # The halo backward's one placed call needs the shard in both boxes.
            owned += [lo, hi]
            kbox += [min(klo, lo), max(khi, hi)]
            qbox += [min(qlo, lo), max(qhi, hi)]
    B, Hq, D = q.shape[0], q.shape[-2], q.shape[-1]
    Hkv = k.shape[-2]
    Dv = v.shape[-1] if v is not None else D
    e = q.element_size()
    rows = dict(q=B * Hq * D * e, kv=B * Hkv * (D + Dv) * e // 2, o=B * Hq * Dv * e, lse=B * Hq * 4)
    tokens = [math.prod(hi - lo for lo, hi in _boxes(owned, r, len(axes))) for r in range(P)]
    other = math.prod(L for a, L in enumerate(extent) if a not in axes)
    cost = _bytes_per_rank((owned, kbox, qbox), P, len(axes), axes, extent,
                           [t * other for t in tokens], rows, needs_grad, halo_backward)
    heads_ok = Hq % P == 0 and Hkv % P == 0
    chosen = mode
    if mode == "auto":
        chosen = "heads" if heads_ok and cost["heads"] < cost["halo"] else "halo"
    if chosen == "heads" and not heads_ok:
        raise ValueError(f"mode = 'heads' is invalid here: heads_q = {Hq} and heads_kv = {Hkv} "
                         f"must both be multiples of the group size ({P})")
    return Plan(chosen, axes, grid, tuple(tuple(s) for s in sizes), tuple(extent), owned, kbox,
                qbox, cost, tuple(ks), tuple(st), tuple(dil), tuple(cz))


# ---- Halo attention with the owned-key backward ---------------------------------------------

def _placement(extent, axes, box_q, box_k) -> List[int]:
    rank = len(extent)
    qo, ko = [0] * rank, [0] * rank
    for a, (ql, _), (kl, _) in zip(axes, box_q, box_k):
        qo[a], ko[a] = ql, kl
    return list(extent) + qo + ko


class _HaloAttention(torch.autograd.Function):
    """Halo mode, issue 12's backward (module docs): no key gradient leaves its rank."""

    @staticmethod
    def forward(ctx, query, key, value, ak, av, meta):
        call, pl, group, r = meta
        dims = [1 + a for a in pl.shard_axes]
        n = len(dims)
        kb, vb = dist_halo_gather([key, value], dims, pl.owned, pl.key_boxes, group)
        own, kbox = _boxes(pl.owned, r, n), _boxes(pl.key_boxes, r, n)
        c = call._replace(query=query, key=kb, value=vb, additional_keys=ak,
                          additional_values=av,
                          placement=tuple(_placement(pl.extent, pl.shard_axes, own, kbox)))
        choice = _choice.current()
        out, lse = _ops.na_forward(*c.op_args(choice))
        ctx.meta, ctx.choice = meta, choice
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(query, kb, vb, ak, av, out, lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        query, kb, vb, ak, av, out, lse = ctx.saved_tensors
        call, pl, group, r = ctx.meta
        dims = [1 + a for a in pl.shard_axes]
        n = len(dims)
        own = _boxes(pl.owned, r, n)
        kbox, qbox = _boxes(pl.key_boxes, r, n), _boxes(pl.query_boxes, r, n)
        if dout is None:
            dout = torch.zeros_like(out)
        # Delta = do.o - dlse of every query (float32, as the kernels keep it), for the ranks
        # whose keys these queries reach: their calls get out = 0 and dlse = -Delta, so they
        # compute this Delta without the output.
        wide = torch.float64 if out.dtype == torch.float64 else torch.float32
        delta = (dout.to(wide) * out.to(wide)).sum(-1)
        if dlse is not None:
            delta = delta - dlse.to(wide)
        D = query.shape[-1]
        qdo, ld = dist_halo_gather([torch.cat([query, dout.to(query.dtype)], -1),
                                    torch.stack([lse, delta.float()], -1)],
                                   dims, pl.owned, pl.query_boxes, group)
        # 1. This rank's queries against its key box, as the forward: dQ (complete), the
        # additional keys' partial gradients, and dK/dV from these queries (kept for own keys).
        c = call._replace(query=query, key=kb, value=vb, additional_keys=ak,
                          additional_values=av,
                          placement=tuple(_placement(pl.extent, pl.shard_axes, own, kbox)))
        a = c.op_args(ctx.choice)
        dq, dk_a, dv_a, dak, dav = _ops.na_backward(*a[:5], out, lse, dout, dlse, *a[5:])
        dk = _narrow(dk_a, dims, own, kbox).contiguous()
        dv = _narrow(dv_a, dims, own, kbox).contiguous()
        # 2. The other ranks' queries that reach this rank's keys (the query box less the
        # shard, as up to 2 strips per shard axis) against its own keys: their dK/dV terms,
        # added in a fixed order.
        k_own, v_own = (_narrow(x, dims, own, kbox) for x in (kb, vb))
        for strip in _strips(own, qbox):
            qs, dos = (x.contiguous() for x in
                       _narrow(qdo, dims, strip, qbox).split([D, qdo.shape[-1] - D], -1))
            lses, deltas = (x.contiguous() for x in _narrow(ld, dims, strip, qbox).unbind(-1))
            c = call._replace(query=qs, key=k_own, value=v_own, additional_keys=None,
                              additional_values=None,
                              placement=tuple(_placement(pl.extent, pl.shard_axes, strip, own)))
            a = c.op_args(ctx.choice)
            _, dks, dvs, _, _ = _ops.na_backward(*a[:5], torch.zeros_like(dos), lses, dos,
                                                 -deltas, *a[5:])
            dk.add_(dks)
            dv.add_(dvs)
        if ak is None:
            dak = dav = None
        return dq, dk, dv, dak, dav, None


def _strips(own, box) -> List[List[Tuple[int, int]]]:
    """box less own (own inside box) as disjoint boxes: per shard axis in order, the parts
    before and after own's range, spanning what earlier axes have not cut away."""
    out, inner = [], list(box)
    for i, ((lo, hi), (blo, bhi)) in enumerate(zip(own, box)):
        for part in ((blo, lo), (hi, bhi)):
            if part[1] > part[0]:
                out.append(inner[:i] + [part] + inner[i + 1:])
        inner[i] = (lo, hi)
    return out


# ---- The calls ------------------------------------------------------------------------------

def _from_dtensor(x, rank: int):
    """(local tensor, group, shard_axes, process_grid, shard_sizes, (mesh, placements)) of a
    DTensor sharded on spatial dims; None for a plain tensor."""
    try:
        from torch.distributed.tensor import DTensor, Shard
    except ImportError:  # pragma: no cover - torch without DTensor
        return None
    if not isinstance(x, DTensor):
        return None
    mesh, placements = x.device_mesh, tuple(x.placements)
    axes = []
    for p in placements:
        if not isinstance(p, Shard) or not 1 <= p.dim <= rank:
            raise ValueError(f"query.placements = {placements} is invalid: nattn.distributed "
                             f"takes DTensors sharded (Shard) on spatial dims 1..{rank}, one "
                             "per mesh dimension")
        axes.append(p.dim - 1)
    if mesh.ndim == 1:
        group = mesh.get_group()
    else:
        ranks = mesh.mesh.flatten().tolist()
        if ranks != sorted(ranks) or not hasattr(mesh, "_flatten"):
            raise ValueError(f"query.device_mesh = {mesh} is invalid: a 2-D mesh must list its "
                             "ranks in increasing row-major order (the process grid's order)")
        group = mesh._flatten().get_group()
    grid = tuple(mesh.shape)
    sizes = [[c.shape[0] for c in torch.empty(x.shape[1 + a], device="meta").chunk(m)]
             for a, m in zip(axes, grid)]
    for a, s, m in zip(axes, sizes, grid):
        if len(s) < m:
            raise ValueError(f"query.shape[{1 + a}] = {x.shape[1 + a]} is invalid: sharded over "
                             f"{m} ranks it leaves some rank no row (torch.chunk sizes {s})")
    return group, tuple(axes), grid, sizes, (mesh, placements)


def neighborhood_attention(query: Tensor, key: Tensor, value: Tensor, kernel_size, stride=1,
                           dilation=1, is_causal=False, scale: Optional[float] = None,
                           additional_keys: Optional[Tensor] = None,
                           additional_values: Optional[Tensor] = None, return_lse: bool = False,
                           group=None, shard_axes=None, mode: str = "auto",
                           backend: Optional[str] = None, process_grid=None, shard_sizes=None,
                           halo_backward: str = "sum", shard_axis=None,
                           deterministic: Optional[bool] = None):
    """Neighborhood attention of rank query.dim() - 3 on this rank's shards (module docs).
    `shard_axis` is the one-axis spelling of `shard_axes` (kept for older callers).
    `deterministic`: as nattn.na2d's (True: every rank's kernels run their bitwise reproducible
    backward; the collectives add in a fixed order either way)."""
    check_deterministic(deterministic)  # before any collective runs
    if not dist.is_initialized():
        raise RuntimeError("nattn.distributed needs torch.distributed initialized "
                           "(init_process_group)")
    dt = _from_dtensor(query, query.dim() - 3)
    if dt is not None:
        group, shard_axes, process_grid, shard_sizes, (mesh, placements) = dt
        shard_axis = None
        query, key, value = (x.to_local() for x in (query, key, value))
        if additional_keys is not None and hasattr(additional_keys, "full_tensor"):
            additional_keys, additional_values = (x.full_tensor() for x in
                                                  (additional_keys, additional_values))
    inputs = [query, key, value, additional_keys, additional_values]
    needs_grad = torch.is_grad_enabled() and any(
        isinstance(x, Tensor) and x.requires_grad for x in inputs)
    pl = plan(query, key, kernel_size, stride, dilation, is_causal, group, shard_axes, mode,
              shard_sizes, process_grid, shard_axis, value, needs_grad, halo_backward)
    g = group if group is not None else dist.group.WORLD
    name, P, r = _group_name(g), dist.get_world_size(g), dist.get_rank(g)
    rank, dims, n = query.dim() - 3, [1 + a for a in pl.shard_axes], len(pl.shard_axes)
    window = dict(stride=pl.stride, dilation=pl.dilation, is_causal=pl.is_causal, scale=scale,
                  backend=backend, deterministic=deterministic)
    ak, av = additional_keys, additional_values
    if ak is not None and av is not None and P > 1:
        ak, av = dist_sum_gradients(ak, name), dist_sum_gradients(av, name)
    if pl.mode == "heads":
        q, k, v = (dist_scatter_heads(x.contiguous(), dims, pl.owned, name)
                   for x in (query, key, value))
        if ak is not None and av is not None:
            hk = key.shape[-2] // P
            ak, av = ak[:, :, r * hk:(r + 1) * hk], av[:, :, r * hk:(r + 1) * hk]
        out, lse = na_placed(q, k, v, pl.kernel_size, list(pl.extent), additional_keys=ak,
                             additional_values=av, return_lse=True, **window)
        out = dist_gather_heads(out, dims, pl.owned, name)
        lse = dist_gather_heads(lse.unsqueeze(-1), dims, pl.owned, name).squeeze(-1) \
            if return_lse else None
    elif pl.mode == "halo" and halo_backward == "owned":
        call = neighborhood_call(rank, query, key, value, pl.kernel_size, pl.stride,
                                 pl.dilation, pl.is_causal, scale, ak, av, backend, deterministic)
        ak, av = call.additional_keys, call.additional_values
        call = call._replace(query=None, key=None, value=None, additional_keys=None,
                             additional_values=None)  # the tensors travel as arguments
        out, lse = _HaloAttention.apply(query, key, value, ak, av, (call, pl, name, r))
    else:
        boxes = pl.key_boxes if pl.mode == "halo" else \
            [x for _ in range(P) for a in pl.shard_axes for x in (0, pl.extent[a])]
        k, v = dist_halo_gather([key, value], dims, pl.owned, boxes, name)
        own, kbox = _boxes(pl.owned, r, n), _boxes(boxes, r, n)
        pm = _placement(pl.extent, pl.shard_axes, own, kbox)
        out, lse = na_placed(query, k, v, pl.kernel_size, pm[:rank], pm[rank:2 * rank],
                             pm[2 * rank:], additional_keys=ak, additional_values=av,
                             return_lse=True, **window)
    if dt is not None:
        from torch.distributed.tensor import DTensor
        out = DTensor.from_local(out, mesh, placements, run_check=False)
        lse = DTensor.from_local(lse, mesh, placements, run_check=False) if return_lse else None
    return (out, lse) if return_lse else out


def _doc(rank: int) -> str:
    dims = {1: "X", 2: "X1, X2", 3: "X1, X2, X3"}[rank]
    return (f"{rank}-D neighborhood attention on local shards [B, {dims} (local), H, D], split "
            "along `shard_axes` (one or two spatial axes) over `process_grid`; returns the "
            "local shard of out (and lse). See the module docs for the modes.")


def _need_rank(query, rank: int) -> None:
    if not isinstance(query, Tensor) or query.dim() != rank + 3:
        shape = list(query.shape) if isinstance(query, Tensor) else type(query).__name__
        raise ValueError(f"query.shape = {shape} is invalid: na{rank}d takes "
                         f"[B, {rank} spatial dims, H, D]")


def _make(rank: int):
    def fn(query, key, value, kernel_size, stride=1, dilation=1, is_causal=False, scale=None,
           additional_keys=None, additional_values=None, return_lse=False, group=None,
           shard_axes=None, mode="auto", backend=None, process_grid=None, shard_sizes=None,
           halo_backward="sum", shard_axis=None, deterministic=None):
        _need_rank(query, rank)
        return neighborhood_attention(query, key, value, kernel_size, stride, dilation,
                                      is_causal, scale, additional_keys, additional_values,
                                      return_lse, group, shard_axes, mode, backend,
                                      process_grid, shard_sizes, halo_backward, shard_axis,
                                      deterministic)
    fn.__name__ = fn.__qualname__ = f"na{rank}d"
    fn.__doc__ = _doc(rank)
    return fn


na1d = _make(1)
na2d = _make(2)
na3d = _make(3)
