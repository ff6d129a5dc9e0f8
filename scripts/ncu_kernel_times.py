"""Per-kernel durations from `ncu --csv --metrics gpu__time_duration.sum` (stdin), one line per
kernel of the last launch of each kernel name: "LABEL | PROBLEM | kernel | us".

usage: ncu --csv --metrics gpu__time_duration.sum PROGRAM ... | python3 scripts/ncu_kernel_times.py LABEL PROBLEM
Used by scripts/gpu_followups.sh kernel-times: nattn-bench runs a warm-up step and a timed
one, so the last launch of a name is the timed step's (ncu locks the clocks to base: compare
durations within one run, not against nattn-bench's times).
"""
import csv
import re
import sys


def short(name):
    # "void nattn::cuda::sm90::fna_backward_dq_kernel<nattn::cuda::sm90::DqTraits<...>>(...)" ->
    # "sm90::fna_backward_dq_kernel<DqTraits<...>>"
    name = re.sub(r"\(.*$", "", name)
    name = name.replace("void ", "").replace("nattn::cuda::", "").replace("cutlass::", "")
    return re.sub(r"sm90::(?=\w+Traits)", "", name)


def main():
    label, problem = sys.argv[1], sys.argv[2]
    rows = [line for line in sys.stdin if line.startswith('"')]
    last = {}
    for rec in csv.DictReader(rows):
        if rec.get("Metric Name") != "gpu__time_duration.sum":
            continue
        value = float(rec["Metric Value"].replace(",", ""))
        unit = rec.get("Metric Unit", "")
        us = value / 1000.0 if unit in ("nsecond", "ns") else value * 1000.0 if unit in ("msecond", "ms") else value
        last[short(rec["Kernel Name"])] = us
    for kernel, us in last.items():
        print(f"{label:<9} {problem} | {kernel} | {us:.1f} us")
    if not last:
        print(f"{label:<9} {problem} | no kernels parsed")


if __name__ == "__main__":
    main()
