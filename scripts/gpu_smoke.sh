#!/usr/bin/env bash
# GPU machine: builds the C++ library + nattn-bench for sm_90 and runs a spread of problems on
# the CUDA backend, each verified against the float64 CPU reference (fast sanity check).
set -uo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build-gpu -G Ninja -DCMAKE_CUDA_ARCHITECTURES=90 -DNATTN_BUILD_TESTS=OFF >/dev/null || exit 1
cmake --build build-gpu -j16 --target nattn-bench 2>&1 | grep -E "error|warning: .*spill" ; 
B=./build-gpu/nattn-bench
run() { echo "== $*"; $B --backend cuda "$@" 2>&1 | tail -n +2; }
run --extent 16x16 --kernel 5 --dtype bf16 --dim 64 --heads 2 --mode bwd
run --extent 33x17 --kernel 7x5 --stride 2x3 --dilation 2x1 --causal 0x1 --heads 4 --kv-heads 2 --dim 32 --dtype fp16 --mode bwd
run --extent 100 --kernel 17 --causal 1 --dim 128 --dtype bf16 --heads 2 --additional 5 --mode bwd
run --extent 9x10x11 --kernel 3x4x5 --stride 1x2x5 --dim 72 --dim-v 40 --dtype bf16 --mode bwd
run --extent 20x20 --kernel 20 --dim 256 --dtype fp16
run --extent 30x30 --kernel 7 --dim 64 --dtype fp32 --mode bwd
run --extent 256x256 --kernel 80 --stride 16 --dim 128 --heads 24 --dtype bf16 --no-verify --iters 10 --warmup 2
run --extent 128x128 --kernel 31 --dim 128 --heads 16 --batch 4 --dtype bf16 --no-verify --iters 10 --warmup 2
run --extent 32768 --kernel 2048 --stride 256 --dim 128 --heads 16 --dtype bf16 --no-verify --iters 10 --warmup 2
