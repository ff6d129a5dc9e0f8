#!/usr/bin/env bash
# Issue 12 on one multi-GPU machine, in one run of at most ~9 minutes (NATTN_DIST_BUDGET_S):
#   library  NATTN_LIBRARY if set; else .carry/build.tar.xz (scripts/pack_build.sh) unpacked
#            when $build/libnattn.so is missing; else $build/libnattn.so with NATTN_PREBUILT=1;
#            else a CUDA build of the library alone into $build (sm_90, needs .deps carried;
#            minutes of the budget). Python runs from python/ with NATTN_LIBRARY (no pip).
#   probe    which kernel families run an anchor-like call and a placed (halo) call, forward and
#            backward (nattn.explain: nothing runs). While the fused families keep placed boxes
#            switched off, halo/halo-sum/allgather run the generic kernels: the benchmark then
#            times them last, in the time left (bench-halo), and on the smallest anchor.
#   tests    tests/python/test_distributed_nccl.py under torchrun at each P (NCCL: heads mode
#            torch.equal to one GPU, halo mode within tolerance and bitwise reproducible);
#            every rank's log in $OUT/nccl-P<P>/
#   bench    bench/distributed.py strong then weak scaling at each P, one torchrun per
#            (scaling, P) over all anchors, --json $OUT/bench-<strong|weak>-P<P>.json (+ .md);
#            then bench-halo (see probe). $OUT/scaling.md: every mode's forward+backward time
#            against one GPU (strong: speedup; weak: efficiency) and bytes sent per rank.
# Stages run in that order, each under a timeout cut to the budget left; a stage that no
# longer fits is skipped and the summary says so. Pick stages: scripts/gpu_distributed.sh [tests] [bench]
#
# Environment:
#   OUT=dir                 logs and results (default /tmp/nattn-dist)
#   NATTN_LIBRARY=path      a prebuilt CUDA libnattn.so (e.g. build-gpu/libnattn.so)
#   NATTN_PREBUILT=1        use $NATTN_BUILD_DIR/libnattn.so as it is (default dir build-gpu)
#   NATTN_DIST_P="2 4"      process counts (default: 2 and the GPU count, those <= the count)
#   NATTN_DIST_BUDGET_S=540 the whole run's wall-clock budget in seconds
#   NATTN_NCCL_TRIALS=12    random problems per P in the tests
#   NATTN_DIST_ITERS=3      bench/distributed.py --iters of the main bench stages (halo: 1)
#   NATTN_DIST_MODES        modes of the main bench stages (default heads; all four when the
#                           probe finds fused kernels on placed calls)
#   NATTN_DIST_HALO_ANCHORS anchors of bench-halo (default flux-2d)
# NVLink multicast stays off (NCCL_NVLS_ENABLE=0 and friends, DISTRIBUTED.md), exported here
# for every child.
set -uo pipefail
cd "$(dirname "$0")/.."
stages="${*:-tests bench}"
out="${OUT:-/tmp/nattn-dist}"; mkdir -p "$out"
build="${NATTN_BUILD_DIR:-build-gpu}"
budget="${NATTN_DIST_BUDGET_S:-540}"
start=$SECONDS
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export NATTN_REQUIRE_CUDA=1 OMP_NUM_THREADS=4
summary=()
failed=0
has() { [[ " $stages " == *" $1 "* ]]; }
left() { echo $((budget - (SECONDS - start))); }
record() {  # name rc detail: rc 0 ok, 124/137 timed out, 200 skipped, else failed
  local name=$1 rc=$2 detail=${3:-} verdict
  case "$rc" in
    0) verdict=ok ;;
    124|137) verdict="TIMED OUT"; failed=1 ;;
    200) verdict="skipped (out of time: $(left) s of the budget left)" ;;
    *) verdict="FAILED (rc=$rc)"; failed=1 ;;
  esac
  summary+=("$name: $verdict${detail:+ - $detail} [$((SECONDS - start)) s]")
}
finish() {
  echo "==== summary ($((SECONDS - start)) s of $budget)"; printf '%s\n' "${summary[@]}"
  exit "$failed"
}
# Runs "$@" under a timeout of min(cap, budget left - reserve); returns 200 without running
# when less than `need` seconds would remain.
bounded() {
  local cap=$1 need=$2; shift 2
  local t; t=$(left); t=$((t - 10)); [ "$t" -gt "$cap" ] && t=$cap
  [ "$t" -lt "$need" ] && return 200
  timeout --kill-after=15 "$t" "$@"
}

# ---- library
if [ -n "${NATTN_LIBRARY:-}" ]; then
  lib="$NATTN_LIBRARY"
  summary+=("library: $lib (NATTN_LIBRARY)")
elif [ -f .carry/build.tar.xz ] && [ ! -f "$build/libnattn.so" ]; then
  tar xJf .carry/build.tar.xz
  lib="$build/libnattn.so"
  summary+=("library: $lib (from .carry/build.tar.xz)")
elif [ "${NATTN_PREBUILT:-0}" = 1 ] && [ -f "$build/libnattn.so" ]; then
  lib="$build/libnattn.so"
  summary+=("library: $lib (NATTN_PREBUILT=1)")
else
  lib="$build/libnattn.so"
  { cmake -S . -B "$build" -G Ninja -DCMAKE_CUDA_ARCHITECTURES=90 -DNATTN_CUDA=ON \
      -DNATTN_BUILD_TESTS=OFF -DNATTN_BUILD_TOOLS=OFF &&
    cmake --build "$build" -j"$(nproc)" --target nattn_shared; } >"$out/build.log" 2>&1
  rc=$?
  record "build" "$rc" "log: $out/build.log"
  [ "$rc" -eq 0 ] || { tail -20 "$out/build.log"; finish; }
fi
if [ ! -f "$lib" ]; then
  record "library" 1 "$lib does not exist"
  finish
fi
NATTN_LIBRARY="$(realpath "$lib")"
export NATTN_LIBRARY PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"

gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
if [ -n "${NATTN_DIST_P:-}" ]; then
  ps="$NATTN_DIST_P"
else
  ps=2; [ "$gpus" -gt 2 ] && ps="2 $gpus"
fi
runnable=()
for p in $ps; do
  if [ "$p" -ge 2 ] && [ "$p" -le "$gpus" ]; then runnable+=("$p"); else
    summary+=("P=$p: skipped ($gpus GPUs here)"); fi
done
echo "GPUs: $gpus, P: ${runnable[*]:-none}, budget ${budget} s"
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
[ "${#runnable[@]}" -gt 0 ] || { record "GPUs" 1 "need >= 2 ($gpus here)"; finish; }

# ---- probe: the families of a stride-1 anchor-like call and of a placed (halo) call
python3 - >"$out/probe.txt" 2>&1 <<'EOF'
import torch, nattn
q = torch.empty(1, 30, 48, 80, 24, 128, device="cuda", dtype=torch.bfloat16)
fam = [nattn.explain(q, q, q, (18, 24, 24), backward=b).family for b in (False, True)]
print(f"unplaced (hunyuan-3d, one GPU and heads mode): forward {fam[0]}, backward {fam[1]}")
q = torch.empty(1, 64, 256, 24, 128, device="cuda", dtype=torch.bfloat16)
k = torch.empty(1, 143, 256, 24, 128, device="cuda", dtype=torch.bfloat16)
fam = [nattn.explain(q, k, k, (80, 80), global_extent=(256, 256), query_origin=(64, 0),
                     key_origin=(25, 0), backward=b).family for b in (False, True)]
print(f"placed (flux-2d shard of 4, halo mode): forward {fam[0]}, backward {fam[1]}")
print("PLACED_FUSED=" + str(int("generic" not in fam)))
EOF
rc=$?
cat "$out/probe.txt"
placed_fused=$(sed -n 's/^PLACED_FUSED=//p' "$out/probe.txt")
record "probe" "$rc" "$(grep -v PLACED_FUSED "$out/probe.txt" | tail -2 | tr '\n' ';')"
[ -n "$placed_fused" ] || placed_fused=0  # a failed probe: assume the generic placed kernels

# ---- tests
if has tests; then
  for p in "${runnable[@]}"; do
    logs="$out/nccl-P$p"; rm -rf "$logs"
    bounded 180 60 torchrun --standalone --nproc-per-node "$p" --log-dir "$logs" --tee 3 \
      --local-ranks-filter 0 -m pytest -q -s -p no:cacheprovider \
      tests/python/test_distributed_nccl.py 2>&1 | tee "$out/nccl-P$p.log" | grep -v '^W[0-9]' | tail -40
    rc=${PIPESTATUS[0]}
    # A skip here means the test did not run (no NCCL, too few devices): not a pass.
    [ "$rc" -eq 0 ] && ! grep -q ' passed' "$out/nccl-P$p.log" && rc=1
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 200 ]; then  # the other ranks' last words
      for f in $(find "$logs" -name 'stderr.log' 2>/dev/null | sort); do
        echo "== $f"; tail -15 "$f"
      done
    fi
    record "tests P=$p" "$rc" "$(grep -E '(passed|failed|skipped|error)' "$out/nccl-P$p.log" | tail -1 | sed 's/^\[default0\]://'), logs $logs"
  done
fi

# ---- bench
bench() {  # name P cap args...
  local name=$1 p=$2 cap=$3; shift 3
  bounded "$cap" 45 torchrun --standalone --nproc-per-node "$p" bench/distributed.py \
    --json "$out/$name.json" "$@" >"$out/$name.md" 2>"$out/$name.err"
  local rc=$?
  grep -E '^\|' "$out/$name.md" | tail -30
  [ "$rc" -ne 0 ] && [ "$rc" -ne 200 ] && tail -15 "$out/$name.err"
  record "$name" "$rc" "bench/distributed.py $* -> $out/$name.{md,json}"
}
if has bench; then
  modes="${NATTN_DIST_MODES:-heads}"; axes=1
  if [ -z "${NATTN_DIST_MODES:-}" ] && [ "$placed_fused" = 1 ]; then
    modes="heads,halo,halo-sum,allgather"; axes="1,2"
  fi
  iters="${NATTN_DIST_ITERS:-3}"
  for weak in "" "--weak"; do
    for p in "${runnable[@]}"; do
      bench "bench-$([ -n "$weak" ] && echo weak || echo strong)-P$p" "$p" 150 \
        --modes "$modes" --axes "$axes" --iters "$iters" $weak
    done
  done
  if [ "$placed_fused" != 1 ] && [ -z "${NATTN_DIST_MODES:-}" ]; then
    # halo/halo-sum/allgather on the generic kernels: the smallest anchor, one sample.
    for p in "${runnable[@]}"; do
      bench "bench-halo-strong-P$p" "$p" 200 --anchors "${NATTN_DIST_HALO_ANCHORS:-flux-2d}" \
        --modes halo,halo-sum,allgather --axes 1 --iters 1
    done
  fi
  # Speedups against one GPU from every JSON written (rank 0's "1 GPU" row of the same run).
  python3 - "$out" >"$out/scaling.md" 2>&1 <<'EOF'
import glob, json, os, sys
out = sys.argv[1]
print("| run | anchor | mode | GPUs | axes (grid) | fwd+bwd ms | 1 GPU ms | speedup (strong) / "
      "efficiency (weak) | fwd ms | 1 GPU fwd ms | MB/rank fwd | MB/rank fwd+bwd | comm fwd ms | "
      "kernel fwd+bwd ms |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for path in sorted(glob.glob(os.path.join(out, "bench-*.json"))):
    d = json.load(open(path))
    one = {r["anchor"]: r for r in d["rows"] if r["mode"] == "1 GPU"}
    for r in d["rows"]:
        if r["mode"] == "1 GPU" or "skipped" in r or r["anchor"] not in one:
            continue
        base = one[r["anchor"]]
        f = lambda x: "" if x is None else f"{x:.2f}"  # noqa: E731
        print(f"| {os.path.basename(path)[6:-5]} | {r['anchor']} | {r['mode']} | {r['gpus']} | "
              f"{r['shard_axes']} ({r['process_grid']}) | {f(r['fwd_bwd_ms'])} | "
              f"{f(base['fwd_bwd_ms'])} | {base['fwd_bwd_ms'] / r['fwd_bwd_ms']:.2f}x | "
              f"{f(r['fwd_ms'])} | {f(base['fwd_ms'])} | {r['bytes_fwd_per_rank'] / 2**20:.0f} | "
              f"{r['bytes_fwd_bwd_per_rank'] / 2**20:.0f} | "
              f"{f(r['comm_fwd_ms'])} | {f(r['kernel_fwd_bwd_ms'])} |")
EOF
  cat "$out/scaling.md"
fi
finish
