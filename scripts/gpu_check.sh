#!/usr/bin/env bash
# The whole GPU check on the GPU machine, in one run (it has no network: carry .deps with the
# CUTLASS headers and .whl with scikit-build-core's wheels):
#   1. build the library + nattn-bench with the CUDA backend (sm_90 here; CI compiles all archs)
#   2. install the Python package (CUDA on) and run the pytest suite, CUDA tests included
#      (200 random configurations forward+backward vs the CPU reference)
#   3. compute-sanitizer memcheck and racecheck on a small sweep
#   4. the anchor benchmark beside cuDNN SDPA and FlexAttention -> bench/results/
#   perf (not in the default set): quick nattn-bench forward and backward timings of the anchors, no torch needed
# Stages can be picked: scripts/gpu_check.sh [build] [pytest] [sanitize] [bench] [bench-bwd] [perf]
set -uo pipefail
cd "$(dirname "$0")/.."
stages="${*:-build pytest sanitize bench}"
out="${OUT:-/tmp/nattn-gpu}"; mkdir -p "$out"
summary=()
has() { [[ " $stages " == *" $1 "* ]]; }

if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi

cmake -S . -B build-gpu -G Ninja -DCMAKE_CUDA_ARCHITECTURES=90 -DNATTN_BUILD_TESTS=OFF >/dev/null || exit 1
cmake --build build-gpu -j16 2>&1 | grep -E "error|spill" ; summary+=("build: $?")

if has pytest || has bench || has bench-bwd; then
  python3 -m pip install -q --no-build-isolation --no-deps -C cmake.define.NATTN_CUDA=ON \
    -C cmake.define.CMAKE_CUDA_ARCHITECTURES=90 -C build-dir=build-py . || { echo "pip install failed"; exit 1; }
fi
if has pytest; then
  (cd tests/python && python3 -m pytest -q --maxfail=30 -p no:cacheprovider . 2>&1 | tee "$out/pytest.log" | tail -15)
  summary+=("pytest: $(tail -1 "$out/pytest.log")")
fi
if has sanitize; then
  for tool in memcheck racecheck; do
    log="$out/sanitize-$tool.log"; : > "$log"
    for args in "--extent 13x9 --kernel 3x5 --stride 2x1 --causal 1x0 --dtype bf16 --dim 64 --mode bwd --additional 3" \
                "--extent 40 --kernel 7 --dilation 3 --dtype fp16 --dim 128 --heads 2 --kv-heads 1" \
                "--extent 5x6x7 --kernel 2x3x4 --dtype bf16 --dim 32 --dim-v 16" \
                "--extent 11x12 --kernel 4 --dtype fp32 --dim 24 --mode bwd" \
                "--extent 6x20x36 --kernel 3x7x9 --dilation 1x2x1 --dtype fp16 --dim 128 --heads 4 --kv-heads 2 --mode bwd --additional 5"; do
      compute-sanitizer --tool $tool --error-exitcode 9 ./build-gpu/nattn-bench --backend cuda --iters 1 --warmup 0 $args >> "$log" 2>&1
      echo "rc=$? $args" >> "$log"
    done
    summary+=("sanitize $tool: $(grep -c '^rc=0' "$log")/5 clean")
  done
fi
if has perf; then
  perf() { echo "== $*"; ./build-gpu/nattn-bench --backend cuda --dtype bf16 --dim 128 --iters 10 --warmup 2 --no-verify --mode bwd "$@" 2>&1 | tail -n +3; }
  perf --extent 256x256 --kernel 80 --stride 16 --heads 24
  perf --extent 256x256 --kernel 80 --heads 24
  perf --extent 128x128 --kernel 31 --heads 16 --batch 4
  perf --extent 32768 --kernel 2048 --stride 256 --heads 16
  perf --extent 30x48x80 --kernel 18x24x24 --stride 16x8x8 --heads 24
  perf --extent 30x48x80 --kernel 18x24x24 --heads 24
  perf --extent 128x128 --kernel 128 --heads 16 --batch 2
fi
if has bench || has bench-bwd; then
  flag=""; has bench-bwd && flag="--backward"
  python3 bench/anchors.py $flag --out "$out/anchors.md" 2>&1 | tail -16
fi
echo "==== summary"; printf '%s\n' "${summary[@]}"
