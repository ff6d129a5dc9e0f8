#!/usr/bin/env python3
"""Summarises an `ncu --page source --csv --print-source sass` dump (scripts/profile.sh writes
one): the instruction mix by opcode and where the warp-stall samples fall, so a profile can be
read (and committed) as a few lines. usage: profile_summary.py FILE.source.csv [top N]"""
import collections
import csv
import sys


def main(path: str, top: int) -> None:
    rows = list(csv.reader(open(path)))
    header = rows[1]
    col = {name: i for i, name in enumerate(header)}
    ops, stalls = collections.Counter(), collections.Counter()
    reasons = collections.Counter()
    reason_cols = [n for n in header if n.startswith("stall_") and "Not Issued" not in n]
    for r in rows[2:]:
        src = r[col["Source"]].strip()
        if not src:
            continue
        words = src.split()
        op = words[1] if words[0].startswith("@") and len(words) > 1 else words[0]
        op = op.split(".")[0]
        ops[op] += int(r[col["Instructions Executed"]] or 0)
        stalls[op] += int(r[col["Warp Stall Sampling (All Samples)"]] or 0)
        for n in reason_cols:
            reasons[n] += int(r[col[n]] or 0)
    total, samples = sum(ops.values()), max(1, sum(stalls.values()))
    print(f"{path}: {total:.3e} warp instructions")
    for op, n in ops.most_common(top):
        print(f"  {op:10s} {100 * n / total:5.1f}% of instructions   {100 * stalls[op] / samples:5.1f}% of stall samples")
    rs = max(1, sum(reasons.values()))
    print("  stall reasons: " + ", ".join(f"{k[6:]} {100 * v / rs:.0f}%" for k, v in reasons.most_common(6)))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 15)
