#!/usr/bin/env bash
# The main job: builds nattn and runs nattn-bench's embedded default 2-D problem on the best
# backend present (the CPU reference when there is no GPU). Extra arguments go to nattn-bench.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake -S . -B build -G Ninja -DNATTN_BUILD_TESTS=OFF >/dev/null
cmake --build build -j"$(nproc)" --target nattn-bench
./build/nattn-bench "$@"
