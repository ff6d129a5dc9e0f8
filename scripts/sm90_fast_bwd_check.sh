#!/usr/bin/env bash
# The sm90 fast backward (rows 55-60) on the GPU machine in one short run, most important first:
# verified smoke runs (30 s each; a failure stops here), forward+backward timings of the anchors
# in both modes (nattn-bench, no torch), the fast rows' C++ tests, the Python tests of both
# modes, memcheck of one run, then bench/anchors.py (both modes beside cuDNN and Flex) in the
# time left. Needs the build (scripts/pack_build.sh; carry .carry). Logs in $OUT.
#   tar xJf .carry/build.tar.xz && bash scripts/sm90_fast_bwd_check.sh [COMMIT]
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/nattn-fast}"; mkdir -p "$out"
bench=./build-gpu/nattn-bench
export NATTN_REQUIRE_CUDA=1 NATTN_LIBRARY=$PWD/build-gpu/libnattn.so PYTHONPATH=$PWD/python
for a in "--extent 20x24 --kernel 7x9 --dim 128 --heads 2" "--extent 300 --kernel 33 --dim 64 --dtype fp16" \
         "--extent 6x10x12 --kernel 3x5x7 --dim 32 --heads 3 --kv-heads 1" \
         "--extent 33x40 --kernel 9x11 --stride 2x3 --dilation 2x1 --causal 1x0 --dim 128 --batch 2"; do
  NATTN_SM90_BACKWARD=fast timeout 30 $bench --backend cuda --dtype bf16 --mode bwd --iters 2 --warmup 1 $a \
    > "$out/smoke.log" 2>&1
  rc=$?
  echo "smoke rc=$rc $(head -1 "$out/smoke.log" | grep -o 'bwd sm90.*') $(tail -1 "$out/smoke.log")"
  [ "$rc" = 0 ] || { cat "$out/smoke.log"; exit 1; }
done
perf() {  # mode args...
  local mode=$1; shift
  NATTN_SM90_BACKWARD=$mode timeout 60 $bench --backend cuda --dtype bf16 --dim 128 --iters 5 --warmup 1 \
    --no-verify --mode bwd "$@" 2>&1 | awk -v m="$mode" -v a="$*" '/^(forward|backward)/{printf "%s %s | %s\n", m, a, $0}'
}
for args in "--extent 256x256 --kernel 80 --stride 16 --heads 24" "--extent 256x256 --kernel 80 --heads 24" \
            "--extent 32768 --kernel 2048 --heads 16" "--extent 30x48x80 --kernel 18x24x24 --heads 24" \
            "--extent 30x48x80 --kernel 18x24x24 --stride 16x8x8 --heads 24" "--extent 8192 --kernel 8192 --heads 16 --batch 2" \
            "--extent 128x128 --kernel 31 --heads 16 --batch 4"; do
  perf fast $args; perf 1 $args
done | tee "$out/perf.log"
timeout 60 ./build-gpu/tests/nattn_cuda_tests --gtest_brief=1 --gtest_filter='Rows/*dkdv_dq*' > "$out/rows.log" 2>&1
echo "rows rc=$? $(grep -E '^\[  (PASSED|FAILED) ' "$out/rows.log" | tr '\n' ' ')"
(cd tests/python && timeout 100 python3 -m pytest -q -x -p no:cacheprovider test_cuda_sm90_backward.py > "$out/pytest.log" 2>&1)
echo "pytest rc=$? $(tail -1 "$out/pytest.log")"
NATTN_SM90_BACKWARD=fast timeout 60 compute-sanitizer --tool memcheck --error-exitcode 9 $bench --backend cuda \
  --iters 1 --warmup 0 --extent 20x24 --kernel 7x9 --stride 1x2 --causal 0x1 --dtype bf16 --dim 128 --heads 4 \
  --kv-heads 2 --mode bwd > "$out/memcheck.log" 2>&1
echo "memcheck rc=$? $(grep 'ERROR SUMMARY' "$out/memcheck.log")"
(cd bench && NATTN_SM90_BACKWARD=fast timeout "${NATTN_ANCHORS_S:-110}" python3 anchors.py --backward --iters 5 \
  --commit "${1:-unknown}" --only flux-2d-s16 hunyuan-3d 1d-32k --out "$out/anchors.md" --json "$out/anchors.json" \
  > "$out/anchors.log" 2>&1)
echo "anchors rc=$?"
