#!/usr/bin/env bash
# GPU machine: quick forward timing of the block-sparse and stride-1 anchors with nattn-bench
# (no baselines; bench/anchors.py is the full benchmark).
set -uo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build-gpu -G Ninja -DCMAKE_CUDA_ARCHITECTURES=90 -DNATTN_BUILD_TESTS=OFF >/dev/null || exit 1
cmake --build build-gpu -j16 --target nattn-bench 2>&1 | grep -E "error" ;
B=./build-gpu/nattn-bench
run() { echo "== $*"; $B --backend cuda --dtype bf16 --dim 128 --iters 10 --warmup 2 "$@" 2>&1 | tail -n +3; }
run --extent 16x16 --kernel 5 --heads 2 --mode bwd
run --extent 33x17x5 --kernel 7x5x3 --stride 2x3x1 --dilation 2x1x1 --causal 0x1x1 --heads 4 --kv-heads 2 --mode bwd
run --extent 256x256 --kernel 80 --stride 16 --heads 24 --no-verify
run --extent 256x256 --kernel 80 --heads 24 --no-verify
run --extent 128x128 --kernel 31 --heads 16 --batch 4 --no-verify
run --extent 32768 --kernel 2048 --stride 256 --heads 16 --no-verify
run --extent 32768 --kernel 2048 --heads 16 --no-verify
run --extent 30x48x80 --kernel 18x24x24 --stride 16x8x8 --heads 24 --no-verify
run --extent 30x48x80 --kernel 18x24x24 --heads 24 --no-verify
run --extent 16x44x80 --kernel 12x32x32 --stride 8x22x16 --heads 32 --no-verify
run --extent 128x128 --kernel 128 --heads 16 --batch 2 --no-verify
