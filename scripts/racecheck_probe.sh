#!/usr/bin/env bash
# Racecheck on the sanitize stage's nattn-bench problems, one summary line and the first hazard
# lines per run (the full logs are too long to bring back): scripts/racecheck_probe.sh BUILD_DIR
b="${1:-build-gpu}"
for args in "--extent 13x9 --kernel 3x5 --stride 2x1 --causal 1x0 --dtype bf16 --dim 64 --mode bwd --additional 3" \
            "--extent 40 --kernel 7 --dilation 3 --dtype fp16 --dim 128 --heads 2 --kv-heads 1" \
            "--extent 5x6x7 --kernel 2x3x4 --dtype bf16 --dim 32 --dim-v 16" \
            "--extent 11x12 --kernel 4 --dtype fp32 --dim 24 --mode bwd" \
            "--extent 6x20x36 --kernel 3x7x9 --dilation 1x2x1 --dtype fp16 --dim 128 --heads 4 --kv-heads 2 --mode bwd --additional 5" \
            "--extent 64x48 --kernel 9x13 --dtype bf16 --dim 64 --heads 24 --batch 2"; do
  echo "== $args"
  "./$b/nattn-bench" --backend cuda --iters 1 --warmup 0 --explain $args 2>/dev/null | grep -o '"family": "[a-z0-9]*"' | head -1
  compute-sanitizer --tool racecheck --racecheck-report hazard "./$b/nattn-bench" --backend cuda --iters 1 --warmup 0 $args > /tmp/rc.log 2>&1
  echo "rc=$?"; grep -E "RACECHECK SUMMARY|ERROR SUMMARY" /tmp/rc.log | tail -2
  grep -E "Race reported|Error: Race|hazard|Write Thread|Read Thread|at .*fna|in .*kernel" /tmp/rc.log | head -12
done
