#!/usr/bin/env bash
# A/B timing of two builds on the GPU machine, interleaved on the same card in one run: first a
# verified smoke run of build B on a few problems (30 s each; a failure stops here), then each
# anchor forward+backward with A, B, A, B (nattn-bench, bf16, head dim 128, --no-verify).
# Extra nattn-bench flags (e.g. --deterministic) go in NATTN_AB_FLAGS.
#   scripts/ab_bench.sh build-gpu build-overlap      (both packed with scripts/pack_build.sh DIR)
set -uo pipefail
cd "$(dirname "$0")/.."
a="${1:?build dir A}"; b="${2:?build dir B}"
flags="${NATTN_AB_FLAGS:-}"
for args in "--extent 20x24 --kernel 7x9 --dim 128 --heads 2" "--extent 300 --kernel 33 --dim 64 --dtype fp16" \
            "--extent 6x10x12 --kernel 3x5x7 --dim 32 --heads 3 --kv-heads 1" \
            "--extent 33x40 --kernel 9x11 --stride 2x3 --dilation 2x1 --causal 1x0 --dim 128 --batch 2"; do
  out=$(timeout 30 "$b/nattn-bench" --backend cuda --dtype bf16 --mode bwd --iters 2 --warmup 1 $flags $args 2>&1)
  rc=$?
  echo "smoke $b rc=$rc: $args | $(echo "$out" | tail -1)"
  [ "$rc" = 0 ] || { echo "$out"; exit 1; }
done
for args in "--extent 256x256 --kernel 80 --stride 16 --heads 24" "--extent 256x256 --kernel 80 --heads 24" \
            "--extent 32768 --kernel 2048 --heads 16" "--extent 30x48x80 --kernel 18x24x24 --heads 24" \
            "--extent 30x48x80 --kernel 18x24x24 --stride 16x8x8 --heads 24" \
            "--extent 8192 --kernel 8192 --heads 16 --batch 2" "--extent 128x128 --kernel 31 --heads 16 --batch 4"; do
  for dir in "$a" "$b" "$a" "$b"; do
    timeout 60 "$dir/nattn-bench" --backend cuda --dtype bf16 --dim 128 --iters 5 --warmup 1 --no-verify --mode bwd \
      $flags $args 2>&1 | awk -v d="$dir" -v a="$args" '/^backward/{printf "%-14s %s | backward %s ms, %s TFLOP/s\n", d, a, $2, $3}'
  done
done
