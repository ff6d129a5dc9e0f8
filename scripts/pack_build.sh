#!/usr/bin/env bash
# Packs a CUDA build made on the CPU machine for the GPU machine (compiling there costs device
# minutes): the library (and libnattn_torch_ops.so where built), nattn-bench and both test
# executables of BUILD (default build-gpu) go into .carry/build.tar.xz (about 1/8 of their size;
# the device tool's carry limit is 64 MiB).
# On the GPU machine: tar xJf .carry/build.tar.xz && NATTN_PREBUILT=1 NATTN_LIBRARY=build-gpu/libnattn.so scripts/gpu_check.sh ...
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build-gpu}"
tarball="${2:-.carry/build.tar.xz}"  # e.g. .carry/build-b.tar.xz for a second build (scripts/ab_bench.sh)
mkdir -p .carry
grep -qx "/.carry/" .git/info/exclude 2>/dev/null || echo "/.carry/" >> .git/info/exclude
files=("$build/libnattn.so" "$build/nattn-bench")
for t in "$build/tests/nattn_cuda_tests" "$build/tests/nattn_tests"; do [ -x "$t" ] && files+=("$t"); done
# The C++ dispatcher ops (python/nattn/_native.py loads them from beside libnattn.so), where built.
[ -f "$build/libnattn_torch_ops.so" ] && files+=("$build/libnattn_torch_ops.so")
tar cJf "$tarball" "${files[@]}"
ls -la "$tarball"
