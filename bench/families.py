"""Forward time of each fused kernel family on the anchors (DESIGN.md), side by side in one run on
one card, with dense cuDNN SDPA for the dense case: a quick check of a family against another
(FlexAttention and the full report are bench/anchors.py).

usage: python bench/families.py [--families sm90,sm80] [--only NAME ...] [--iters N] [--json FILE]
"""
import argparse
import json
import math

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import nattn
from timing import bench

# name, batch, heads, extent, kernel, stride, dilation, head dim (bf16)
ANCHORS = [
    ("dense-8k-d128", 2, 16, (8192,), (8192,), (1,), (1,), 128),
    ("dense-8k-d64", 2, 16, (8192,), (8192,), (1,), (1,), 64),
    ("1d-32k", 1, 16, (32768,), (2048,), (1,), (1,), 128),
    ("1d-32k-s256", 1, 16, (32768,), (2048,), (256,), (1,), 128),
    ("flux-2d", 1, 24, (256, 256), (80, 80), (1, 1), (1, 1), 128),
    ("flux-2d-s16", 1, 24, (256, 256), (80, 80), (16, 16), (1, 1), 128),
    ("img-2d", 4, 16, (128, 128), (31, 31), (1, 1), (1, 1), 128),
    ("hunyuan-3d", 1, 24, (30, 48, 80), (18, 24, 24), (1, 1, 1), (1, 1, 1), 128),
    ("hunyuan-3d-s", 1, 24, (30, 48, 80), (18, 24, 24), (16, 8, 8), (1, 1, 1), 128),
    ("cosmos-3d-s", 1, 32, (16, 44, 80), (12, 32, 32), (8, 22, 16), (1, 1, 1), 128),
]


def pairs_of(extent, kernel):
    """Attended pairs per (batch, head) of a non-causal window (SPEC.md: every query of an axis
    sees kernel_size keys of it, whatever the stride and dilation)."""
    return math.prod(x * k for x, k in zip(extent, kernel))


def run_anchor(anchor, fams, iters):
    name, B, H, extent, kernel, stride, dilation, dim = anchor
    q, k, v = (torch.randn(B, *extent, H, dim, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    fn = {1: nattn.na1d, 2: nattn.na2d, 3: nattn.na3d}[len(extent)]
    useful = 4.0 * B * H * dim * pairs_of(extent, kernel)
    row = {"anchor": name}
    for f in fams:
        try:
            with nattn.kernel_choice(family=f):
                plan = nattn.explain(q, k, v, kernel_size=kernel, stride=stride, dilation=dilation)
                ms = bench(lambda: fn(q, k, v, kernel, stride=stride, dilation=dilation), iters)
            row[f] = {"ms": ms, "tflops": useful / ms / 1e9, "config": plan.kernels[0]["config_id"],
                      "tiles": [plan.kernels[0]["own_tile"], plan.kernels[0]["walk_tile"]]}
        except Exception as e:  # noqa: BLE001 (reported in the table)
            row[f] = {"error": str(e)[:200]}
    N = math.prod(extent)
    qt, kt, vt = (x.reshape(B, N, H, dim).transpose(1, 2).contiguous() for x in (q, k, v))
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        ms = bench(lambda: F.scaled_dot_product_attention(qt, kt, vt), iters)
    row["cudnn"] = {"ms": ms, "tflops": 4.0 * B * H * dim * N * N / ms / 1e9}
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--families", default="sm90,sm80")
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--json")
    a = ap.parse_args()
    fams = a.families.split(",")
    rows = []
    print(f"card: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    print("| anchor | " + " | ".join(f"{f} ms | {f} TFLOP/s" for f in fams) + " | cuDNN dense ms | cuDNN TFLOP/s |")
    print("|---|" + "---|---|" * len(fams) + "---|---|")
    for anchor in ANCHORS:
        if a.only and anchor[0] not in a.only:
            continue
        row = run_anchor(anchor, fams, a.iters)
        rows.append(row)
        cells = []
        for f in fams:
            r = row[f]
            cells += [f"{r['ms']:.3f}", f"{r['tflops']:.0f}"] if "ms" in r else [r["error"][:60], ""]
        print(f"| {row['anchor']} | " + " | ".join(cells) + f" | {row['cudnn']['ms']:.3f} | "
              f"{row['cudnn']['tflops']:.0f} |", flush=True)
        torch.cuda.empty_cache()
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"card": torch.cuda.get_device_name(), "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
