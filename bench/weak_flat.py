"""Weak-scaling baselines for bench/distributed.py --weak (issue 12), on one GPU: forward+backward
of each anchor's base problem and of the problem grown 2x and 4x along the axis that
distributed.py splits (--axes 1), all in one run. The grown grids clamp fewer windows at their
ends than the base grid, so a query of the grown problem costs the kernels a little more: the
1-GPU time of the grown problem divided by P is the flat line that separates that cost from the
cost of distributing the work.

usage: python bench/weak_flat.py [--iters N] [--json FILE]
"""
import argparse
import json

import torch
from distributed import ANCHORS, best_axes

import nattn
from timing import bench


def fwd_bwd_ms(grid, kernel, heads, iters):
    q, k, v, g = (torch.randn(1, *grid, heads, 128, device="cuda", dtype=torch.bfloat16)
                  for _ in range(4))
    for x in (q, k, v):
        x.requires_grad_()
    na = (nattn.na1d, nattn.na2d, nattn.na3d)[len(grid) - 1]
    return bench(lambda: torch.autograd.grad(na(q, k, v, kernel), (q, k, v), g), iters, calls=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = []
    for name, (extents, kernel, _, heads) in ANCHORS.items():
        axis = best_axes(extents, kernel, 1)[0]
        for p in (1, 2, 4):
            grid = list(extents)
            grid[axis] *= p
            fb = fwd_bwd_ms(grid, kernel, heads, args.iters)
            rows.append(dict(anchor=name, P=p, grid=grid, fwd_bwd_ms=fb, per_shard_ms=fb / p))
            print(f"{name} P={p} grid {'x'.join(map(str, grid))}: fwd+bwd {fb:.2f} ms, "
                  f"per shard {fb / p:.2f} ms", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(card=torch.cuda.get_device_name(), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
