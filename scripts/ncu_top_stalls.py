"""Where a kernel's warps wait, per SASS instruction, from an ncu source page: for each kernel
of `ncu --import R.ncu-rep --page source --print-source sass --csv` (gpu_followups.sh ncu-src
writes one per problem), the share of stall samples per reason and the instructions holding the
most samples of each leading reason, as a few lines to read and commit.

usage: python3 scripts/ncu_top_stalls.py FILE.csv[.gz] [--reasons N] [--top N]
ncu files a warp waiting at WARPGROUP.DEPBAR (warpgroup_wait: its own products) under
"barrier", and one waiting for an mbarrier (a stage to land) under "long_sb" at the branch of
the try-wait loop; read each site against the kernel source (docs/design/hopper_backward.md).
"""
import argparse
import csv
import gzip
import io


def sections(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        lines = f.read().splitlines()
    start = None
    for i, line in enumerate(lines + ['"Kernel Name",']):
        if line.startswith('"Kernel Name"'):
            if start is not None:
                yield lines[start].split(",", 1)[1].strip().strip(","), lines[start + 1:i]
            start = i


def summarize(name, rows, n_reasons, top):
    table = list(csv.DictReader(io.StringIO("\n".join(rows))))
    if not table:
        return
    reasons = [k for k in table[0] if k.startswith("stall_") and "Not Issued" not in k]

    def num(r, k):
        try:
            return float(r.get(k) or 0)
        except ValueError:
            return 0.0

    total = sum(num(r, "Warp Stall Sampling (All Samples)") for r in table) or 1.0
    by_reason = {k: sum(num(r, k) for r in table) for k in reasons}
    lead = sorted(by_reason, key=by_reason.get, reverse=True)
    print(f"== {name[:160]}")
    print(f"  {len(table)} instructions, {total:.0f} samples; " +
          ", ".join(f"{k[6:]} {100 * by_reason[k] / total:.1f}%" for k in lead[:8]))
    for k in lead[:n_reasons]:
        print(f"  top {k}:")
        for r in sorted(table, key=lambda r: num(r, k), reverse=True)[:top]:
            if num(r, k) <= 0:
                break
            print(f"    {r['Address']:>16} {r['Source'].strip()[:64]:64s} {100 * num(r, k) / total:6.2f}%")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--reasons", type=int, default=5)
    ap.add_argument("--top", type=int, default=6)
    a = ap.parse_args()
    for name, rows in sections(a.csv):
        summarize(name, rows, a.reasons, a.top)


if __name__ == "__main__":
    main()
