#!/bin/bash
# One device call: harness (correctness, determinism, refusal, busy stream, timing), then sanitizers on a tiny case.
cd "$(dirname "$0")"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
timeout ${HT:-240} ./harness ${MODE:-0} > $OUT/harness.txt 2>&1; echo "harness rc=$?" >> $OUT/harness.txt
grep -v "^ok  " $OUT/harness.txt | tail -60
grep -c "^ok  " $OUT/harness.txt
if command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck synccheck; do
    timeout 60 compute-sanitizer --tool $tool ./harness 2 > $OUT/san_$tool.txt 2>&1; echo "$tool rc=$?"; tail -3 $OUT/san_$tool.txt
  done
else echo "no compute-sanitizer"; fi
