#!/usr/bin/env bash
# Registers and spills per kernel, from ptxas -v, without touching the build's objects: one sm90
# instantiation file (e.g. bwd_hd128, hd64) compiled with its own nvcc command from BUILD's
# ninja, or any .cu (e.g. one that instantiates a single kernel: ~30 s instead of minutes) with
# the flags of FLAGS_FROM (default bwd_hd128). Used for register work on the CPU machine, where
# ptxas is the only measure (2026-12-05).
#   scripts/kernel_spills.sh bwd_hd128
#   scripts/kernel_spills.sh /tmp/one_kernel.cu    # e.g. with
#     #include "cuda/sm90/kernel/fna_backward_dkdv.cuh"
#     namespace nattn::cuda::sm90 { template __global__ void fna_backward_dkdv_kernel<
#       DkdvTraits<cutlass::bfloat16_t, 128, 64, 2, true>>(const __grid_constant__ BackwardArgs); }
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:?usage: scripts/kernel_spills.sh INSTANTIATION_NAME|FILE.cu}"
build="${BUILD:-build-gpu}"
from="${FLAGS_FROM:-bwd_hd128}"
[[ "$what" == *.cu ]] || from="$what"
obj="CMakeFiles/nattn_cuda_sm90.dir/src/cuda/sm90/instantiate/$from.cu.o"
# The object's command, less the spill-check wrapper and the depfile; its output (the last
# argument pair, "-o CMakeFiles/...") goes to a scratch file, never over the build's object.
cmd=$(cd "$build" && ninja -t commands "$obj" | tail -1 | sed 's|^.*ptxas_check.py [^ ]* ||; s| -MD -MT [^ ]* -MF [^ ]*||')
cmd=$(sed "s| -o CMakeFiles[^ ]*| -o /tmp/kernel_spills.o|" <<<"$cmd")
[[ "$cmd" == *"-o /tmp/kernel_spills.o"* ]] || { echo "kernel_spills: no -o to redirect in: $cmd" >&2; exit 1; }
if [[ "$what" == *.cu ]]; then
  src=$(readlink -f "$what")
  cmd=$(sed "s| -c [^ ]*\.cu| -c $src|" <<<"$cmd")
fi
(cd "$build" && eval "$cmd -Xptxas -v") 2>&1 | awk '
  /Compiling entry function/ { match($0, /function .[^ ]*/); name = substr($0, RSTART + 10, RLENGTH - 11) }
  /bytes stack frame/ { frame = $0; sub(/^ +/, "", frame) }
  /Used [0-9]+ registers/ { match($0, /Used [0-9]+ registers/); printf "%s | %s | %s\n", substr($0, RSTART, RLENGTH), frame, name }'
