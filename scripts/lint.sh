#!/usr/bin/env bash
# Formatting and lint checks (part of scripts/test.sh): clang-format (.clang-format) over the
# C++/CUDA sources, ruff (pyproject.toml [tool.ruff]) over the Python. Fix with
#   clang-format -i $(git ls-files '*.h' '*.cpp' '*.cu' '*.cuh') && ruff check --fix .
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q "clang-format==19.1.7" "ruff==0.17.6" 2>&1 | grep -v -i "warning" || true
mapfile -t cxx < <(git ls-files '*.h' '*.cpp' '*.cu' '*.cuh' 2>/dev/null || find src include tests bench -name '*.h' -o -name '*.cpp' -o -name '*.cu' -o -name '*.cuh')
clang-format --dry-run --Werror "${cxx[@]}"
ruff check --no-cache python tests/python bench scripts cmake
echo "lint: clang-format and ruff clean (${#cxx[@]} C++/CUDA files)"
