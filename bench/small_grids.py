"""Small grids (issue 11 item 4): the attention of NAT/DiNAT-like hierarchical stacks, per stage,
forward and forward+backward, nattn beside FlexAttention (the same neighborhood as a block mask)
and dense SDPA (cuDNN first), all in one run on one card. These are the shapes of NAT-Tiny at
224x224 (batch 32, window 7x7, head dim 32: 56x56 with 2 heads, 28x28/4, 14x14/8, 7x7/16); the
DiNAT variant dilates by 8, 4, 2, 1 where the extent allows (kernel x dilation <= extent).
Also the sum over a NAT-Tiny step's attention calls (2, 2, 6, 2 blocks per stage), to set beside
the training-step times of bench/models.py.

usage: python bench/small_grids.py [--iters N] [--out FILE.md] [--json FILE.json] [--commit SHA]
"""
import argparse
import datetime
import json
import sys

import torch
import torch.nn.functional as F
from anchors import na_mask_mod
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

import nattn
from timing import bench

BATCH, KERNEL, DIM = 32, 7, 32
STAGES = [(56, 2), (28, 4), (14, 8), (7, 16)]  # (extent per axis, heads)
DEPTHS = [2, 2, 6, 2]  # NAT-Tiny blocks per stage
DINAT_DILATION = [8, 4, 2, 1]


def run_stage(extent, heads, dilation, iters):
    ext, ker, st, dil = (extent, extent), (KERNEL, KERNEL), (1, 1), (dilation, dilation)
    n = extent * extent
    q, k, v = (torch.randn(BATCH, extent, extent, heads, DIM, device="cuda", dtype=torch.bfloat16,
                           requires_grad=True) for _ in range(3))
    dout = torch.randn_like(q)
    plan = nattn.explain(q, k, v, kernel_size=ker, dilation=dil)
    bplan = nattn.explain(q, k, v, kernel_size=ker, dilation=dil, backward=True)
    # "+h": planned with the heads as a grid axis (several heads' small grids per box).
    packed = any("heads as grid axis" in f.reason for f in plan.families if f.chosen)
    row = dict(stage=f"{extent}x{extent}", heads=heads, dilation=dilation,
               family=plan.family + ("+h" if packed else ""), backward_family=bplan.family,
               heads_axis=packed)

    def na():
        return nattn.na2d(q, k, v, ker, dilation=dil)

    def na_fb():
        torch.autograd.grad(na(), (q, k, v), dout)

    qt, kt, vt = (x.detach().flatten(1, 2).transpose(1, 2).contiguous().requires_grad_() for x in (q, k, v))
    dout_t = dout.flatten(1, 2).transpose(1, 2).contiguous()

    def sdpa():
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
            return F.scaled_dot_product_attention(qt, kt, vt)

    def sdpa_fb():
        torch.autograd.grad(sdpa(), (qt, kt, vt), dout_t)

    block_mask = create_block_mask(na_mask_mod(ext, ker, st, dil), None, None, n, n, device="cuda")
    flex_c = torch.compile(flex_attention, dynamic=False)

    def flex():
        return flex_c(qt, kt, vt, block_mask=block_mask)

    def flex_fb():
        torch.autograd.grad(flex(), (qt, kt, vt), dout_t)

    with torch.no_grad():
        row["nattn_fwd_ms"] = bench(na, iters)
        row["sdpa_fwd_ms"] = bench(sdpa, iters)
        row["flex_fwd_ms"] = bench(flex, iters)
        ref = flex().float()
        out = na().flatten(1, 2).transpose(1, 2).float()
        row["rel_err_vs_flex"] = ((out - ref).norm() / ref.norm()).item()
    row["nattn_fwd_bwd_ms"] = bench(na_fb, iters)
    row["sdpa_fwd_bwd_ms"] = bench(sdpa_fb, iters)
    row["flex_fwd_bwd_ms"] = bench(flex_fb, iters)
    for m in ("fwd", "fwd_bwd"):
        best = min(row[f"sdpa_{m}_ms"], row[f"flex_{m}_ms"])
        row[f"{m}_x_best_other"] = best / row[f"nattn_{m}_ms"]  # > 1: nattn faster than both
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--out")
    ap.add_argument("--json")
    ap.add_argument("--commit")
    args = ap.parse_args()
    torch._dynamo.config.cache_size_limit = 64
    rows = []
    for model, dils in (("NAT", [1, 1, 1, 1]), ("DiNAT", DINAT_DILATION)):
        for (extent, heads), d, depth in zip(STAGES, dils, DEPTHS):
            d = d if KERNEL * d <= extent else 1
            row = run_stage(extent, heads, d, args.iters)
            row["model"], row["blocks"] = model, depth
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
    card = torch.cuda.get_device_name()
    lines = [f"# Small grids: NAT/DiNAT stages ({card}, {datetime.date.today()})", "",
             f"Card: {card}, torch {torch.__version__}, nattn commit {args.commit or '?'}. Command: "
             f"`python bench/small_grids.py {' '.join(sys.argv[1:])}`. Batch {BATCH}, bf16, window {KERNEL}x{KERNEL}, "
             f"head dim {DIM}; ms per call (bench/timing.py: back-to-back calls).", "",
             "| model | stage | heads | dil | family fwd/bwd (+h: heads as grid axis) | nattn fwd | Flex fwd "
             "| SDPA fwd | nattn f+b | Flex f+b "
             "| SDPA f+b | fwd: best other / nattn | f+b: best other / nattn |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['stage']} | {r['heads']} | {r['dilation']} "
                     f"| {r['family']}/{r['backward_family']} "
                     f"| {r['nattn_fwd_ms']:.3f} | {r['flex_fwd_ms']:.3f} | {r['sdpa_fwd_ms']:.3f} "
                     f"| {r['nattn_fwd_bwd_ms']:.3f} | {r['flex_fwd_bwd_ms']:.3f} | {r['sdpa_fwd_bwd_ms']:.3f} "
                     f"| {r['fwd_x_best_other']:.2f} | {r['fwd_bwd_x_best_other']:.2f} |")
    lines.append("")
    for model in ("NAT", "DiNAT"):
        per = {w: sum(r[f"{w}_fwd_bwd_ms"] * r["blocks"] for r in rows if r["model"] == model)
               for w in ("nattn", "flex", "sdpa")}
        lines.append(f"{model}-Tiny, one training step's attention (forward+backward, blocks 2/2/6/2): nattn "
                     f"{per['nattn']:.2f} ms, Flex {per['flex']:.2f} ms, SDPA {per['sdpa']:.2f} ms.")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        open(args.out, "w").write(text)
    if args.json:
        json.dump(dict(card=card, date=str(datetime.date.today()), commit=args.commit, torch=torch.__version__,
                       command="python bench/small_grids.py " + " ".join(sys.argv[1:]), rows=rows),
                  open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
