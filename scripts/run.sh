#!/usr/bin/env bash
# The main job: builds nattn and runs nattn-bench's embedded default 2-D problem on the best
# backend present (the CPU reference when there is no GPU). Extra arguments go to nattn-bench.
# Quick by design: without a GPU no CUDA code is built; with one, only for the present GPU's
# architecture (the test command, scripts/test.sh, still compiles every architecture).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cfg=(-DNATTN_BUILD_TESTS=OFF)
cap=""
command -v nvidia-smi >/dev/null && cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 || true)
if [ -n "$cap" ]; then
  arch=${cap/./}
  cfg+=(-DCMAKE_CUDA_ARCHITECTURES="$arch")
  # The sm90 kernels exist for sm_90a only; other GPUs build the family's host side alone.
  if [ "$arch" = 90 ]; then cfg+=(-DNATTN_SM90_ARCHS=90a); else cfg+=(-DNATTN_SM90_ARCHS=); fi
else
  cfg+=(-DNATTN_CUDA=OFF)
fi
cmake -S . -B build-run -G Ninja "${cfg[@]}" >/dev/null
cmake --build build-run -j"$(nproc)" --target nattn-bench
./build-run/nattn-bench "$@"
