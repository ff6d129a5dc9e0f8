#!/usr/bin/env bash
# Every test: format/lint checks (scripts/lint.sh), builds the library (and, where nvcc exists, compiles the CUDA backend), runs the
# C++ suite through CTest, installs the Python package with pip and runs its pytest suite.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/setup.sh --python
bash scripts/lint.sh

cmake -S . -B build -G Ninja >/dev/null
cmake --build build -j"$(nproc)"
ctest --test-dir build --output-on-failure -j"$(nproc)"

# The Python package links the same C++ library; without a GPU here, skip its CUDA build
# (the C++ build above already compiled the CUDA sources).
py_cuda=OFF
command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 && py_cuda=AUTO
python3 -m pip install -q --no-build-isolation -C cmake.define.NATTN_CUDA="$py_cuda" .
(cd tests/python && python3 -m pytest -q -p no:cacheprovider .)
echo "test.sh: all tests passed in $(( $(date +%s) - start )) s"
