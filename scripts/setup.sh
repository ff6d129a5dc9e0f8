#!/usr/bin/env bash
# Installs what building and testing nattn need on a fresh Debian machine, from Debian's
# packages and PyPI only. Idempotent: skips what is already there.
#   scripts/setup.sh            build tools, GoogleTest, CUTLASS headers (when nvcc exists)
#   scripts/setup.sh --python   also torch (CPU build 2.13.0 where nothing is installed), pytest, scikit-build-core,
#                               scikit-learn and diffusers (model tests)
set -euo pipefail
cd "$(dirname "$0")/.."

apt_pkgs=()
command -v cmake >/dev/null || apt_pkgs+=(cmake)
command -v ninja >/dev/null || apt_pkgs+=(ninja-build)
command -v g++ >/dev/null || apt_pkgs+=(g++)
dpkg -s libgtest-dev >/dev/null 2>&1 || apt_pkgs+=(libgtest-dev)
if [ ${#apt_pkgs[@]} -gt 0 ]; then
  echo "setup: apt-get install ${apt_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${apt_pkgs[@]}" >/dev/null
fi

# CUTLASS/CuTe headers from the nvidia-cutlass wheel (never vendored) into .deps/cutlass.
CUTLASS_VERSION=4.2.0.0
if command -v nvcc >/dev/null && [ ! -f .deps/cutlass/include/cute/tensor.hpp ]; then
  echo "setup: CUTLASS ${CUTLASS_VERSION} headers"
  rm -rf .deps/cutlass .deps/wheel && mkdir -p .deps/wheel
  python3 -m pip download -q --no-deps -d .deps/wheel "nvidia-cutlass==${CUTLASS_VERSION}"
  python3 - <<'PY'
import glob, zipfile, os, shutil
whl = glob.glob(".deps/wheel/nvidia_cutlass-*.whl")[0]
with zipfile.ZipFile(whl) as z:
    for name in z.namelist():
        for part, dst in (("cutlass_library/source/include/", ".deps/cutlass/include/"),
                          ("cutlass_library/source/tools/util/include/", ".deps/cutlass/util/include/")):
            if name.startswith(part) and not name.endswith("/"):
                out = dst + name[len(part):]
                os.makedirs(os.path.dirname(out), exist_ok=True)
                with z.open(name) as src, open(out, "wb") as f:
                    shutil.copyfileobj(src, f)
PY
  rm -rf .deps/wheel
fi

if [ "${1:-}" = "--python" ]; then
  # torch: keep what is installed; otherwise the CPU build that lies on this kind's disk
  # (an unpinned torch would pull a multi-GB CUDA build).
  python3 -c "import torch" 2>/dev/null || python3 -m pip install -q "torch==2.13.0"
  python3 -m pip install -q "scikit-build-core>=0.10" pytest numpy
  # tests of nattn.models (digits training) and nattn.integrations.diffusers (tiny random models;
  # diffusers pinned to the version the integration's tests were written against); ~20 s.
  python3 -m pip install -q "scikit-learn>=1.3" "diffusers==0.42.1"
fi
echo "setup: done"
