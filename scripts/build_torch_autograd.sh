#!/usr/bin/env bash
# Builds the fast path's C++ autograd library (src/torch_autograd) for the torch of the python3 on
# PATH and copies it into a build folder (default build-gpu), beside libnattn_torch_ops.so, where
# python/nattn/_native_autograd.py looks for it. For a library built on another machine (the
# device's carried build): the library is per torch version, the rest of the build is not.
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:-build-gpu}"
tmp="$(mktemp -d)"
cmake -S src/torch_autograd -B "$tmp" -G Ninja -DPython3_EXECUTABLE="$(command -v python3)" >/dev/null
cmake --build "$tmp"
cp "$tmp"/libnattn_torch_autograd_*.so "$dest"/
ls "$dest"/libnattn_torch_autograd_*.so
