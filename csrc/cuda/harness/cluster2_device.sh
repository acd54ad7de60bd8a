#!/bin/bash
# The `cluster2` stage of `make gpu-check` (scripts/gpu_check.sh): everything about the forced-only tier, kept apart
# from the verified tiers' stages so a fault here (a trap, a hang cut by the timeouts) cannot use up their run.
#   1. build the standalone harness (no torch) for sm_90a and run it: the tier itself runs (entry points return
#      true), correct vs fp64 / in-dtype references, deterministic, padded steps 0, refusals, busy-GPU run, then
#      timing against `cluster` (v1) interleaved;
#   2. the op-level GPU tests of tests/test_cluster2.py (-m gpu);
#   3. compute-sanitizer memcheck / racecheck / synccheck on the harness's tiny case and on the op.
# Writes $OUT/cluster2_harness.txt. Budget ~4 min on an H200 with 16 cores.
set -uo pipefail
cd "$(dirname "$0")"
OUT=${OUT:-/tmp}
PY=${PY:-python3}
ARCH=${CLUSTER2_ARCH:-"-gencode=arch=compute_90a,code=sm_90a"}
B=$(mktemp -d)
rc=0
FLAGS="-O3 -std=c++17 $ARCH -I. -Istub -I.. -DFUSED_RNN_IEEE"
t0=$(date +%s)
for f in ../cluster2_fwd.cu ../cluster2_bwd.cu ../persistent.cu ../persistent_cluster.cu cluster2_harness.cu; do
  nvcc $FLAGS -c "$f" -o "$B/$(basename "$f" .cu).o" &
done
wait
nvcc $ARCH -o "$B/cluster2_harness" "$B"/*.o || { echo "harness build failed"; exit 1; }
echo "harness built in $(( $(date +%s) - t0 )) s"
timeout ${C2_HARNESS_S:-150} "$B/cluster2_harness" ${MODE:-0} > "$OUT/cluster2_harness.txt" 2>&1
r=$?; echo "harness rc=$r" >> "$OUT/cluster2_harness.txt"; [ $r -ne 0 ] && rc=1
grep -v "^ok  " "$OUT/cluster2_harness.txt" | tail -40
echo "$(grep -c '^ok  ' "$OUT/cluster2_harness.txt") checks ok"
(cd ../../.. && timeout ${C2_PYTEST_S:-90} $PY -m pytest -q -m gpu --timeout=60 -p no:cacheprovider -rfEs \
   tests/test_cluster2.py 2>&1 | tail -15) || rc=1
if command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck synccheck; do
    timeout 60 compute-sanitizer --tool $tool --error-exitcode 3 "$B/cluster2_harness" 2 > "$B/san.txt" 2>&1
    r=$?; tail -n 4 "$B/san.txt"
    if grep -qE "Device not supported|LibraryNotLoaded|error 999" "$B/san.txt"; then echo "$tool: cannot run here"
    elif [ $r -ne 0 ]; then echo "$tool (harness): FAILED rc=$r"; rc=1; else echo "$tool (harness): clean"; fi
  done
  (cd ../../.. && timeout 60 compute-sanitizer --tool memcheck --error-exitcode 3 $PY scripts/sanitize_cases.py \
     --tiers cuda:cluster2 --dtypes bfloat16,float16 2>&1 | tail -n 6) || rc=1
else
  echo "compute-sanitizer not installed: not run"
fi
rm -rf "$B"
exit $rc
