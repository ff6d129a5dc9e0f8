#!/usr/bin/env bash
# The whole GPU check on the GPU machine, in one run (it has no network: carry .deps with the
# CUTLASS headers and .whl with scikit-build-core's wheels):
#   build      the library, nattn-bench and both test executables with the CUDA backend (sm_90
#              here; CI compiles all archs) into build-gpu; the log is $OUT/build.log. A failed
#              build stops the script (the summary says so).
#   ctest-cuda build-gpu's nattn_cuda_tests (C++ tests of the CUDA backend: every configuration
#              row forced onto random problems vs the CPU reference, plans, copies, workspace)
#   pytest     install the Python package (CUDA on) and run the pytest suite, CUDA tests included
#              (200 random configurations forward+backward vs the CPU reference)
#   sanitize   compute-sanitizer memcheck and racecheck on a small nattn-bench sweep, and memcheck
#              on a small subset of nattn_cuda_tests
#   bench      the anchor benchmark beside cuDNN SDPA and FlexAttention -> bench/results/
#   sm90-bwd (not in the default set): the sm90 backward with NATTN_SM90_BACKWARD=1: its config rows,
#              tests/python/test_cuda_sm90_backward.py, memcheck and racecheck of one backward run
#   perf (not in the default set): quick nattn-bench forward and backward timings of the anchors, no torch needed
#   ncu (not in the default set): Nsight Compute on one forward launch of each problem in
#              NATTN_NCU_PROBLEMS (';'-separated nattn-bench arguments; default img-2d and hunyuan-3d):
#              speed of light, warp states, scheduler, compute and memory workload -> $OUT/ncu-<n>.txt
# Stages can be picked: scripts/gpu_check.sh [build] [ctest-cuda] [pytest] [sm90-bwd] [sanitize] [bench] [bench-bwd] [perf] [ncu]
# (the build always runs first unless prebuilt, see below).
#
# Environment:
#   OUT=dir            logs and results (default /tmp/nattn-gpu)
#   NATTN_PREBUILT=1   reuse build-gpu as it is when build-gpu/nattn-bench exists (built on the
#                      CPU machine and carried here, to save GPU-machine minutes): no configure, no build
#   NATTN_BUILD_DIR=d  the build directory instead of build-gpu
#   NATTN_LIBRARY=path the pytest and bench stages use this libnattn.so with PYTHONPATH=python
#                      instead of `pip install .` (e.g. NATTN_LIBRARY=build-gpu/libnattn.so)
#   NATTN_SANITIZE_FILTER  gtest filter of the nattn_cuda_tests subset run under memcheck
set -uo pipefail
cd "$(dirname "$0")/.."
stages="${*:-build ctest-cuda pytest sanitize bench}"
out="${OUT:-/tmp/nattn-gpu}"; mkdir -p "$out"
build="${NATTN_BUILD_DIR:-build-gpu}"
summary=()
failed=0
has() { [[ " $stages " == *" $1 "* ]]; }
# Records a stage's real exit status.
record() {
  local name=$1 rc=$2 detail=${3:-}
  summary+=("$name: $([ "$rc" -eq 0 ] && echo ok || echo "FAILED (rc=$rc)")${detail:+ - $detail}")
  [ "$rc" -eq 0 ] || failed=1
}
finish() {
  echo "==== summary"; printf '%s\n' "${summary[@]}"
  exit "$failed"
}
# The CUDA tests fail instead of skipping when no device is visible.
export NATTN_REQUIRE_CUDA=1

if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl &&
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

# ---- build
if [ "${NATTN_PREBUILT:-0}" = 1 ] && [ -x "$build/nattn-bench" ]; then
  summary+=("build: skipped (NATTN_PREBUILT=1, using the existing $build)")
else
  [ "${NATTN_PREBUILT:-0}" = 1 ] && echo "NATTN_PREBUILT=1 but $build/nattn-bench is missing: building"
  cmake -S . -B "$build" -G Ninja -DCMAKE_CUDA_ARCHITECTURES=90 -DNATTN_BUILD_TESTS=ON >"$out/configure.log" 2>&1
  rc=$?
  if [ "$rc" -ne 0 ]; then
    tail -20 "$out/configure.log"
    record "build" "$rc" "cmake configure failed, see $out/configure.log"
    finish
  fi
  # The build's own status (pipefail: tee and the filter succeed), the full log in build.log.
  cmake --build "$build" -j16 2>&1 | tee "$out/build.log" | { grep -E "error|spill" || true; }
  rc=$?
  record "build" "$rc" "log: $out/build.log"
  [ "$rc" -eq 0 ] || finish
fi

# ---- ctest-cuda
if has ctest-cuda; then
  bin="$build/tests/nattn_cuda_tests"
  if [ -x "$bin" ]; then
    "$bin" --gtest_brief=1 --gtest_output="xml:$out/ctest-cuda.xml" 2>&1 | tee "$out/ctest-cuda.log" | tail -25
    rc=$?
    counts=$(grep -E '^\[  (PASSED|SKIPPED) +\] [0-9]+ tests?' "$out/ctest-cuda.log" | tr '\n' ' ')
    failures=$(grep -E '^\[  FAILED  \] [^0-9]' "$out/ctest-cuda.log" | sed -e 's/^\[  FAILED  \] //' -e 's/, where.*//' -e 's/ (.*//' |
      sort -u | tr '\n' ' ')
    record "ctest-cuda" "$rc" "$counts${failures:+failed: $failures}log: $out/ctest-cuda.log"
    # The sm80 rows for consumer GPUs (99 KB of shared memory per block), through the test hook.
    NATTN_SMEM_LIMIT=101376 "$bin" --gtest_brief=1 --gtest_filter='*CudaConsumerSmem.*' 2>&1 |
      tee "$out/ctest-cuda-99kb.log" | tail -8
    rc=${PIPESTATUS[0]}
    record "ctest-cuda 99 KB" "$rc" "log: $out/ctest-cuda-99kb.log"
  else
    record "ctest-cuda" 1 "$bin is missing (configure $build with NATTN_BUILD_TESTS=ON)"
  fi
fi

# ---- Python package: installed with pip, or the prebuilt library through NATTN_LIBRARY
py_ready=1
if has pytest || has sm90-bwd || has bench || has bench-bwd; then
  if [ -n "${NATTN_LIBRARY:-}" ]; then
    NATTN_LIBRARY="$(realpath "$NATTN_LIBRARY")"
    export NATTN_LIBRARY PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
    if [ ! -f "$NATTN_LIBRARY" ]; then
      record "python package" 1 "NATTN_LIBRARY=$NATTN_LIBRARY does not exist"
      py_ready=0
    fi
  else
    python3 -m pip install -q --no-build-isolation --no-deps -C cmake.define.NATTN_CUDA=ON \
      -C cmake.define.CMAKE_CUDA_ARCHITECTURES=90 -C build-dir=build-py . 2>&1 | tee "$out/pip.log" | tail -20
    rc=$?
    [ "$rc" -eq 0 ] || { record "pip install" "$rc" "log: $out/pip.log"; py_ready=0; }
  fi
fi
if has pytest; then
  if [ "$py_ready" = 1 ]; then
    (cd tests/python && python3 -m pytest -q --maxfail=30 -p no:cacheprovider . 2>&1) | tee "$out/pytest.log" | tail -15
    rc=$?
    record "pytest" "$rc" "$(tail -1 "$out/pytest.log")"
    # The sm80 rows for consumer GPUs through the test hook (read once per process: its own run).
    (cd tests/python && NATTN_SMEM_LIMIT=101376 python3 -m pytest -q -p no:cacheprovider \
      test_cuda_consumer_smem.py 2>&1) | tee "$out/pytest-99kb.log" | tail -5
    rc=$?
    record "pytest 99 KB" "$rc" "$(tail -1 "$out/pytest-99kb.log")"
  else
    record "pytest" 1 "no usable Python package (see above)"
  fi
fi

# ---- sm90-bwd: the sm90 backward (written 2026-11-28, planned only with NATTN_SM90_BACKWARD=1
# until it has passed here): its config rows, the Python suite and the sanitizers on one run,
# each under a timeout (a hang in a new kernel must not eat the whole call).
if has sm90-bwd; then
  bin="$build/tests/nattn_cuda_tests"
  # Smoke first: a few verified single runs (2-D, 1-D, 3-D; d32/64/128; fp16/bf16), 45 s each.
  # A hang or a wrong result stops the stage here (the suites below would only hang longer).
  smoke_log="$out/sm90-bwd-smoke.log"; : > "$smoke_log"; smoke_ok=1
  for args in "--extent 20x24 --kernel 7x9 --dim 128 --heads 2" \
              "--extent 300 --kernel 33 --dim 64 --dtype fp16" \
              "--extent 6x10x12 --kernel 3x5x7 --dim 32 --heads 3 --kv-heads 1" \
              "--extent 33x40 --kernel 9x11 --stride 2x3 --dilation 2x1 --causal 1x0 --dim 128 --batch 2" \
              "--extent 64x64 --kernel 64 --dim 128 --heads 2"; do
    echo "== $args" >> "$smoke_log"
    NATTN_SM90_BACKWARD=1 timeout 45 "./$build/nattn-bench" --backend cuda --dtype bf16 --iters 2 --warmup 1 \
      --mode bwd $args >> "$smoke_log" 2>&1
    rc=$?; echo "rc=$rc" >> "$smoke_log"
    [ "$rc" -eq 0 ] || smoke_ok=0
    [ "$rc" -eq 124 ] && break
  done
  NATTN_SM90_BACKWARD=1 "./$build/nattn-bench" --backend cuda --dtype bf16 --dim 128 --extent 20x24 --kernel 7x9 \
    --mode bwd --explain >> "$smoke_log" 2>&1
  tail -40 "$smoke_log"
  record "sm90-bwd smoke" "$([ "$smoke_ok" = 1 ] && echo 0 || echo 1)" "log: $smoke_log"
fi
if has sm90-bwd && [ "$smoke_ok" = 1 ]; then
  NATTN_SM90_BACKWARD=1 timeout 300 "$bin" --gtest_brief=1 --gtest_filter='Rows/*sm90_backward*' 2>&1 |
    tee "$out/sm90-bwd-rows.log" | tail -8
  rc=${PIPESTATUS[0]}
  record "sm90-bwd rows" "$rc" "$(grep -E '^\[  (PASSED|FAILED) ' "$out/sm90-bwd-rows.log" | head -2 | tr '\n' ' ')log: $out/sm90-bwd-rows.log"
  if [ "$py_ready" = 1 ]; then
    (cd tests/python && NATTN_SM90_BACKWARD=1 timeout 600 python3 -m pytest -q -x -p no:cacheprovider \
      test_cuda_sm90_backward.py 2>&1) | tee "$out/sm90-bwd-pytest.log" | tail -8
    rc=${PIPESTATUS[0]}
    record "sm90-bwd pytest" "$rc" "$(tail -1 "$out/sm90-bwd-pytest.log")"
  fi
  for tool in memcheck racecheck; do
    NATTN_SM90_BACKWARD=1 timeout 120 compute-sanitizer --tool $tool --error-exitcode 9 "./$build/nattn-bench" \
      --backend cuda --iters 1 --warmup 0 --extent 20x24 --kernel 7x9 --stride 1x2 --causal 0x1 --dtype bf16 \
      --dim 128 --heads 4 --kv-heads 2 --mode bwd > "$out/sm90-bwd-$tool.log" 2>&1
    rc=$?
    record "sm90-bwd $tool" "$rc" "$(grep -E 'ERROR SUMMARY' "$out/sm90-bwd-$tool.log" | tail -1), log: $out/sm90-bwd-$tool.log"
  done
fi

# ---- sanitize
if has sanitize; then
  for tool in memcheck racecheck; do
    log="$out/sanitize-$tool.log"; : > "$log"
    clean=0; runs=0
    for args in "--extent 13x9 --kernel 3x5 --stride 2x1 --causal 1x0 --dtype bf16 --dim 64 --mode bwd --additional 3" \
                "--extent 40 --kernel 7 --dilation 3 --dtype fp16 --dim 128 --heads 2 --kv-heads 1" \
                "--extent 5x6x7 --kernel 2x3x4 --dtype bf16 --dim 32 --dim-v 16" \
                "--extent 11x12 --kernel 4 --dtype fp32 --dim 24 --mode bwd" \
                "--extent 6x20x36 --kernel 3x7x9 --dilation 1x2x1 --dtype fp16 --dim 128 --heads 4 --kv-heads 2 --mode bwd --additional 5"; do
      compute-sanitizer --tool $tool --error-exitcode 9 "./$build/nattn-bench" --backend cuda --iters 1 --warmup 0 $args >> "$log" 2>&1
      rc=$?
      echo "rc=$rc $args" >> "$log"
      runs=$((runs + 1)); [ "$rc" -eq 0 ] && clean=$((clean + 1))
    done
    record "sanitize $tool" "$([ "$clean" -eq "$runs" ] && echo 0 || echo 1)" "$clean/$runs nattn-bench runs clean, log: $log"
  done
  # A few configuration rows (forward and backward, sm90, sm80 and generic) and the copy paths.
  filter="${NATTN_SANITIZE_FILTER:-Rows/*c03_sm80_forward*:Rows/*c26_sm90_forward*:Rows/*c17_sm80_backward_dkdv*:Rows/*c20_generic_forward*:CudaPlan.ExpandedDout*:CudaPlan.OddStride*}"
  log="$out/sanitize-memcheck-cuda-tests.log"
  if [ -x "$build/tests/nattn_cuda_tests" ]; then
    compute-sanitizer --tool memcheck --error-exitcode 9 "./$build/tests/nattn_cuda_tests" --gtest_brief=1 \
      --gtest_filter="$filter" > "$log" 2>&1
    rc=$?
    record "sanitize memcheck nattn_cuda_tests" "$rc" "$(grep -E 'ERROR SUMMARY' "$log" | tail -1), filter $filter"
  else
    record "sanitize memcheck nattn_cuda_tests" 1 "$build/tests/nattn_cuda_tests is missing"
  fi
fi

# ---- perf
if has perf; then
  perf() {
    echo "== $*"
    "./$build/nattn-bench" --backend cuda --dtype bf16 --dim 128 --iters 10 --warmup 2 --no-verify --mode bwd "$@" 2>&1 | tail -n +3
    return "${PIPESTATUS[0]}"
  }
  perf_rc=0
  perf --extent 256x256 --kernel 80 --stride 16 --heads 24 || perf_rc=1
  perf --extent 256x256 --kernel 80 --heads 24 || perf_rc=1
  perf --extent 128x128 --kernel 31 --heads 16 --batch 4 || perf_rc=1
  perf --extent 32768 --kernel 2048 --stride 256 --heads 16 || perf_rc=1
  perf --extent 30x48x80 --kernel 18x24x24 --stride 16x8x8 --heads 24 || perf_rc=1
  perf --extent 30x48x80 --kernel 18x24x24 --heads 24 || perf_rc=1
  perf --extent 128x128 --kernel 128 --heads 16 --batch 2 || perf_rc=1
  record "perf" "$perf_rc"
fi

# ---- ncu
if has ncu; then
  problems="${NATTN_NCU_PROBLEMS:---extent 128x128 --kernel 31 --heads 16 --batch 4;--extent 30x48x80 --kernel 18x24x24 --heads 24}"
  n=0; ncu_rc=0
  IFS=';' read -ra list <<< "$problems"
  for args in "${list[@]}"; do
    n=$((n + 1))
    ncu --kernel-name regex:fna_forward --launch-skip 1 --launch-count 1 --section SpeedOfLight \
      --section WarpStateStats --section SchedulerStats --section ComputeWorkloadAnalysis \
      --section MemoryWorkloadAnalysis --section Occupancy "./$build/nattn-bench" --backend cuda --dtype bf16 \
      --dim 128 --iters 1 --warmup 1 --no-verify $args > "$out/ncu-$n.txt" 2>&1 || ncu_rc=1
    echo "$args" >> "$out/ncu-$n.txt"
  done
  record "ncu" "$ncu_rc" "$out/ncu-*.txt"
fi

# ---- bench
if has bench || has bench-bwd; then
  if [ "$py_ready" = 1 ]; then
    flag=""; has bench-bwd && flag="--backward"
    python3 bench/anchors.py $flag --out "$out/anchors.md" 2>&1 | tee "$out/bench.log" | tail -16
    rc=$?
    record "bench" "$rc" "$out/anchors.md"
  else
    record "bench" 1 "no usable Python package (see above)"
  fi
fi
finish
