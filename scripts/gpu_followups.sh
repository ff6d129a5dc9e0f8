#!/usr/bin/env bash
# Short single-GPU measurements that several issues wait on, in one device call (~6-9 minutes),
# with the prebuilt library (.carry/build.tar.xz from scripts/pack_build.sh; Python from python/
# through NATTN_LIBRARY, no pip). Stages (pick some: scripts/gpu_followups.sh [stage ...]):
#   weak-flat  issue 12: bench/weak_flat.py, forward+backward of each weak-scaling anchor's base
#              problem and of it grown 2x and 4x along the axis bench/distributed.py splits, on one
#              GPU (inputs made on the GPU: nattn-bench's host-side init of the 4x grids took
#              over 90 s each)
#   anchors    issue 10: the issue's benchmark, bench/anchors.py --backward: every anchor and the
#              dense case, both modes (the default non-deterministic plan and the deterministic
#              pair), beside cuDNN and Flex, ~250 s (NATTN_ANCHORS / NATTN_ANCHOR_MODES narrow it)
#   small      issue 11: bench/small_grids.py (NAT/DiNAT stages) with the sm90 backward
#   small-nha  the same with NATTN_HEADS_AXIS=0 (the stages without the heads-as-grid-axis rewrite)
#   overhead   issue 11: bench/overhead.py (the C++ ops' CUDA path is the default since 2026-12-05),
#              so all three op paths are measured in one run; then bench/host_breakdown.py --trace
#              cuda: the library's host time per phase of a small forward+backward step
#   profile    issue 11: torch.profiler of a NAT 7x7 stage's forward+backward (host rows by
#              self CPU time, and the kernels)
#   fast-persistent issue 10: the fast dK/dV kernel's persistent variant (NATTN_SM90_BWD_PERSISTENT=fast):
#              its test and sanitizers, then its A/B against one CTA per item -> $out/fast-persistent-ab.txt
#   persistent issue 10: the sm90 backward's persistent variant (NATTN_SM90_BWD_PERSISTENT=1,
#              never run before 2026-12-05's end): its tests, the CUDA suite with it on,
#              racecheck/synccheck, and the A/B against one CTA per item -> persistent-ab.txt
#   old-ab     issues 9/10: this build against an older nattn-bench (.carry/old-bench.tar.xz),
#              forward and backward interleaved, with the fast mode in the same rounds;
#              sanitizers on the d256 forward -> old-ab.txt
#   autograd   issue 11: the fast path's C++ autograd node (src/torch_autograd, built here for the
#              device's torch): its tests and the fast-path/native-op/compile tests on CUDA
#   check      (runs first) the GPU regression check of a host-side change: nattn_cuda_tests (every config row
#              on random problems vs the CPU reference, plans, copies, heads as a grid axis) and the
#              GPU cases of the host-trace, fast-path and error tests; the consumer-GPU rows under
#              NATTN_SMEM_LIMIT=101376 (issue 11)
#   ncu-bwd    issue 10: Nsight Compute on the sm90 backward's dQ and dK/dV kernels (one launch
#              each, after a warm-up step) of flux-2d-s16 and 1d-32k: speed of light, warp states,
#              scheduler, compute and memory workload -> $OUT/ncu-bwd-<n>.txt; and on the fast
#              mode's kernel of flux-2d-s16 with the memory tables -> $OUT/ncu-bwd-fast.txt
#   trace-test the GPU case of tests/python/test_host_trace.py alone (phase counts per launch;
#              the short form of check for a session with little device time)
#   ncu-fwd    issue 9: Nsight Compute on the sm90 forward kernel (one launch after a warm-up) of
#              the anchors that miss a target (dense 8k d64, 1d-32k-s256, flux-2d-s16): speed of
#              light, warp states, scheduler, pipe use -> $OUT/ncu-fwd-<name>.txt
#   early-ab   issues 10/11: the sm90 backward with its walk's first steps issued before the
#              coverage tables are filled (NATTN_SM90_BWD_EARLY_STEPS=1; measured slower on
#              2026-12-05, off by default) against =0, interleaved on/off/on/off, backward alone
#              (nattn-bench --mode bwd): the NAT stages (batch 32, window 7, d32) and the
#              short-walk anchors (1d-32k, img-2d) -> $OUT/early-ab.txt
#   poly-ab    issue 9: the sm90 forward's polynomial-exponential rows (configs.h 65-68, head dims
#              32 and 64) against the rows they shadow, NATTN_SM90_POLY_EXP=1/0 interleaved,
#              forward alone (nattn-bench --mode fwd), with the error against the float64
#              reference: dense 8k d64, 1d-32k d64, a 2-D d64 and d32 problem, NAT 56x56 d32
#              -> $OUT/poly-ab.txt
#   ctas-ab    issue 11: the sm90 backward's two-CTAs-per-SM rows (configs.h 69-72, head dim 32;
#              the default since they measured faster on 2026-12-05) against the one-CTA rows, NATTN_SM90_BWD_TWO_CTAS=1/0 interleaved, backward alone
#              (nattn-bench --mode bwd) on the NAT stages and a larger d32 grid -> $OUT/ctas-ab.txt
#   dq-ab      issue 10: the sm90 dQ kernel with each step's dQ product left running while the next
#              step's products issue (NATTN_SM90_BWD_DQ_OVERLAP=1, the default since it ran on
#              2026-12-05) against =0, interleaved, backward alone -> $OUT/dq-ab.txt
#   ncu-src    issues 9/10: Nsight Compute with PC sampling per SASS instruction (SourceCounters,
#              WarpStateStats) of the backward pair on flux-2d-s16 and the dense d64 forward:
#              .ncu-rep files and their source pages as CSV -> $OUT/ncu-src-*
#   ops-ab     issue 11: the NAT stages' forward+backward through the C++ ops against the ctypes
#              call (NATTN_TORCH_OPS_CUDA=1/0 interleaved), beside SDPA -> $OUT/ops-ab.txt
#   bwd-check  issue 10, the sixth session's kernels (2026-12-05, compiled but never run there):
#              the sm90 backward's config rows (nattn_cuda_tests: rows 61-64 of head dim 256,
#              additional keys in every backward row), tests/python/test_cuda_sm90_backward.py
#              (400 random problems in both modes with additional keys and head dims up to 256,
#              the d256 cases, bitwise reproducibility) and compute-sanitizer memcheck and
#              racecheck on a fast-mode and a d256 backward with additional keys
#   rows-ab    issue 10: this build against an older nattn-bench (.carry/old-bench.tar.xz: 8eeac4a
#              since 2026-12-05's twelfth session), both backward modes, interleaved -> $OUT/rows-ab.txt
#   kernel-times issue 10: per-kernel durations (ncu gpu__time_duration, one forward+backward step)
#              of this build against the older nattn-bench (.carry/old-bench.tar.xz), both backward
#              modes, so a change to one kernel is measured on that kernel -> $OUT/kernel-times.txt
#   dense-fb   issue 10: the dense case (8k, d128 and d64) forward+backward beside cuDNN and Flex,
#              both modes, one run -> $OUT/dense-fb.md/.json
#   mode-ab    issue 10: fast kernel against the deterministic pair (NATTN_SM90_BACKWARD=fast/1),
#              backward alone, at d64 and d128 -> $OUT/mode-ab.txt
#   det-ab     issue 10: the deterministic backward's two kernels, the fast kernel with ordered dQ
#              adds against the pair (NATTN_SM90_DETERMINISTIC=ordered/pair interleaved, nattn-bench
#              --deterministic --mode bwd), with the default (non-deterministic) plan beside them, on
#              the dense case (d64, d128) and the anchors -> $OUT/det-ab.txt
#   fast-ab    issue 10: the deterministic pair against the fast kernel (third version: TMA
#              tensor reduce-adds) on the anchors, backward alone, interleaved det/fast/det/fast
#              (nattn-bench --mode bwd, one build) -> $OUT/fast-ab.txt
# Everything lands in $OUT (default /tmp/nattn-followups) as each stage ends (anchors.py also
# appends each finished anchor to anchors-bwd.md.rows). Every command has a timeout, cut to what
# is left of NATTN_FOLLOWUPS_BUDGET_S (default 540 s). Do not pipe this script's output through
# tail: a device call cut by its limit then returns nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/nattn-followups}"; mkdir -p "$out"
# The next session's first call (fourteenth note, ~500 s): `check` (every CUDA test: the
# library's workspace pool, cuda/workspace_pool.h, never run on a GPU, serves every C++ call
# without an allocator; CudaPlan.WorkspacePoolKeepsItsMemoryUntilReleased) and `fast-persistent`
# (the persistent fast kernel's fixed test, sanitizers and A/B). If both pass: the anchors with
# the persistent fast kernel on the 1-D and dense anchors in a second call,
#   NATTN_ANCHORS_ENV=NATTN_SM90_BWD_PERSISTENT=fast NATTN_ANCHOR_MODES=fast \
#   NATTN_ANCHORS="dense-8k-d128 1d-32k 1d-32k-s256" bash scripts/gpu_followups.sh anchors
# and the ordered kernel's dQ writer (branch ordered-dq-writer: git cherry-pick 76d73e2, build,
# pack; never run) in a third:
#   NATTN_DET_AB_N=3 NATTN_BWD_SANITIZE="memcheck:ord:128 racecheck:ord:64" \
#   bash scripts/gpu_followups.sh bwd-check det-ab
stages="${*:-check fast-persistent}"
commit="${NATTN_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
has() { [[ " $stages " == *" $1 "* ]]; }
[ -f build-gpu/libnattn.so ] || tar xJf .carry/build.tar.xz
export NATTN_LIBRARY="$PWD/build-gpu/libnattn.so" PYTHONPATH="$PWD/python" NATTN_REQUIRE_CUDA=1
# The C++ autograd library is per torch version (src/torch_autograd): the carried build holds the
# one for the build machine's torch; the device's is built here (~20 s) and the tests require it.
tag="$(python3 -c 'import torch; print(torch.__version__.replace("+", "_"))')"
if [ ! -f "build-gpu/libnattn_torch_autograd_$tag.so" ]; then
  timeout 300 bash scripts/build_torch_autograd.sh build-gpu >"$out/build-autograd.log" 2>&1 \
    || echo "torch autograd library build failed: $out/build-autograd.log"
fi
export NATTN_REQUIRE_TORCH_AUTOGRAD=1 NATTN_REQUIRE_TORCH_OPS=1
nvidia-smi --query-gpu=name --format=csv,noheader
start=$SECONDS
budget="${NATTN_FOLLOWUPS_BUDGET_S:-540}"  # the whole run; keep it under the device call's limit
stamp() { echo "== $1 done [$((SECONDS - start)) s]"; }
# timeout of a stage's command: its cap, cut to the budget left (less 10 s for the files).
t() { local left=$((budget - (SECONDS - start) - 10)); [ "$left" -lt "$1" ] && echo $((left > 1 ? left : 1)) || echo "$1"; }
# The NAT-Tiny stages (batch 32, window 7, head dim 32) as nattn-bench problems.
NAT_STAGES=("--extent 7x7 --kernel 7 --heads 16 --batch 32 --dim 32 --no-verify"
            "--extent 14x14 --kernel 7 --heads 8 --batch 32 --dim 32 --no-verify"
            "--extent 28x28 --kernel 7 --heads 4 --batch 32 --dim 32 --no-verify"
            "--extent 56x56 --kernel 7 --heads 2 --batch 32 --dim 32 --no-verify")
# ab VAR FILE MODE PROBLEM...: nattn-bench (bf16, 10 iterations) of each problem with the developer
# switch VAR=1, 0, 1, 0 in turn (an A/B on one build), appending "VAR=v problem | pass ms, TFLOP/s,
# error | the plan" per run to $out/FILE. MODE fwd or bwd; a problem's own flags may add --no-verify.
# AB_VALUES (default "1 0 1 0") sets the values taken in turn.
ab() {
  local var=$1 file=$2 mode=$3 pass args v
  shift 3
  pass=$([ "$mode" = bwd ] && echo backward || echo forward)
  for args in "$@"; do
    for v in ${AB_VALUES:-1 0 1 0}; do
      env "$var=$v" timeout $(t 90) build-gpu/nattn-bench --backend cuda --dtype bf16 --iters 10 --warmup 2 \
        --mode "$mode" $args 2>&1 | awk -v m="$var=$v" -v a="$args" -v p="$pass" -v md="$mode" \
        '/^nattn-bench:/{n = split($0, h, "[|] " md " "); cfg = h[n]} $1 == p {printf "%s %s | %s %s ms, %s TFLOP/s, err %s | %s %s\n", m, a, p, $2, $3, $5, md, cfg}' \
        | tee -a "$out/$file"
    done
  done
}

if has check; then
  timeout $(t 300) build-gpu/tests/nattn_cuda_tests --gtest_brief=1 >"$out/cuda-tests.log" 2>&1
  echo "nattn_cuda_tests rc=$?"; tail -4 "$out/cuda-tests.log"
  timeout $(t 200) python3 -m pytest -q -x -p no:cacheprovider tests/python/test_host_trace.py tests/python/test_fast_path.py \
    tests/python/test_errors.py tests/python/test_native_ops.py tests/python/test_native_autograd.py \
    tests/python/test_compile.py >"$out/pytest-check.log" 2>&1
  echo "pytest rc=$?"; tail -3 "$out/pytest-check.log"
  # Issue 11's consumer-GPU rows (sm86/sm89's 99 KB), planned and run here through the hook.
  NATTN_SMEM_LIMIT=101376 timeout $(t 120) build-gpu/tests/nattn_cuda_tests --gtest_brief=1 \
    --gtest_filter='*CudaConsumerSmem*' >"$out/consumer-smem.log" 2>&1
  echo "consumer smem (C++) rc=$?"; tail -2 "$out/consumer-smem.log"
  NATTN_SMEM_LIMIT=101376 timeout $(t 120) python3 -m pytest -q -p no:cacheprovider \
    tests/python/test_cuda_consumer_smem.py >"$out/consumer-smem-py.log" 2>&1
  echo "consumer smem (pytest) rc=$?"; tail -2 "$out/consumer-smem-py.log"
  stamp check
fi

if has autograd; then
  # The fast path's C++ autograd node (built above for this torch) on CUDA tensors: the tests of
  # the paths that record autograd, and CUDA-graph capture / reduce-overhead compile through it.
  timeout $(t 200) python3 -m pytest -q -x -p no:cacheprovider tests/python/test_native_autograd.py \
    tests/python/test_fast_path.py tests/python/test_native_ops.py tests/python/test_compile.py \
    >"$out/pytest-autograd.log" 2>&1
  echo "pytest autograd rc=$?"; tail -3 "$out/pytest-autograd.log"
  python3 -c "import nattn; print(nattn.op_path())"
  stamp autograd
fi

if has trace-test; then
  timeout $(t 120) python3 -m pytest -q -p no:cacheprovider tests/python/test_host_trace.py \
    >"$out/trace-test.log" 2>&1
  echo "pytest test_host_trace rc=$?"; tail -3 "$out/trace-test.log"
  stamp trace-test
fi

if has bwd-check; then
  # The ordered (deterministic fast) kernel first, briefly: a CTA waiting on an add that never
  # comes would hang every suite below, so a hang here ends the stage (rc 124).
  for args in "--extent 4096 --kernel 4096 --heads 4 --dim 64 --no-verify" "--extent 64x48 --kernel 13x9 --dilation 2x1 --heads 4 --kv-heads 2 --additional 7 --dim 128"; do
    NATTN_SM90_DETERMINISTIC=ordered timeout 60 build-gpu/nattn-bench --backend cuda --dtype bf16 --mode bwd --iters 2 \
      --warmup 1 --deterministic $args >"$out/bwd-check-ordered-smoke.log" 2>&1
    rc=$?; echo "ordered smoke ($args) rc=$rc: $(grep -E '^backward|error' "$out/bwd-check-ordered-smoke.log" | head -2 | tr '\n' ' ')"
    [ "$rc" = 124 ] && { echo "ordered kernel hung: skipping the rest"; exit 3; }
  done
  # The sm90 backward config rows, the plan's backward tests and the default and deterministic
  # modes' choices (CudaSm90Persistent.Default*, .Deterministic*; the sm80 and forward rows are
  # the check stage's).
  # (Not --gtest_brief: a run cut by its timeout then still shows the test it was in; 2026-12-06's
  # first call timed out at 240 s with an empty log.)
  timeout $(t 300) build-gpu/tests/nattn_cuda_tests \
    --gtest_filter='*sm90_backward*:CudaPlan.*:ConfigTable.*:*CudaSm90Persistent.Default*:*CudaSm90Persistent.Deterministic*' \
    >"$out/bwd-check-ctest.log" 2>&1
  echo "nattn_cuda_tests (rows, backward) rc=$?: $(grep -c '^\[       OK' "$out/bwd-check-ctest.log") passed; last: $(grep '^\[ RUN' "$out/bwd-check-ctest.log" | tail -1)"
  tail -4 "$out/bwd-check-ctest.log"
  # NATTN_BWD_PYTEST_K: a pytest -k expression narrowing them (e.g. one mode's random problems).
  timeout $(t 300) python3 -m pytest -q --maxfail=5 -p no:cacheprovider tests/python/test_cuda_sm90_backward.py \
    tests/python/test_cuda_sm90_deterministic.py ${NATTN_BWD_PYTEST_K:+-k "$NATTN_BWD_PYTEST_K"} \
    >"$out/bwd-check-pytest.log" 2>&1
  echo "pytest test_cuda_sm90_backward rc=$?"; tail -3 "$out/bwd-check-pytest.log"
  # NATTN_BWD_SANITIZE: the tool:mode:head-dim runs (default: memcheck and racecheck of fast d128 and det d256).
  # ord: the deterministic fast kernel (ordered dQ adds).
  for run in ${NATTN_BWD_SANITIZE:-memcheck:fast:128 memcheck:det:256 memcheck:ord:128 racecheck:fast:128 racecheck:det:256 racecheck:ord:64}; do
    IFS=: read -r tool mode dim <<<"$run"
    env_fast=$([ "$mode" = fast ] && echo "NATTN_SM90_BACKWARD=fast" || echo "NATTN_SM90_BACKWARD=1")
    [ "$mode" = ord ] && env_fast="NATTN_SM90_DETERMINISTIC=ordered"
    det=$([ "$mode" = ord ] && echo --deterministic || echo "")
    env $env_fast timeout $(t 90) compute-sanitizer --tool $tool --error-exitcode 9 build-gpu/nattn-bench --backend cuda \
      --dtype bf16 --mode bwd --iters 1 --warmup 0 --extent 24x20 --kernel 7x5 --dilation 2x1 --heads 2 \
      --additional 9 --dim $dim $det >"$out/bwd-check-$tool-$mode-$dim.log" 2>&1
    echo "$tool $mode d$dim rc=$?: $(grep -E 'ERROR SUMMARY|hazard' "$out/bwd-check-$tool-$mode-$dim.log" | tail -1)"
  done
  stamp bwd-check
fi

if has rows-ab; then
  # issue 10: this build against an older one's nattn-bench (.carry/old-bench.tar.xz), det and
  # fast for both, interleaved, backward alone -> $out/rows-ab.txt. The old build is 8eeac4a
  # since the twelfth session (its first GPU-checked build: row passes, fast default); 0be7082
  # at the eleventh's end, 4f8f511 during it, 025a34f at the tenth's end.
  old_bench="${NATTN_OLD_BENCH:-old/nattn-bench}"
  [ -x "$old_bench" ] || tar xJf .carry/old-bench.tar.xz
  # NATTN_AB_PROBLEMS (';'-separated nattn-bench problems) replaces the list.
  IFS=';' read -r -a problems <<<"${NATTN_AB_PROBLEMS:-"--dim 128 --extent 8192 --kernel 8192 --heads 16 --batch 2;--dim 128 --extent 256x256 --kernel 80 --stride 16 --heads 24;--dim 128 --extent 32768 --kernel 2048 --heads 16;--dim 128 --extent 128x128 --kernel 31 --heads 16 --batch 4;--dim 64 --extent 8192 --kernel 8192 --heads 16 --batch 2;--dim 32 --extent 28x28 --kernel 7 --heads 4 --batch 32"}"
  for args in "${problems[@]}"; do
    for r in $(seq "${NATTN_AB_ROUNDS:-2}"); do
      for mode in 1 fast; do
        for bin in "$old_bench" build-gpu/nattn-bench; do
          label=$([ "$bin" = "$old_bench" ] && echo old || echo new)-$([ "$mode" = fast ] && echo fast || echo det)
          NATTN_SM90_BACKWARD=$mode timeout $(t 60) "$bin" --backend cuda --dtype bf16 --iters 5 --warmup 1 --no-verify \
            --mode bwd $args 2>&1 | awk -v l="$label" -v a="$args" '$1 == "backward" {printf "%-8s %s | backward %s ms, %s TFLOP/s\n", l, a, $2, $3}' \
            | tee -a "$out/rows-ab.txt"
        done
      done
    done
  done
  stamp rows-ab
fi
if has fast-ab; then
  for args in "--extent 256x256 --kernel 80 --stride 16 --heads 24" "--extent 256x256 --kernel 80 --heads 24" \
              "--extent 32768 --kernel 2048 --heads 16" "--extent 128x128 --kernel 31 --heads 16 --batch 4" \
              "--extent 8192 --kernel 8192 --heads 16 --batch 2" \
              "--extent 30x48x80 --kernel 18x24x24 --stride 16x8x8 --heads 24"; do
    for mode in det fast det fast; do
      env_fast=$([ "$mode" = fast ] && echo "NATTN_SM90_BACKWARD=fast" || echo "NATTN_SM90_BACKWARD=1")
      env $env_fast timeout $(t 60) build-gpu/nattn-bench --backend cuda --dtype bf16 --dim 128 --iters 5 --warmup 1 \
        --no-verify --mode bwd $args 2>&1 | awk -v m="$mode" -v a="$args" \
        '/^backward/{printf "%-4s %s | backward %s ms, %s TFLOP/s\n", m, a, $2, $3}' | tee -a "$out/fast-ab.txt"
    done
  done
  stamp fast-ab
fi

if has fast-persistent; then
  # issue 10: the fast dK/dV kernel's persistent variant (2026-12-06, fourteenth session; opt-in,
  # NATTN_SM90_BWD_PERSISTENT=fast): its test (random problems through a forced fast row, the
  # plan asserted persistent, against the reference), memcheck and racecheck on it, then the A/B
  # against one CTA per item, the fast kernel in both arms (NATTN_SM90_BACKWARD=fast),
  # interleaved, backward alone -> $out/fast-persistent-ab.txt
  NATTN_SM90_BWD_PERSISTENT=1 timeout $(t 150) build-gpu/tests/nattn_cuda_tests \
    --gtest_filter='*CudaSm90Persistent.FastKernel*' >"$out/fast-persistent-test.log" 2>&1
  echo "CudaSm90Persistent.FastKernel* rc=$?"; tail -3 "$out/fast-persistent-test.log"
  for tool in ${NATTN_FAST_PERSISTENT_TOOLS:-memcheck racecheck}; do
    NATTN_SM90_BWD_PERSISTENT=1 timeout $(t 120) compute-sanitizer --tool $tool --error-exitcode 9 \
      build-gpu/tests/nattn_cuda_tests --gtest_filter='*CudaSm90Persistent.FastKernelMatchesTheReference/bfloat16*' \
      >"$out/fast-persistent-$tool.log" 2>&1
    echo "$tool rc=$?: $(grep -E 'ERROR SUMMARY|hazard' "$out/fast-persistent-$tool.log" | tail -1)"
  done
  FAST_PERSISTENT_PROBLEMS=("--dim 128 --extent 32768 --kernel 2048 --stride 256 --heads 16 --no-verify"
                            "--dim 128 --extent 32768 --kernel 2048 --heads 16 --no-verify"
                            "--dim 64 --extent 32768 --kernel 2048 --heads 16 --no-verify"
                            "--dim 128 --extent 128x128 --kernel 31 --heads 16 --batch 4 --no-verify"
                            "--dim 64 --extent 56x56 --kernel 7 --heads 4 --batch 32 --no-verify"
                            "--dim 128 --extent 256x256 --kernel 80 --stride 16 --heads 24 --no-verify"
                            "--dim 128 --extent 8192 --kernel 8192 --heads 16 --batch 2 --no-verify")
  for args in "${FAST_PERSISTENT_PROBLEMS[@]:0:${NATTN_FAST_PERSISTENT_N:-${#FAST_PERSISTENT_PROBLEMS[@]}}}"; do
    NATTN_SM90_BACKWARD=fast AB_VALUES="fast 0 fast 0" ab NATTN_SM90_BWD_PERSISTENT fast-persistent-ab.txt bwd "$args"
    # and the pair (persistent where its rule says) and the default plan beside them
    AB_VALUES="pair default" ab NATTN_SM90_BACKWARD fast-persistent-ab.txt bwd "$args"
  done
  stamp fast-persistent
fi

if has persistent; then
  # The sm90 backward's persistent variant (NATTN_SM90_BWD_PERSISTENT=1; built 2026-12-05, ninth
  # session, never run on a GPU): its own suite (ctest sets the switch), the whole CUDA suite with
  # the switch on, racecheck/synccheck on its suite, then the A/B against one CTA per item,
  # interleaved 0/1/0/1, backward alone, on a 1-D window (short walks) at d128 and d64 and a NAT
  # stage at d64 -> $out/persistent-ab.txt
  # (ctest finds no tests in a carried build: its CTestTestfile is not packed; the test's own
  # filter, with the switch ctest would set.)
  NATTN_SM90_BWD_PERSISTENT=1 timeout $(t 200) build-gpu/tests/nattn_cuda_tests --gtest_filter='*CudaSm90Persistent.*' \
    >"$out/persistent-ctest.log" 2>&1
  echo "CudaSm90Persistent rc=$?"; tail -3 "$out/persistent-ctest.log"
  # The whole CUDA suite with the switch on (passed on 2026-12-05's first run; NATTN_PERSISTENT_FULL=1)
  if [ "${NATTN_PERSISTENT_FULL:-0}" = 1 ]; then
    NATTN_SM90_BWD_PERSISTENT=1 timeout $(t 300) build-gpu/tests/nattn_cuda_tests --gtest_brief=1 \
      >"$out/persistent-cuda-tests.log" 2>&1
    echo "nattn_cuda_tests with the switch on rc=$?"; tail -3 "$out/persistent-cuda-tests.log"
  fi
  for tool in ${NATTN_PERSISTENT_TOOLS:-racecheck synccheck}; do
    NATTN_SM90_BWD_PERSISTENT=1 timeout $(t 120) compute-sanitizer --tool $tool --error-exitcode 9 \
      build-gpu/tests/nattn_cuda_tests --gtest_filter='*CudaSm90Persistent.MatchesTheReference/bfloat16*' \
      >"$out/persistent-$tool.log" 2>&1
    echo "$tool rc=$?: $(grep -E 'ERROR SUMMARY|hazard' "$out/persistent-$tool.log" | tail -1)"
  done
  # Each kernel alone (=dq, =dkdv) beside both (1) and neither (0); NATTN_PERSISTENT_AB=0 skips it.
  [ "${NATTN_PERSISTENT_AB:-1}" = 1 ] && AB_VALUES="0 dq dkdv 1" ab NATTN_SM90_BWD_PERSISTENT persistent-ab.txt bwd "--dim 128 --extent 32768 --kernel 2048 --heads 16 --no-verify" \
    "--dim 128 --extent 32768 --kernel 127 --heads 16 --no-verify" "--dim 64 --extent 32768 --kernel 2048 --heads 16 --no-verify" \
    "--dim 128 --extent 128x128 --kernel 31 --heads 16 --batch 4 --no-verify" \
    "--dim 64 --extent 56x56 --kernel 7 --heads 4 --batch 32 --no-verify" \
    "--dim 128 --extent 256x256 --kernel 80 --stride 16 --heads 24 --no-verify"
  stamp persistent
fi

if has old-ab; then
  # This build against an older one's nattn-bench (NATTN_OLD_BENCH, default old/nattn-bench from
  # .carry/old-bench.tar.xz: 8eeac4a since the twelfth session), interleaved
  # old/new/old/new: the forward and the backward (deterministic default rows), plus this
  # build's fast mode in the same rounds; and compute-sanitizer on a forward of head dim 256
  # -> $out/old-ab.txt
  old_bench="${NATTN_OLD_BENCH:-old/nattn-bench}"
  [ -x "$old_bench" ] || tar xJf .carry/old-bench.tar.xz
  run_ab() {  # label binary mode args...
    local label=$1 bin=$2 mode=$3 pass
    shift 3
    pass=$([ "$mode" = bwd ] && echo backward || echo forward)
    timeout $(t 60) "$bin" --backend cuda --dtype bf16 --iters 5 --warmup 1 --no-verify --mode "$mode" "$@" 2>&1 |
      awk -v l="$label" -v a="$*" -v p="$pass" '$1 == p {printf "%-10s %s | %s %s ms, %s TFLOP/s\n", l, a, p, $2, $3}' |
      tee -a "$out/old-ab.txt"
  }
  for args in "--dim 128 --extent 256x256 --kernel 80 --stride 16 --heads 24" "--dim 64 --extent 8192 --kernel 8192 --heads 16 --batch 2" \
              "--dim 128 --extent 8192 --kernel 8192 --heads 16 --batch 2" "--dim 256 --extent 64x64 --kernel 17 --heads 8 --batch 2"; do
    for r in 1 2; do run_ab old "$old_bench" fwd $args; run_ab new build-gpu/nattn-bench fwd $args; done
  done
  for args in "--dim 128 --extent 256x256 --kernel 80 --stride 16 --heads 24" "--dim 128 --extent 32768 --kernel 2048 --heads 16" \
              "--dim 128 --extent 8192 --kernel 8192 --heads 16 --batch 2" "--dim 128 --extent 16x44x80 --kernel 12x32x32 --heads 24" \
              "--dim 32 --extent 28x28 --kernel 7 --heads 4 --batch 32"; do
    for r in 1 2; do
      NATTN_SM90_BACKWARD=1 run_ab old "$old_bench" bwd $args
      NATTN_SM90_BACKWARD=1 run_ab new build-gpu/nattn-bench bwd $args
      NATTN_SM90_BACKWARD=fast run_ab new-fast build-gpu/nattn-bench bwd $args
    done
  done
  for tool in memcheck racecheck; do
    timeout $(t 90) compute-sanitizer --tool $tool --error-exitcode 9 build-gpu/nattn-bench --backend cuda --dtype bf16 \
      --mode fwd --iters 1 --warmup 0 --extent 24x20 --kernel 7x5 --dilation 2x1 --heads 2 --additional 9 --dim 256 \
      >"$out/old-ab-$tool-fwd256.log" 2>&1
    echo "$tool fwd d256 rc=$?: $(grep -E 'ERROR SUMMARY|hazard' "$out/old-ab-$tool-fwd256.log" | tail -1)"
  done
  stamp old-ab
fi

if has early-ab; then
  ab NATTN_SM90_BWD_EARLY_STEPS early-ab.txt bwd "${NAT_STAGES[@]}" \
    "--extent 32768 --kernel 2048 --heads 16 --dim 128 --no-verify" \
    "--extent 128x128 --kernel 31 --heads 16 --batch 4 --dim 128 --no-verify"
  stamp early-ab
fi

if has poly-ab; then
  # The float64 check on the CPU only where it is quick (the config-row tests cover the rows).
  ab NATTN_SM90_POLY_EXP poly-ab.txt fwd \
    "--extent 8192 --kernel 8192 --heads 16 --batch 2 --dim 64 --no-verify" \
    "--extent 32768 --kernel 2048 --heads 16 --dim 64 --no-verify" \
    "--extent 128x128 --kernel 31 --heads 16 --batch 4 --dim 64 --no-verify" \
    "--extent 128x128 --kernel 31 --heads 16 --batch 4 --dim 32 --no-verify" \
    "--extent 56x56 --kernel 7 --heads 2 --batch 32 --dim 32"
  stamp poly-ab
fi

if has ctas-ab; then
  ab NATTN_SM90_BWD_TWO_CTAS ctas-ab.txt bwd "${NAT_STAGES[@]}" \
    "--extent 128x128 --kernel 13 --heads 8 --batch 4 --dim 32 --no-verify"
  stamp ctas-ab
fi

if has dq-ab; then
  ab NATTN_SM90_BWD_DQ_OVERLAP dq-ab.txt bwd "--extent 256x256 --kernel 80 --stride 16 --heads 24 --dim 128 --no-verify" \
    "--extent 32768 --kernel 2048 --heads 16 --dim 128 --no-verify" \
    "--extent 128x128 --kernel 31 --heads 16 --batch 4 --dim 128 --no-verify" \
    "--extent 8192 --kernel 8192 --heads 16 --batch 2 --dim 64 --no-verify" "${NAT_STAGES[2]}"
  stamp dq-ab
fi

if has ops-ab; then
  # The NAT stages' forward+backward (ms per step, back-to-back as bench/small_grids.py) through the
  # C++ ops (NATTN_TORCH_OPS_CUDA=1, the default) and the ctypes call (=0), interleaved 1/0/1/0,
  # each run beside dense SDPA in the same process: which call path wins where host time rules.
  for v in 1 0 1 0; do
    (cd bench && NATTN_TORCH_OPS_CUDA=$v timeout $(t 60) python3 - <<'EOF' 2>&1) | tee -a "$out/ops-ab.txt"
import os
import torch
import torch.nn.functional as F
import nattn
from timing import bench
row = [f"NATTN_TORCH_OPS_CUDA={os.environ['NATTN_TORCH_OPS_CUDA']} ({nattn.op_path().cuda_call})"]
for ext, heads in ((7, 16), (14, 8), (28, 4), (56, 2)):
    q, k, v = (torch.randn(32, ext, ext, heads, 32, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    g = torch.randn_like(q)
    qs, ks, vs = (x.detach().flatten(1, 2).transpose(1, 2).contiguous().requires_grad_() for x in (q, k, v))
    gs = g.flatten(1, 2).transpose(1, 2).contiguous()
    na = bench(lambda: torch.autograd.grad(nattn.na2d(q, k, v, 7), (q, k, v), g), 10)
    sd = bench(lambda: torch.autograd.grad(F.scaled_dot_product_attention(qs, ks, vs), (qs, ks, vs), gs), 10)
    row.append(f"{ext}x{ext}: nattn {na:.3f} sdpa {sd:.3f}")
print(" | ".join(row), flush=True)
EOF
  done
  stamp ops-ab
fi

if has kernel-times; then
  # issue 10: which kernel a change moved. ncu times every kernel of one forward+backward step
  # (nattn-bench's warm-up step, then the timed one, whose launches scripts/ncu_kernel_times.py
  # keeps), this build against the old nattn-bench, deterministic and fast backward. ncu runs
  # the kernels one at a time at base clocks: compare these durations with each other only.
  # NATTN_KT_PROBLEMS (';'-separated nattn-bench problems) replaces the list.
  old_bench="${NATTN_OLD_BENCH:-old/nattn-bench}"
  [ -x "$old_bench" ] || tar xJf .carry/old-bench.tar.xz
  IFS=';' read -r -a problems <<<"${NATTN_KT_PROBLEMS:-"--dim 128 --extent 8192 --kernel 8192 --heads 16 --batch 2;--dim 128 --extent 256x256 --kernel 80 --stride 16 --heads 24;--dim 128 --extent 32768 --kernel 2048 --heads 16;--dim 64 --extent 8192 --kernel 8192 --heads 16 --batch 2;--dim 32 --extent 28x28 --kernel 7 --heads 4 --batch 32"}"
  for args in "${problems[@]}"; do
    for mode in 1 fast; do
      for bin in "$old_bench" build-gpu/nattn-bench; do
        label=$([ "$bin" = "$old_bench" ] && echo old || echo new)-$([ "$mode" = fast ] && echo fast || echo det)
        NATTN_SM90_BACKWARD=$mode timeout $(t 90) ncu --csv --metrics gpu__time_duration.sum "$bin" --backend cuda \
          --dtype bf16 --mode bwd --iters 1 --warmup 1 --no-verify $args 2>/dev/null |
          python3 scripts/ncu_kernel_times.py "$label" "$args" | tee -a "$out/kernel-times.txt"
      done
    done
  done
  stamp kernel-times
fi

if has ncu-src; then
  # Where the stalls are, per SASS instruction (PC sampling; the build has -lineinfo): the sm90
  # backward's dQ and dK/dV kernels on flux-2d-s16 and the dense d64 forward. The report goes to
  # $out (ncu-src-<name>.ncu-rep, for the GUI) and its source page to a CSV per kernel (the
  # per-instruction samples by stall reason); 2026-12-05's ncu-bwd put ~30% of the backward's
  # issue gaps under "CTA barrier" without saying where.
  # NATTN_NCU_SRC_SPECS replaces the list: ';'-separated "name:kernel regex:skip:count:env:args"
  # (env: VAR=value pairs joined by ',', or empty), e.g. the fast kernel on the dense case:
  # "bwd-fast-dense:fna_backward_dkdv:1:1:NATTN_SM90_BACKWARD=fast:--mode bwd --dim 128 ...".
  specs="${NATTN_NCU_SRC_SPECS:-bwd-flux-2d-s16:fna_backward:2:2::--mode bwd --dim 128 --extent 256x256 --kernel 80 --stride 16 --heads 24;fwd-dense-8k-d64:fna_forward:1:1::--mode fwd --dim 64 --extent 8192 --kernel 8192 --batch 2 --heads 16}"
  IFS=';' read -ra spec_list <<<"$specs"
  for spec in "${spec_list[@]}"; do
    IFS=: read -r name kern skip count envs args <<<"$spec"
    env ${envs//,/ } timeout $(t 150) ncu --kernel-name regex:$kern --launch-skip $skip --launch-count $count \
      --section SpeedOfLight --section SchedulerStats --section ComputeWorkloadAnalysis \
      --section WarpStateStats --section SourceCounters --import-source yes -f -o "$out/ncu-src-$name" \
      build-gpu/nattn-bench --backend cuda --dtype bf16 --iters 1 --warmup 1 --no-verify $args >"$out/ncu-src-$name.log" 2>&1
    echo "ncu-src $name rc=$?"
    timeout $(t 60) ncu --import "$out/ncu-src-$name.ncu-rep" --page source --print-source sass --csv \
      >"$out/ncu-src-$name.csv" 2>&1 || timeout $(t 60) ncu --import "$out/ncu-src-$name.ncu-rep" --page details \
      --print-details all >"$out/ncu-src-$name.csv" 2>&1
    echo "  source page: $(wc -l <"$out/ncu-src-$name.csv") lines"
    timeout $(t 60) ncu --import "$out/ncu-src-$name.ncu-rep" --page details >"$out/ncu-src-$name-details.txt" 2>&1
    python3 scripts/ncu_top_stalls.py "$out/ncu-src-$name.csv" >"$out/ncu-src-$name-top.txt" 2>&1
    head -3 "$out/ncu-src-$name-top.txt"
  done
  stamp ncu-src
fi

if has weak-flat; then
  (cd bench && timeout $(t 120) python3 weak_flat.py --iters 3 --json "$out/weak-flat.json") 2>&1 | tee "$out/weak-flat.txt"
  stamp weak-flat
fi

if has dense-fb; then
  # issue 10: the dense case's forward+backward beside cuDNN and FlexAttention in one run, both
  # modes (the fast mode runs the fast kernel), after the tenth session's backward changes
  # (measured backward-alone only then) -> $out/dense-fb.md/.json
  (cd bench && NATTN_SM90_BACKWARD=fast timeout $(t 200) python3 anchors.py --backward --modes fast,deterministic \
    --iters 5 --commit "$commit" --only dense-8k-d128 dense-8k-d64 --out "$out/dense-fb.md" --json "$out/dense-fb.json") \
    >"$out/dense-fb.log" 2>&1
  echo "dense-fb rc=$?"; grep '^|' "$out/dense-fb.md" 2>/dev/null || tail -5 "$out/dense-fb.log"
  stamp dense-fb
fi
if has det-ab; then
  # issue 10: deterministic mode at 85% of the default: the ordered fast kernel against the pair,
  # interleaved, backward alone (the default plan's own row, NATTN_SM90_DETERMINISTIC=default,
  # without --deterministic, beside them) -> $out/det-ab.txt
  DET_PROBLEMS=("--extent 8192 --kernel 8192 --heads 16 --batch 2 --dim 64 --no-verify"
                "--extent 8192 --kernel 8192 --heads 16 --batch 2 --dim 128 --no-verify"
                "--extent 16x44x80 --kernel 12x32x32 --stride 8x22x16 --heads 32 --dim 128 --no-verify"
                "--extent 256x256 --kernel 80 --stride 16 --heads 24 --dim 128 --no-verify"
                "--extent 32768 --kernel 2048 --heads 16 --dim 128 --no-verify"
                "--extent 256x256 --kernel 80 --heads 24 --dim 128 --no-verify"
                "--extent 128x128 --kernel 31 --heads 16 --batch 4 --dim 128 --no-verify")
  for args in "${DET_PROBLEMS[@]:0:${NATTN_DET_AB_N:-${#DET_PROBLEMS[@]}}}"; do
    AB_VALUES="ordered pair ordered pair" ab NATTN_SM90_DETERMINISTIC det-ab.txt bwd "$args --deterministic"
    AB_VALUES="default" ab NATTN_SM90_DETERMINISTIC det-ab.txt bwd "$args"
  done
  stamp det-ab
fi
if has mode-ab; then
  # issue 10: which backward mode to run by default where the caller does not ask for
  # determinism: the fast kernel (NATTN_SM90_BACKWARD=fast) against the deterministic pair, backward
  # alone, interleaved, at d64 (where it won 1.22x on the dense case, 2026-12-05) and d128 ->
  # $out/mode-ab.txt
  AB_VALUES="fast 1 fast 1" ab NATTN_SM90_BACKWARD mode-ab.txt bwd \
    "--dim 64 --extent 56x56 --kernel 7 --heads 4 --batch 32 --no-verify" \
    "--dim 64 --extent 28x28 --kernel 7 --heads 8 --batch 32 --no-verify" \
    "--dim 64 --extent 32768 --kernel 2048 --heads 16 --no-verify" \
    "--dim 64 --extent 128x128 --kernel 31 --heads 16 --batch 4 --no-verify" \
    "--dim 128 --extent 256x256 --kernel 80 --stride 16 --heads 24 --no-verify" \
    "--dim 128 --extent 30x48x80 --kernel 18x24x24 --stride 16x8x8 --heads 24 --no-verify"
  stamp mode-ab
fi
if has anchors; then
  # NATTN_ANCHORS / NATTN_ANCHOR_MODES / NATTN_ANCHORS_S choose the anchors, modes and time cap;
  # NATTN_ANCHORS_ENV: variables for anchors.py alone (NATTN_SM90_BACKWARD=fast: its fast mode runs the fast kernel).
  (cd bench && env ${NATTN_ANCHORS_ENV:-} timeout $(t "${NATTN_ANCHORS_S:-270}") python3 anchors.py --backward \
    --modes "${NATTN_ANCHOR_MODES:-fast,deterministic}" --iters 5 --commit "$commit" \
    --only ${NATTN_ANCHORS:-dense-8k-d128 dense-8k-d64 flux-2d-s16 1d-32k flux-2d hunyuan-3d cosmos-3d-s hunyuan-3d-s 1d-32k-s256 cosmos-3d img-2d img-2d-d2} \
    --out "$out/anchors-bwd.md" --json "$out/anchors-bwd.json") >"$out/anchors.log" 2>&1
  echo "anchors rc=$?"; tail -5 "$out/anchors.log"; cat "$out/anchors-bwd.md" 2>/dev/null | grep '^|'
  stamp anchors
fi

if has small; then
  (cd bench && timeout $(t 150) python3 small_grids.py --iters 10 --commit "$commit" \
    --out "$out/small_grids.md" --json "$out/small_grids.json") >"$out/small.log" 2>&1
  echo "small rc=$?"; tail -3 "$out/small.log"; cat "$out/small_grids.md" 2>/dev/null
  stamp small
fi

if has small-nha; then
  (cd bench && NATTN_HEADS_AXIS=0 timeout $(t 150) python3 small_grids.py --iters 10 --commit "$commit-no-heads-axis" \
    --out "$out/small_grids_no_heads_axis.md" --json "$out/small_grids_no_heads_axis.json") >"$out/small-nha.log" 2>&1
  echo "small (NATTN_HEADS_AXIS=0) rc=$?"; cat "$out/small_grids_no_heads_axis.md" 2>/dev/null
  stamp small-nha
fi

if has overhead; then
  (cd bench && NATTN_TORCH_OPS_CUDA=1 timeout $(t 120) python3 overhead.py --label "C++ ops CUDA on, $commit" \
    --out "$out/overhead.json") >"$out/overhead.log" 2>&1
  echo "overhead rc=$?"; tail -25 "$out/overhead.log"
  # The library's own host time by phase (validation, plan lookup, encodes, launches).
  (cd bench && timeout $(t 60) python3 host_breakdown.py --trace cuda) >"$out/host-trace.md" 2>&1
  echo "host trace rc=$?"; cat "$out/host-trace.md"
  stamp overhead
fi

if has profile; then
  # Per NAT stage (batch 32, window 7, d32, bf16): is forward+backward host- or GPU-bound? The
  # wall time of back-to-back steps (as bench/small_grids.py), the host time of a step (no sync),
  # and the GPU time of its kernels (torch.profiler), for nattn and dense SDPA; then the NAT 7x7
  # stage's host rows in full.
  NATTN_TORCH_OPS_CUDA=1 timeout $(t 150) python3 - >"$out/profile.txt" 2>&1 <<'EOF'
import time
import torch, nattn
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile
print(nattn.op_path())
print("| stage | who | wall ms/step | host us/step | GPU us/step (kernels) |")
print("|---|---|---|---|---|")
for ext, heads in ((7, 16), (14, 8), (28, 4), (56, 2)):
    q, k, v = (torch.randn(32, ext, ext, heads, 32, device="cuda", dtype=torch.bfloat16,
                           requires_grad=True) for _ in range(3))
    g = torch.randn_like(q)
    qs, ks, vs = (x.detach().flatten(1, 2).transpose(1, 2).contiguous().requires_grad_()
                  for x in (q, k, v))
    gs = g.flatten(1, 2).transpose(1, 2).contiguous()
    steps = {"nattn": lambda: torch.autograd.grad(nattn.na2d(q, k, v, 7), (q, k, v), g),
             "sdpa": lambda: torch.autograd.grad(F.scaled_dot_product_attention(qs, ks, vs),
                                                 (qs, ks, vs), gs)}
    for who, step in steps.items():
        for _ in range(20):
            step()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(50):
            step()
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                step()
            torch.cuda.synchronize()
        # Kernels and copies only: record_function ranges (nattn::na_forward, ...) also show
        # up as GPU "user annotations" spanning their kernels.
        kernels = [e for e in prof.key_averages() if e.self_device_time_total > 0 and not
                   e.key.startswith(("nattn::", "nattn_native::", "aten::", "autograd::", "Activity"))]
        gpu = sum(e.self_device_time_total for e in kernels) / 10
        print(f"| {ext}x{ext}/{heads} | {who} | {(t2 - t0) / 50 * 1e3:.3f} | {(t1 - t0) / 50 * 1e6:.0f} "
              f"| {gpu:.0f} |", flush=True)
        if who == "nattn":
            print("  " + "; ".join(f"{e.key[:48]} {e.self_device_time_total / 10:.1f}" for e in kernels))
q, k, v = (torch.randn(32, 7, 7, 16, 32, device="cuda", dtype=torch.bfloat16, requires_grad=True)
           for _ in range(3))
g = torch.randn_like(q)
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    for _ in range(20):
        torch.autograd.grad(nattn.na2d(q, k, v, 7), (q, k, v), g)
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
EOF
  echo "profile rc=$?"; head -40 "$out/profile.txt"
  stamp profile
fi

if has ncu-fwd; then
  for spec in "dense-8k-d64:--extent 8192 --kernel 8192 --batch 2 --heads 16 --dim 64" \
              "1d-32k-s256:--extent 32768 --kernel 2048 --stride 256 --heads 16 --dim 128" \
              "flux-2d-s16:--extent 256x256 --kernel 80 --stride 16 --heads 24 --dim 128"; do
    name=${spec%%:*}
    timeout $(t 90) ncu --kernel-name regex:fna_forward --launch-skip 1 --launch-count 1 --section SpeedOfLight \
      --section WarpStateStats --section SchedulerStats --section ComputeWorkloadAnalysis build-gpu/nattn-bench \
      --backend cuda --dtype bf16 --mode fwd --iters 1 --warmup 1 --no-verify ${spec#*:} >"$out/ncu-fwd-$name.txt" 2>&1
    echo "ncu-fwd $name rc=$?"; echo "${spec#*:}" >>"$out/ncu-fwd-$name.txt"
    grep -E "Duration|Compute \(SM\) Throughput|No Eligible|Issued Warp|Issue Slots Busy" "$out/ncu-fwd-$name.txt" | head -8
  done
  stamp ncu-fwd
fi

if has ncu-bwd; then
  n=0
  for args in "--extent 256x256 --kernel 80 --stride 16 --heads 24" "--extent 32768 --kernel 2048 --heads 16"; do
    n=$((n + 1))
    # A bwd step launches forward, Delta, dQ, dK/dV: skip the warm-up step's two, profile the next two.
    timeout $(t 150) ncu --kernel-name regex:fna_backward --launch-skip 2 --launch-count 2 --section SpeedOfLight \
      --section WarpStateStats --section SchedulerStats --section ComputeWorkloadAnalysis \
      --section MemoryWorkloadAnalysis --section Occupancy build-gpu/nattn-bench --backend cuda --dtype bf16 \
      --dim 128 --mode bwd --iters 1 --warmup 1 --no-verify $args >"$out/ncu-bwd-$n.txt" 2>&1
    echo "ncu-bwd $n rc=$?: $args"; echo "$args" >>"$out/ncu-bwd-$n.txt"
    grep -E "fna_backward|Duration|Compute \(SM\) Throughput|Memory Throughput|No Eligible|Issued Warp" \
      "$out/ncu-bwd-$n.txt" | head -24
  done
  # The fast mode's one kernel (dK/dV + dQ partials by float2 atomics) on flux-2d-s16, with the
  # memory tables: is its loss L2 reduction throughput, DRAM, or the serialised dQ product?
  NATTN_SM90_BACKWARD=fast timeout $(t 120) ncu --kernel-name regex:fna_backward --launch-skip 1 --launch-count 1 \
    --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section ComputeWorkloadAnalysis \
    --section MemoryWorkloadAnalysis --section MemoryWorkloadAnalysis_Tables build-gpu/nattn-bench --backend cuda \
    --dtype bf16 --dim 128 --mode bwd --iters 1 --warmup 1 --no-verify --extent 256x256 --kernel 80 --stride 16 \
    --heads 24 >"$out/ncu-bwd-fast.txt" 2>&1
  echo "ncu-bwd fast rc=$?"
  grep -E "fna_backward|Duration|Compute \(SM\) Throughput|Memory Throughput|L2 Cache Throughput|DRAM Throughput|No Eligible" \
    "$out/ncu-bwd-fast.txt" | head -12
  stamp ncu-bwd
fi
