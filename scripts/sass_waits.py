"""Where each sm90 kernel's exponentials sit between its wgmma groups and waits, from the SASS.

usage: python3 scripts/sass_waits.py BINARY [NAME_SUBSTRING] [--limit N] [--cuobjdump PATH]
Prints per matching kernel (demangled) the sequence of: HGMMA groups (count and shape, up to the
one that commits: gsb0), WARPGROUP.DEPBAR waits, named-barrier syncs, TMA reduce-adds, and the
MUFU.EX2 counts between them. ptxas schedules plain arithmetic freely around a wait (it has no
operands) and was seen moving the softmax's exponentials past the wait they should overlap
(2026-12-05): after a change to a kernel's step, check here that each "EX2 x.." still sits
before the DEPBAR of the product it overlaps (docs/cuda_kernels.md, "The exponentials and the
waits"). cuobjdump comes with the CUDA toolkit or the nvidia-cuda-cuobjdump wheel.
"""
import argparse
import re
import subprocess


def sequence(body, limit):
    out, ex2, group = [], 0, 0

    def flush():
        nonlocal ex2
        if ex2:
            out.append(f"  EX2 x{ex2}")
            ex2 = 0

    for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", body):
        addr, ins = m.group(1), m.group(2).strip()
        if "MUFU.EX2" in ins:
            ex2 += 1
        elif "HGMMA" in ins:
            group += 1
            if "gsb0" in ins:
                flush()
                out.append(f"  HGMMA x{group} {ins.split()[0]}")
                group = 0
        elif "DEPBAR.LE gsb0" in ins or "BAR.SYNC" in ins or "UTMAREDG" in ins:
            flush()
            out.append(f"  {addr} {ins}")
        if len(out) >= limit:
            break
    flush()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("name", nargs="?", default="sm90")
    ap.add_argument("--limit", type=int, default=40, help="lines per kernel")
    ap.add_argument("--cuobjdump", default="cuobjdump")
    a = ap.parse_args()
    sass = subprocess.run([a.cuobjdump, "-sass", a.binary], capture_output=True, text=True, check=True).stdout
    for body in re.split(r"\n\s+Function : ", sass)[1:]:
        mangled = body.split("\n", 1)[0].strip()
        name = subprocess.run(["c++filt"], input=mangled, capture_output=True, text=True).stdout.strip()
        if a.name not in name or "HGMMA" not in body:
            continue
        print(name)
        print("\n".join(sequence(body, a.limit)))


if __name__ == "__main__":
    main()
