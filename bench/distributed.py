"""Multi-GPU neighborhood attention (issue 12): the attention op alone, forward and
forward+backward, per mode (heads, halo, allgather), against the same problem on one GPU.

Launch with torchrun, one process per GPU (NVLink multicast stays off, DISTRIBUTED.md):
  NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 \\
    torchrun --standalone --nproc-per-node 2 bench/distributed.py --json out.json
Strong scaling: the anchor as given, split along its best axis (largest extent / (kernel *
dilation)). Weak scaling (--weak): the split axis grows with the number of GPUs. Rank 0 prints
a markdown table (and writes --json): time per mode, the time of the collectives alone (the
same transfers without the kernels), bytes sent per rank, and the 1-GPU time of the whole
problem measured in the same run on rank 0's GPU.
"""
import argparse
import json
import os
import sys

import torch
import torch.distributed as dist

import nattn
import nattn.distributed as nd

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


def best_axis(extents, kernel):
    return max(range(len(extents)), key=lambda a: extents[a] / kernel[a])


def slab(x, axis, r, P):
    """Rank r's slab along spatial axis `axis` (torch.chunk sizes, as DTensor)."""
    return torch.chunk(x, P, dim=1 + axis)[r].contiguous()


def one_gpu(fn, q, k, v, kernel, stride, iters):
    """The whole problem on this GPU: (forward ms, forward+backward ms)."""
    qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
    do = torch.randn_like(q)
    return (bench(lambda: fn(q, k, v, kernel, stride), iters),
            bench(lambda: fn(qg, kg, vg, kernel, stride).backward(do), iters))


def one_mode(lq, lk, lv, kernel, stride, a, mode, P, iters):
    """One mode on this rank's slabs: a row of the table (or why it was skipped)."""
    try:
        pl = nd.plan(lq, lk, kernel, stride, group=None, shard_axis=a, mode=mode)
    except ValueError as e:
        return dict(mode=mode, gpus=P, skipped=str(e))
    qg, kg, vg = (x.clone().requires_grad_() for x in (lq, lk, lv))
    do = torch.randn_like(lq)
    group = nd._group_name(dist.group.WORLD)
    call = dict(shard_axis=a, mode=mode)

    def comm():  # the forward's transfers alone
        if mode == "heads":
            for x in (lq, lk, lv):
                y = nd.dist_scatter_heads(x, 1 + a, pl["sizes"], group)
            nd.dist_gather_heads(y, 1 + a, pl["sizes"], group)
            return
        boxes = pl["boxes"] if mode == "halo" else [0, pl["global_extent"]] * P
        for x in (lk, lv):
            nd.dist_halo_gather(x, 1 + a, pl["owned"], boxes, group)

    row = dict(mode=mode, gpus=P, split_axis=a,
               fwd_ms=bench(lambda: nd.neighborhood_attention(lq, lk, lv, kernel, stride, **call),
                            iters),
               fwd_bwd_ms=bench(lambda: nd.neighborhood_attention(
                   qg, kg, vg, kernel, stride, **call).backward(do), iters),
               comm_fwd_ms=bench(comm, iters), bytes_sent_per_rank=pl["bytes"][mode])
    dist.barrier()
    return row


def run_anchor(name, extents, kernel, stride, heads, P, r, weak, iters, modes):
    extents = list(extents)
    a = best_axis(extents, kernel)
    if weak:
        extents[a] *= P
    dev = torch.device("cuda", torch.cuda.current_device())
    shape = (1, *extents, heads, 128)
    full = [torch.randn(shape, device=dev, dtype=torch.bfloat16) for _ in range(3)]
    fn = {2: nattn.na2d, 3: nattn.na3d}[len(extents)]
    rows = []
    if r == 0:  # the whole problem on one GPU, same run, same card
        fwd, fb = one_gpu(fn, *full, kernel, stride, iters)
        rows.append(dict(mode="1 GPU", gpus=1, split_axis=a, fwd_ms=fwd, fwd_bwd_ms=fb))
    dist.barrier()
    local = [slab(x, a, r, P) for x in full]
    full.clear()
    for mode in modes:
        rows.append(one_mode(*local, kernel, stride, a, mode, P, iters))
    for row in rows:
        row["anchor"] = name
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--anchors", default=",".join(ANCHORS))
    ap.add_argument("--modes", default="heads,halo,allgather")
    ap.add_argument("--weak", action="store_true")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--json")
    args = ap.parse_args()
    local = int(os.environ.get("LOCAL_RANK", 0))
    torch.cuda.set_device(local)
    dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    P, r = dist.get_world_size(), dist.get_rank()
    rows = []
    for name in args.anchors.split(","):
        extents, kernel, stride, heads = ANCHORS[name]
        rows += run_anchor(name, extents, kernel, stride, heads, P, r, args.weak, args.iters,
                           args.modes.split(","))
    if r == 0:
        print(f"| anchor | mode | GPUs | fwd ms | fwd+bwd ms | comm fwd ms | MB sent/rank | "
              f"{'weak' if args.weak else 'strong'} |")
        print("|---|---|---|---|---|---|---|---|")
        for x in rows:
            if "skipped" in x:
                print(f"| {x['anchor']} | {x['mode']} | {x['gpus']} | skipped: {x['skipped']} |")
                continue
            mb = x.get("bytes_sent_per_rank")
            print(f"| {x['anchor']} | {x['mode']} | {x['gpus']} | {x['fwd_ms']:.2f} | "
                  f"{x['fwd_bwd_ms']:.2f} | {x.get('comm_fwd_ms', 0):.2f} | "
                  f"{'' if mb is None else f'{mb / 2**20:.0f}'} | |")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(dict(gpus=P, weak=args.weak, card=torch.cuda.get_device_name(),
                               rows=rows), f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
