#!/usr/bin/env bash
# ncu profile of one fused kernel launch on the GPU machine (carry .deps):
#   scripts/profile.sh KERNEL_REGEX [nattn-bench args...]
# Builds nattn-bench for sm_90 into build-gpu (shared with gpu_check.sh), then profiles the
# first matching launch after warm-up with the full section set and writes, under $OUT:
#   <name>.details.txt   ncu's details page (speed of light, warp stalls, instruction mix)
#   <name>.summary.txt   instruction mix and stall samples by opcode (scripts/profile_summary.py)
#   <name>.source.csv    per-SASS-line counts and stall samples, only with KEEP_SOURCE=1
set -uo pipefail
cd "$(dirname "$0")/.."
regex="$1"; shift
out="${OUT:-/tmp/nattn-gpu}"; mkdir -p "$out"
name="${PROFILE_NAME:-profile}"
cmake -S . -B build-gpu -G Ninja -DCMAKE_CUDA_ARCHITECTURES=90 -DNATTN_BUILD_TESTS=OFF >/dev/null || exit 1
cmake --build build-gpu -j16 --target nattn-bench 2>&1 | grep -E "error|spill"
ncu --set full --import-source yes -k "regex:$regex" -s 1 -c 1 -f -o "$out/$name" \
  ./build-gpu/nattn-bench --backend cuda --iters 1 --warmup 1 --no-verify "$@" > "$out/$name.ncu.log" 2>&1
ncu --import "$out/$name.ncu-rep" --page details > "$out/$name.details.txt"
ncu --import "$out/$name.ncu-rep" --page source --csv --print-source sass > "$out/$name.source.csv" 2>/dev/null
python3 scripts/profile_summary.py "$out/$name.source.csv" 20 > "$out/$name.summary.txt"
tail -3 "$out/$name.ncu.log" >> "$out/$name.summary.txt"
rm -f "$out/$name.ncu-rep" "$out/$name.ncu.log"
[ "${KEEP_SOURCE:-0}" = 1 ] || rm -f "$out/$name.source.csv"
echo "== $name: $*"
grep -E "Duration|Registers Per|Issue Slots Busy|Warp Cycles Per Issued|Executed Instructions  " "$out/$name.details.txt"
head -8 "$out/$name.summary.txt"
