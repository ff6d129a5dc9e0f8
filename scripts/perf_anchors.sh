#!/usr/bin/env bash
# Quick nattn-bench forward+backward timings of the anchors (no torch needed), for comparing
# two builds on one warm machine:  scripts/perf_anchors.sh PATH/TO/nattn-bench [LABEL] [nattn-bench args...]
# (e.g. `--family sm80` to pin a family on a build that has it).
set -uo pipefail
bench="$1"; label="${2:-}"; shift; [ $# -gt 0 ] && shift
run() { echo "== $label $*"; "$bench" --backend cuda --dtype bf16 --dim 128 --iters 10 --warmup 2 --no-verify --mode bwd "$@" 2>&1 | tail -n +3; }
run --extent 256x256 --kernel 80 --stride 16 --heads 24 "$@"
run --extent 256x256 --kernel 80 --heads 24 "$@"
run --extent 128x128 --kernel 31 --heads 16 --batch 4 "$@"
run --extent 32768 --kernel 2048 --stride 256 --heads 16 "$@"
run --extent 30x48x80 --kernel 18x24x24 --stride 16x8x8 --heads 24 "$@"
run --extent 30x48x80 --kernel 18x24x24 --heads 24 "$@"
run --extent 128x128 --kernel 128 --heads 16 --batch 2 "$@"
