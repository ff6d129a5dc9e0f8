"""CUDA compiler launcher: runs the compile, passes its output through (minus ptxas's per-kernel
info lines) and fails it when
  * ptxas reports spill stores or loads in a kernel that cmake/spill_allowlist.txt does not name, or
  * ptxas reports wgmma serialization (C7510, C7511, C7512, C7515, C7517, or any other line saying
    wgmma instructions "are serialized") or an ignored setmaxnreg (C7508): each costs a large
    fraction of a Hopper kernel's speed (shared/HOPPER.md). C7512 ("insufficient register
    resources") was missing from the list until 2026-12-05: a reordering that held one more tile
    of registers serialised every product of the d128 dK/dV kernel and the build still passed.

usage (set by cmake/cuda.cmake as CUDA_COMPILER_LAUNCHER): ptxas_check.py ALLOWLIST COMPILER ARGS...
The compile needs -Xptxas=-v for the per-kernel resource lines this reads.
"""
import re
import subprocess
import sys

FATAL_WARNINGS = ("C7510", "C7511", "C7512", "C7515", "C7517", "C7508", "are serialized")


def allowlist(path):
    rules = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            pattern, _, reason = line.partition(";")
            if not reason.strip():
                sys.exit(f"{path}: every entry needs '; <measured reason>': {line}")
            rules.append(re.compile(pattern.strip()))
    return rules


def main():
    rules = allowlist(sys.argv[1])
    proc = subprocess.run(sys.argv[2:], capture_output=True, text=True)
    errors, function, arch = [], None, None
    for line in (proc.stdout + proc.stderr).splitlines(keepends=True):
        m = re.search(r"Compiling entry function '(\S+)' for '(\S+)'", line)
        if m:
            function, arch = m.group(1), m.group(2)
        m = re.search(r"Function properties for (\S+)", line) or \
            re.search(r"Registers are spilled to local memory in function '(\S+)'", line)
        if m:
            function = m.group(1)
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and (int(m.group(1)) or int(m.group(2))) and function:
            if not any(r.search(function) for r in rules):
                errors.append(f"ptxas_check: {function} ({arch}) spills ({line.strip()}); fix it or name it in "
                              "cmake/spill_allowlist.txt with the measured reason")
        if any(code in line for code in FATAL_WARNINGS):
            errors.append(f"ptxas_check: wgmma/setmaxnreg warning is fatal: {line.strip()}")
        if line.startswith("ptxas info") or re.match(r"\s+\d+ bytes stack frame", line) or \
                "Registers are spilled to local memory" in line:
            continue
        sys.stderr.write(line)
    for e in dict.fromkeys(errors):
        sys.stderr.write(e + "\n")
    sys.exit(proc.returncode or (1 if errors else 0))


if __name__ == "__main__":
    main()
