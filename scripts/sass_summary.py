"""Per-kernel resource and instruction summary of a CUDA binary, without a GPU.

usage: python3 scripts/sass_summary.py BINARY [CUOBJDUMP]
Prints, per kernel (demangled short name): registers, stack, local memory, SASS instruction
count and the count of tensor-core (HMMA/HGMMA) instructions. Two builds' summaries diffed
tell whether a refactor changed the generated code. cuobjdump comes with the CUDA toolkit or
the nvidia-cuda-cuobjdump wheel (`pip download nvidia-cuda-cuobjdump`).
"""
import re
import subprocess
import sys


def main():
    binary = sys.argv[1]
    tool = sys.argv[2] if len(sys.argv) > 2 else "cuobjdump"
    res = subprocess.run([tool, "-res-usage", binary], capture_output=True, text=True, check=True).stdout
    usage = {}
    fn = None
    for line in res.splitlines():
        m = re.search(r"Function (\S+):", line)
        if m:
            fn = m.group(1)
            continue
        m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", line)
        if m and fn:
            usage[fn] = tuple(int(x) for x in m.groups())
    sass = subprocess.run([tool, "-sass", binary], capture_output=True, text=True, check=True).stdout
    counts, mma = {}, {}
    fn = None
    for line in sass.splitlines():
        m = re.search(r"Function : (\S+)", line)
        if m:
            fn = m.group(1)
            counts[fn] = mma[fn] = 0
            continue
        if fn and re.match(r"\s+/\*[0-9a-f]{4,}\*/\s+\S", line):
            counts[fn] += 1
            if "HMMA" in line or "HGMMA" in line:
                mma[fn] += 1
    names = subprocess.run(["c++filt"], input="\n".join(usage), capture_output=True, text=True).stdout.split("\n")
    rows = []
    for raw, name in zip(usage, names):
        short = re.sub(r"nattn::cuda::|void |\(.*$", "", name)
        reg, stack, _, local = usage[raw]
        rows.append((short, reg, stack, local, counts.get(raw, 0), mma.get(raw, 0)))
    print(f"{'kernel':<100} {'reg':>4} {'stack':>5} {'local':>5} {'instr':>6} {'mma':>5}")
    for r in sorted(rows):
        print(f"{r[0][:100]:<100} {r[1]:>4} {r[2]:>5} {r[3]:>5} {r[4]:>6} {r[5]:>5}")


if __name__ == "__main__":
    main()
