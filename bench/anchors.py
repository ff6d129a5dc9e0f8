"""The anchor benchmark (DESIGN.md): each problem forward (and forward+backward with --backward)
on nattn's CUDA backend, beside dense cuDNN SDPA and FlexAttention with the same NA mask, all in
one run on one card; nattn's output is checked against FlexAttention's (an explicit NA mask
written from SPEC.md here, independent of nattn's window code).

usage: python bench/anchors.py [--only NAME ...] [--backward] [--iters N] [--out FILE.md] [--json FILE.json]
                              [--commit SHA]
       python bench/anchors.py --from-rows FILE.md.rows --card NAME --date DAY --torch VERSION ... (a cut run's rows)
--only runs the named anchors in the order named.
The JSON has the card, commit, command and a row per anchor (anchor, family, config, fwd_ms,
fwd_useful_tflops, cudnn_fwd_ms, flex_fwd_ms, ...; with --backward also mode, fwd_bwd_ms,
fwd_bwd_useful_tflops, cudnn_fwd_bwd_ms, flex_fwd_bwd_ms). The device machine's checkout may
report a stale `git rev-parse HEAD`: pass --commit from the machine that sent the tree.
"""
import argparse
import ast
import contextlib
import datetime
import json
import math
import subprocess
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

import nattn
from timing import bench

# One compiled flex_attention serves every anchor shape: allow a recompile per anchor instead
# of the default limit of 8, past which dynamo falls back to eager (dense math, out of memory).
torch._dynamo.config.cache_size_limit = 64
if hasattr(torch._dynamo.config, "recompile_limit"):
    torch._dynamo.config.recompile_limit = 64

# name, batch, heads, extent, kernel, stride, dilation (bf16, head dim 128)
ANCHORS = [
    ("1d-32k", 1, 16, (32768,), (2048,), (1,), (1,)),
    ("1d-32k-s256", 1, 16, (32768,), (2048,), (256,), (1,)),
    ("flux-2d", 1, 24, (256, 256), (80, 80), (1, 1), (1, 1)),
    ("flux-2d-s16", 1, 24, (256, 256), (80, 80), (16, 16), (1, 1)),
    ("img-2d", 4, 16, (128, 128), (31, 31), (1, 1), (1, 1)),
    ("img-2d-d2", 4, 16, (128, 128), (31, 31), (1, 1), (2, 2)),
    ("hunyuan-3d", 1, 24, (30, 48, 80), (18, 24, 24), (1, 1, 1), (1, 1, 1)),
    ("hunyuan-3d-s", 1, 24, (30, 48, 80), (18, 24, 24), (16, 8, 8), (1, 1, 1)),
    ("cosmos-3d", 1, 32, (16, 44, 80), (12, 32, 32), (1, 1, 1), (1, 1, 1)),
    ("cosmos-3d-s", 1, 32, (16, 44, 80), (12, 32, 32), (8, 22, 16), (1, 1, 1)),
    # The dense case: window = grid (8192 tokens), against cuDNN on the same work.
    ("dense-8k-d128", 2, 16, (8192,), (8192,), (1,), (1,)),
    ("dense-8k-d64", 2, 16, (8192,), (8192,), (1,), (1,), 64),
]
DIM = 128  # unless an anchor names its head dim


def axis_window(i, L, k, s, d, causal=False):
    """SPEC.md's window of query index tensor i along one axis: (group, start, end) in group positions."""
    g, p = i % d, i // d
    Lg = L // d + (g < L % d).to(i.dtype)
    if causal:
        leader = torch.minimum((p // s) * s + s - 1, Lg - 1)
        return g, torch.clamp(leader - (k - 1), min=0), torch.minimum(p + 1, Lg)
    wl, wr = k // 2, k // 2 + k % 2 - 1
    leader = torch.minimum((p // s) * s + s // 2, Lg - 1)
    start = torch.clamp(leader - wl, min=0)
    start = torch.where(leader + wr >= Lg, start + Lg - wr - leader - 1, start)
    return g, start, start + k


def na_mask_mod(extent, kernel, stride, dilation):
    def coords(t):
        out = []
        for x in reversed(extent):
            out.append(t % x)
            t = t // x
        return out[::-1]

    def mask(b, h, q_idx, kv_idx):
        ok = torch.ones_like(q_idx, dtype=torch.bool)
        for a, (qc, kc) in enumerate(zip(coords(q_idx), coords(kv_idx))):
            g, start, end = axis_window(qc, extent[a], kernel[a], stride[a], dilation[a])
            ok = ok & (kc % dilation[a] == g) & (kc // dilation[a] >= start) & (kc // dilation[a] < end)
        return ok
    return mask


def attended_pairs(extent, kernel, stride, dilation):
    pairs = 1
    for a in range(len(extent)):
        i = torch.arange(extent[a])
        _, s, e = axis_window(i, extent[a], kernel[a], stride[a], dilation[a])
        pairs *= int((e - s).sum())
    return pairs


@contextlib.contextmanager
def deterministic(on):
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(on, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was)


def run_anchor(anchor, iters, backward, modes=()):
    name, B, H, extent, kernel, stride, dilation = anchor[:7]
    dim = anchor[7] if len(anchor) > 7 else DIM
    N = math.prod(extent)
    q, k, v = (torch.randn(B, *extent, H, dim, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    fn = {1: nattn.na1d, 2: nattn.na2d, 3: nattn.na3d}[len(extent)]
    pairs = attended_pairs(extent, kernel, stride, dilation)
    useful = 4.0 * B * H * dim * pairs
    limit = N * N / pairs
    row = dict(name=name, tokens="x".join(map(str, extent)), window="x".join(map(str, kernel)),
               stride="x".join(map(str, stride)), dilation="x".join(map(str, dilation)), limit=limit)

    na = lambda: fn(q, k, v, kernel, stride=stride, dilation=dilation)  # noqa: E731
    plan = nattn.explain(q, k, v, kernel_size=kernel, stride=stride, dilation=dilation)
    row["family"] = plan.family
    row["config"] = ",".join(str(kk["config_id"]) for kk in plan.kernels if kk["config_id"] >= 0)
    row["nattn_ms"] = bench(na, iters)
    row["tflops"] = useful / row["nattn_ms"] / 1e9

    qt, kt, vt = (x.flatten(1, -3).transpose(1, 2).contiguous() for x in (q, k, v))  # [B, H, N, D]
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        row["sdpa_ms"] = bench(lambda: F.scaled_dot_product_attention(qt, kt, vt), iters)
    # _compile avoids materialising the N x N mask (3-D anchors have ~10^5 tokens).
    block_mask = create_block_mask(na_mask_mod(extent, kernel, stride, dilation), None, None, N, N, device="cuda",
                                   _compile=True)
    flex = torch.compile(flex_attention, dynamic=False)
    row["flex_ms"] = bench(lambda: flex(qt, kt, vt, block_mask=block_mask), iters)
    ref = flex(qt, kt, vt, block_mask=block_mask).float()
    out = na().flatten(1, -3).transpose(1, 2).float()
    row["err"] = ((out - ref).norm() / ref.norm()).item()
    if backward:
        # Forward + backward of each, the same upstream gradient; FLOPs counted as 3.5x the
        # forward's (backward = 2.5x: five products of the forward's size).
        qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))
        qtg, ktg, vtg = (x.detach().requires_grad_() for x in (qt, kt, vt))
        dout = torch.randn_like(q)
        dout_t = dout.flatten(1, -3).transpose(1, 2).contiguous()
        reps = max(3, iters // 4)

        def fb():
            o = fn(qg, kg, vg, kernel, stride=stride, dilation=dilation)
            return torch.autograd.grad(o, (qg, kg, vg), dout)

        def fb_sdpa():
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                o = F.scaled_dot_product_attention(qtg, ktg, vtg)
            return torch.autograd.grad(o, (qtg, ktg, vtg), dout_t)

        def fb_flex():
            o = flex(qtg, ktg, vtg, block_mask=block_mask)
            return torch.autograd.grad(o, (qtg, ktg, vtg), dout_t)
        row["sdpa_fb_ms"] = bench(fb_sdpa, reps)
        row["flex_fb_ms"] = bench(fb_flex, reps)
        want = fb_flex()
        # nattn's backward in each mode: fast (the default) and deterministic (what nattn runs
        # under torch.use_deterministic_algorithms; only nattn's calls are timed inside it).
        for mode in modes:
            with deterministic(mode == "deterministic"):
                bplan = nattn.explain(q, k, v, kernel_size=kernel, stride=stride, dilation=dilation, backward=True)
                row[f"{mode}_bwd_family"] = bplan.family
                row[f"{mode}_bwd_config"] = ",".join(str(kk["config_id"]) for kk in bplan.kernels
                                                     if kk["config_id"] >= 0)
                row[f"{mode}_fb_ms"] = bench(fb, reps)
                got = fb()
            row[f"{mode}_fb_tflops"] = 3.5 * useful / row[f"{mode}_fb_ms"] / 1e9
            row[f"{mode}_grad_err"] = max(
                ((a.flatten(1, -3).transpose(1, 2).float() - b.float()).norm() / b.float().norm()).item()
                for a, b in zip(got, want))
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--backward", action="store_true")
    ap.add_argument("--modes", default="fast,deterministic",
                    help="backward modes timed with --backward (comma-separated: fast, deterministic)")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--out")
    ap.add_argument("--json")
    ap.add_argument("--commit", help="the commit the tree was sent from (the device checkout may be stale)")
    ap.add_argument("--from-rows", help="write --out/--json from a cut run's OUT.rows file instead of running")
    ap.add_argument("--card", help="with --from-rows: the card the rows ran on")
    ap.add_argument("--date", help="with --from-rows: the day they ran")
    ap.add_argument("--torch", help="with --from-rows: the torch version they ran with")
    ap.add_argument("--ran", help="with --from-rows: the command that ran them")
    a = ap.parse_args()
    modes = [m for m in a.modes.split(",") if m] if a.backward else []
    commit = a.commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                        text=True).stdout.strip()
    command = "python bench/anchors.py " + " ".join(sys.argv[1:])
    if a.from_rows:  # a run cut short: its finished rows, written out here
        with open(a.from_rows) as f:
            rows = [ast.literal_eval(line) for line in f if line.strip()]
        ran = f"rows of `{a.ran}` (cut by its time limit), written by `{command}`" if a.ran else command
        write_outputs(rows, modes, a.card or "n/a", a.date or str(datetime.date.today()), commit, a.torch or "n/a",
                      ran, a.out, a.json)
        return
    rows = []
    # In the order --only names them (a run cut by a time limit keeps the first), else the table's.
    by_name = {x[0]: x for x in ANCHORS}
    unknown = [n for n in (a.only or []) if n not in by_name]
    if unknown:
        sys.exit(f"unknown anchors {unknown}; known: {list(by_name)}")
    for x in ([by_name[n] for n in a.only] if a.only else ANCHORS):
        rows.append(run_anchor(x, a.iters, a.backward, modes))
        torch.cuda.empty_cache()  # the anchor's tensors died with run_anchor
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in rows[-1].items()}, flush=True)
        if a.out:  # keep what finished even if a later anchor fails
            with open(a.out + ".rows", "a") as f:
                f.write(repr(rows[-1]) + "\n")
    write_outputs(rows, modes, torch.cuda.get_device_name(), str(datetime.date.today()), commit, torch.__version__,
                  command, a.out, a.json)


def write_outputs(rows, modes, card, date, commit, torch_version, command, out, json_path):
    """The markdown table (printed, and to out) and the JSON rows (to json_path) of finished anchors."""
    lines = [f"card: {card}  date: {date}  commit: {commit or 'n/a'}  "
             f"torch {torch_version}  command: {command}", "",
             "| anchor | family (config) | tokens | window | stride | dil | nattn ms | useful TFLOP/s | cuDNN SDPA ms | x SDPA | Flex ms | x Flex | FLOP-wise limit | rel err vs Flex |"
             + "".join(f" {m} bwd (config) | {m} fwd+bwd ms | TFLOP/s | x SDPA | x Flex | grad err |" for m in modes)
             + (" SDPA fwd+bwd ms | Flex fwd+bwd ms |" if modes else ""),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|" + "---|---|---|---|---|---|" * len(modes)
             + ("---|---|" if modes else "")]
    for r in rows:
        line = (f"| {r['name']} | {r['family']} ({r['config']}) | {r['tokens']} | {r['window']} | {r['stride']} | {r['dilation']} | {r['nattn_ms']:.3f} | "
                f"{r['tflops']:.1f} | {r['sdpa_ms']:.3f} | {r['sdpa_ms'] / r['nattn_ms']:.2f} | {r['flex_ms']:.3f} | "
                f"{r['flex_ms'] / r['nattn_ms']:.2f} | {r['limit']:.2f} | {r['err']:.2e} |")
        for m in modes:
            line += (f" {r[m + '_bwd_family']} ({r[m + '_bwd_config']}) | {r[m + '_fb_ms']:.3f} | {r[m + '_fb_tflops']:.1f} |"
                     f" {r['sdpa_fb_ms'] / r[m + '_fb_ms']:.2f} | {r['flex_fb_ms'] / r[m + '_fb_ms']:.2f} |"
                     f" {r[m + '_grad_err']:.2e} |")
        if modes:
            line += f" {r['sdpa_fb_ms']:.3f} | {r['flex_fb_ms']:.3f} |"
        lines.append(line)
    text = "\n".join(lines)
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")
    if json_path:
        out_rows = []
        for r in rows:
            j = {"anchor": r["name"], "family": r["family"], "config": r["config"], "tokens": r["tokens"],
                 "window": r["window"], "stride": r["stride"], "dilation": r["dilation"], "fwd_ms": r["nattn_ms"],
                 "fwd_useful_tflops": r["tflops"], "cudnn_fwd_ms": r["sdpa_ms"], "flex_fwd_ms": r["flex_ms"],
                 "flopwise_limit": r["limit"], "rel_err_vs_flex": r["err"]}
            for m in modes:  # one row per backward mode
                jm = dict(j, mode=m, bwd_family=r[m + "_bwd_family"], bwd_config=r[m + "_bwd_config"],
                          fwd_bwd_ms=r[m + "_fb_ms"], fwd_bwd_useful_tflops=r[m + "_fb_tflops"],
                          cudnn_fwd_bwd_ms=r["sdpa_fb_ms"], flex_fwd_bwd_ms=r["flex_fb_ms"],
                          grad_rel_err_vs_flex=r[m + "_grad_err"])
                out_rows.append(jm)
            if not modes:
                out_rows.append(j)
        with open(json_path, "w") as f:
            json.dump({"card": card, "date": date, "commit": commit, "torch": torch_version, "command": command,
                       "rows": out_rows}, f, indent=1)


if __name__ == "__main__":
    main()
