"""Multi-GPU neighborhood attention (issue 12): the attention op alone, forward and
forward+backward, per mode, against the same problem on one GPU.

Launch with torchrun, one process per GPU (NVLink multicast stays off, DISTRIBUTED.md):
  NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 \\
    torchrun --standalone --nproc-per-node 2 bench/distributed.py --json out.json
Modes: heads, halo (issue 12's backward: dK/dV of owned keys from the gathered query halo),
halo-sum (halo forward, the key box's gradients sent back and added by their owners) and
allgather (baseline). Shard axes (--axes): "1" splits the anchor's best axis (largest extent /
(kernel * dilation)), "2" its best two over the squarest process grid (from 4 GPUs), "1,2" both;
or explicit spatial axes ("0", "1:2"). Strong scaling: the anchor as given. Weak scaling
(--weak): each split axis grows with its number of shards. Rank 0 prints a markdown table (and
writes --json): per mode the time of the call (the slowest rank), the time of its collectives
alone (forward; backward's extra exchange), the time of its kernels alone on this rank's boxes,
bytes sent per rank, and the 1-GPU time of the whole problem measured in the same run on rank 0.
"""
import argparse
import json
import math
import os
import sys
import time

import torch
import torch.distributed as dist

import nattn
import nattn.distributed as nd
from nattn import _ops

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import bench  # noqa: E402

# NVLink multicast off, whatever the caller's environment says (DISTRIBUTED.md).
os.environ.update(NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1",
                  NVSHMEM_DISABLE_NVLS="1")

ANCHORS = {  # name: (extents, kernel, stride, heads)   bf16, head dim 128, batch 1
    "hunyuan-3d": ((30, 48, 80), (18, 24, 24), 1, 24),
    "cosmos-3d": ((16, 44, 80), (12, 32, 32), 1, 32),
    "flux-2d": ((256, 256), (80, 80), 1, 24),
}
MODES = ("heads", "halo", "halo-sum", "allgather")


def best_axes(extents, kernel, n):
    """The n axes with the largest extent / kernel, best first."""
    order = sorted(range(len(extents)), key=lambda a: -extents[a] / kernel[a])
    return tuple(order[:n])


def split(extents, kernel, spec, P):
    """(shard axes, process grid) for --axes entry spec, or None when it does not apply."""
    if spec in ("1", "2"):
        n = int(spec)
        if n == 2 and (P < 4 or len(extents) < 2):
            return None
        axes = best_axes(extents, kernel, n)
    else:
        axes = tuple(int(a) for a in spec.split(":"))
    if len(axes) == 1:
        return axes, (P,)
    p0 = max(d for d in range(1, math.isqrt(P) + 1) if P % d == 0)
    return axes, (P // p0, p0)  # the larger factor on the best axis


def shard(x, axes, grid, r):
    """Rank r's box (torch.chunk sizes along each shard axis, as DTensor; row-major grid)."""
    c = [r // grid[1], r % grid[1]] if len(grid) == 2 else [r]
    for a, g, i in zip(axes, grid, c):
        x = torch.chunk(x, g, dim=1 + a)[i]
    return x.contiguous()


SMOKE = {}  # --smoke: CPU processes on gloo, tiny problems, wall-clock timing


def timed(fn, iters):
    if not SMOKE:
        return bench(fn, iters)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return sorted(times)[len(times) // 2]


def slowest(ms):
    t = torch.tensor([ms], device="cpu" if SMOKE else "cuda")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def one_gpu(fn, q, k, v, kernel, stride, iters):
    """The whole problem on this GPU: (forward ms, forward+backward ms)."""
    qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
    do = torch.randn_like(q)
    return (timed(lambda: fn(q, k, v, kernel, stride), iters),
            timed(lambda: fn(qg, kg, vg, kernel, stride).backward(do), iters))


def parts(lq, lk, lv, kernel, stride, pl, mode, iters):
    """The collectives alone and the kernels alone of one mode on this rank: (comm fwd ms, comm
    bwd ms (the backward's exchanges that are not the forward's mirror: the query halo),
    kernel fwd ms, kernel fwd+bwd ms)."""
    group = nd._group_name(dist.group.WORLD)
    r, P = dist.get_rank(), dist.get_world_size()
    dims, n, rank = [1 + a for a in pl.shard_axes], len(pl.shard_axes), lq.dim() - 3
    if mode == "heads":
        def comm():
            for x in (lq, lk, lv):
                y = nd.dist_scatter_heads(x, dims, pl.owned, group)
            nd.dist_gather_heads(y, dims, pl.owned, group)
        q, k, v = (nd.dist_scatter_heads(x, dims, pl.owned, group) for x in (lq, lk, lv))
        placement = list(pl.extent) + [0] * (2 * rank)
        qbox = q
        comm_bwd = None
    else:
        boxes = pl.key_boxes if mode != "allgather" else \
            [x for _ in range(P) for a in pl.shard_axes for x in (0, pl.extent[a])]

        def comm():
            nd.dist_halo_gather([lk, lv], dims, pl.owned, boxes, group)
        k, v = nd.dist_halo_gather([lk, lv], dims, pl.owned, boxes, group)
        own, kbox = nd._boxes(pl.owned, r, n), nd._boxes(boxes, r, n)
        placement = nd._placement(pl.extent, pl.shard_axes, own, kbox)
        q, qbox, comm_bwd = lq, lq, None
        if mode == "halo":
            qdo = torch.cat([lq, torch.randn_like(lq)], -1)
            ld = torch.randn(*lq.shape[:-1], 2, device=lq.device)

            def comm_bwd():
                nd.dist_halo_gather([qdo, ld], dims, pl.owned, pl.query_boxes, group)
            qbox = nd.dist_halo_gather([lq], dims, pl.owned, pl.query_boxes, group)[0]
            strips = [(nd._narrow(qbox, dims, st, nd._boxes(pl.query_boxes, r, n)).contiguous(),
                       nd._placement(pl.extent, pl.shard_axes, st, own))
                      for st in nd._strips(own, nd._boxes(pl.query_boxes, r, n))]
            k_own, v_own = lk, lv
    call = dict(stride=stride)

    def fwd():
        return nattn.na_placed(q, k, v, kernel, placement[:rank], placement[rank:2 * rank],
                               placement[2 * rank:], return_lse=True, **call)

    out, lse = fwd()
    do = torch.randn_like(out)

    def backward(q, k, v, o, ls, do, dls, placement):
        _ops.na_backward(q, k, v, None, None, o, ls, do, dls, list(kernel), [stride] * rank,
                         [1] * rank, [False] * rank, None, False, 0, list(placement), "", [],
                         [])

    def fwd_bwd():
        o, ls = fwd()
        backward(q, k, v, o, ls, do, None, placement)
        if mode == "halo":  # the owned-key backward's strips: other ranks' queries, own keys
            for qs, pm in strips:
                z = torch.zeros(qs.shape[:-1], device=qs.device)
                backward(qs, k_own, v_own, torch.zeros_like(qs), z, qs, z, pm)

    return (timed(comm, iters), None if comm_bwd is None else timed(comm_bwd, iters),
            timed(fwd, iters), timed(fwd_bwd, iters))


def one_mode(lq, lk, lv, kernel, stride, axes, grid, mode, P, iters):
    """One mode on this rank's boxes: a row of the table (or why it was skipped)."""
    base, halo_backward = mode.split("-")[0], "sum" if mode == "halo-sum" else "owned"
    call = dict(shard_axes=axes, process_grid=grid, mode=base, halo_backward=halo_backward)
    try:
        pl = nd.plan(lq, lk, kernel, stride, v=lv, needs_grad=True, **call)
    except ValueError as e:
        return dict(mode=mode, gpus=P, skipped=str(e))
    fwd_only = nd.plan(lq, lk, kernel, stride, v=lv, **call).bytes[base]
    qg, kg, vg = (x.clone().requires_grad_() for x in (lq, lk, lv))
    do = torch.randn_like(lq)
    comm_fwd, comm_bwd, kern_fwd, kern_fb = parts(lq, lk, lv, kernel, stride, pl, mode, iters)
    row = dict(mode=mode, gpus=P, shard_axes=list(axes), process_grid=list(grid),
               fwd_ms=slowest(timed(lambda: nd.neighborhood_attention(
                   lq, lk, lv, kernel, stride, **call), iters)),
               fwd_bwd_ms=slowest(timed(lambda: nd.neighborhood_attention(
                   qg, kg, vg, kernel, stride, **call).backward(do), iters)),
               comm_fwd_ms=slowest(comm_fwd),
               comm_bwd_extra_ms=None if comm_bwd is None else slowest(comm_bwd),
               kernel_fwd_ms=slowest(kern_fwd), kernel_fwd_bwd_ms=slowest(kern_fb),
               bytes_fwd_per_rank=fwd_only, bytes_fwd_bwd_per_rank=pl.bytes[base])
    dist.barrier()
    return row


def run_anchor(name, extents, kernel, stride, heads, P, r, weak, iters, modes, specs):
    dev = torch.device("cpu") if SMOKE else torch.device("cuda", torch.cuda.current_device())
    dtype, hd = (torch.float32, 16) if SMOKE else (torch.bfloat16, 128)
    fn = {2: nattn.na2d, 3: nattn.na3d}[len(extents)]
    rows = []
    if r == 0:  # the whole (weak: base) problem on one GPU, same run, same card
        full = [torch.randn((1, *extents, heads, hd), device=dev, dtype=dtype) for _ in range(3)]
        fwd, fb = one_gpu(fn, *full, kernel, stride, iters)
        rows.append(dict(mode="1 GPU", gpus=1, extents=list(extents), fwd_ms=fwd, fwd_bwd_ms=fb))
        del full
    for spec in specs:
        sp = split(extents, kernel, spec, P)
        if sp is None:
            continue
        axes, grid = sp
        ext = list(extents)
        if weak:
            for a, g in zip(axes, grid):
                ext[a] *= g
        dist.barrier()
        gen = torch.Generator(device=dev).manual_seed(0)  # the same whole problem on every rank
        local = [shard(torch.randn((1, *ext, heads, hd), device=dev, dtype=dtype,
                                   generator=gen), axes, grid, r) for _ in range(3)]
        for mode in modes:
            rows.append(one_mode(*local, kernel, stride, axes, grid, mode, P, iters))
    for row in rows:
        row["anchor"] = name
    return rows


def fmt(x, digits=2):
    return "" if x is None else f"{x:.{digits}f}"


def write_json(path, P, weak, smoke, rows):
    with open(path, "w") as f:
        json.dump(dict(gpus=P, weak=weak, card="cpu" if smoke else torch.cuda.get_device_name(),
                       rows=rows), f, indent=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--anchors", default=",".join(ANCHORS))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--axes", default="1,2", help="comma-separated: 1, 2 or a:b (see docs)")
    ap.add_argument("--weak", action="store_true")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--json")
    ap.add_argument("--smoke", action="store_true",
                    help="CPU processes on gloo, tiny problems: checks the script, times nothing")
    args = ap.parse_args()
    if args.smoke:
        SMOKE.update(ANCHORS={"tiny-3d": ((6, 8, 12), (3, 4, 5), 1, 4),
                              "tiny-2d": ((12, 16), (5, 7), 1, 4)})
        dist.init_process_group("gloo")
    else:
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    P, r = dist.get_world_size(), dist.get_rank()
    rows = []
    anchors = SMOKE.get("ANCHORS", ANCHORS)
    for name in (anchors if args.smoke else args.anchors.split(",")):
        extents, kernel, stride, heads = anchors[name]
        rows += run_anchor(name, extents, kernel, stride, heads, P, r, args.weak, args.iters,
                           args.modes.split(","), args.axes.split(","))
        if r == 0 and args.json:  # after every anchor: a run cut by a timeout keeps its rows
            write_json(args.json, P, args.weak, args.smoke, rows)
    if r == 0:
        print(f"| anchor | mode | GPUs | axes (grid) | fwd ms | fwd+bwd ms | comm fwd ms | "
              f"comm bwd+ ms | kernel fwd ms | kernel fwd+bwd ms | MB/rank fwd | "
              f"MB/rank fwd+bwd | {'weak' if args.weak else 'strong'} |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for x in rows:
            where = (f"{x.get('shard_axes', '')} ({x.get('process_grid', '')})"
                     if "shard_axes" in x else str(x.get("extents", "")))
            if "skipped" in x:
                print(f"| {x['anchor']} | {x['mode']} | {x['gpus']} | | skipped: "
                      f"{x['skipped']} |")
                continue
            mb = [x.get(k) for k in ("bytes_fwd_per_rank", "bytes_fwd_bwd_per_rank")]
            print(f"| {x['anchor']} | {x['mode']} | {x['gpus']} | {where} | {fmt(x['fwd_ms'])} | "
                  f"{fmt(x['fwd_bwd_ms'])} | {fmt(x.get('comm_fwd_ms'))} | "
                  f"{fmt(x.get('comm_bwd_extra_ms'))} | {fmt(x.get('kernel_fwd_ms'))} | "
                  f"{fmt(x.get('kernel_fwd_bwd_ms'))} | "
                  + " | ".join("" if m is None else f"{m / 2**20:.0f}" for m in mb) + " | |")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
