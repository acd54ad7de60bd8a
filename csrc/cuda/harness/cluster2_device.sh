#!/bin/bash
# The `cluster2` stages of `make gpu-check` (scripts/gpu_check.sh): the forced-only tier's correctness as the last
# stage of part 3 (the part for code not yet run on a GPU), its timing as the last stage of part 4 (side by side).
# cluster2 is in none of the other stages (scripts/sanitize_cases.py OWN_PART), and each of its stages comes last in
# its part, so a fault here (a watchdog trap, a hang cut by the timeouts) cannot use up the run of anything else.
#   check      build the standalone harness (no torch) for sm_90a with the tier's and `cluster` v1's sources and run
#              its checks (mode 1): the entry points are called directly, so it sees the tier itself run (or refuse,
#              with the reason its tier record gives), correct vs fp64 / in-dtype references, deterministic, padded
#              steps exactly 0, the refusals (H = 1025, TF32 H = 769, IEEE fp32), a run beside a kernel holding every
#              SM; then the op-level GPU tests of tests/test_cluster2.py (each asserts through the tier record that
#              cluster2 ran) and the tier report of scripts/sanitize_cases.py (bf16, fp16, fp32 as TF32); then
#              compute-sanitizer memcheck / racecheck / synccheck on the harness's tiny cases (mode 2), with what is
#              left of the stage (C2_STAGE_S) -- a tool that no longer fits is reported as not run, never as clean.
#              Writes $OUT/cluster2_harness.txt.
#   timing     the harness's timing against `cluster` v1, interleaved (mode 3; rebuilt when a fresh machine lacks
#              it). Writes $OUT/cluster2_timing.txt.
#   all        both (a standalone run: OUT=/tmp bash csrc/cuda/harness/cluster2_device.sh)
# On a machine without a GPU (a dry run) the harness is built and not run, the op tests skip and the sanitizer says
# why it did not run; on a machine with a GPU a skipped op test fails the step (it would hide an untested tier).
set -uo pipefail
STEP=${1:-all}
cd "$(dirname "$0")/../../.."  # the repository root
OUT=${OUT:-/tmp}
PY=${PY:-${PYTHON:-python3}}
BLD=${C2_BUILD:-build/cluster2_harness}
ARCH=${CLUSTER2_ARCH:-"-gencode=arch=compute_90a,code=sm_90a"}
STAGE_S=${C2_STAGE_S:-0}  # the calling stage's budget (0: unknown); later work is sized to what is left of it
T0=$(date +%s)
left() { echo $(( STAGE_S > 0 ? STAGE_S - ($(date +%s) - T0) : 600 )); }
have_gpu() { nvidia-smi -L >/dev/null 2>&1 && $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; }

build_harness() {
  mkdir -p "$BLD"
  local d=csrc/cuda flags="-O3 -std=c++17 $ARCH -Icsrc/cuda/harness -Icsrc/cuda/harness/stub -Icsrc/cuda -DFUSED_RNN_IEEE"
  local pids=() f rc=0 t=$(date +%s)
  for f in $d/cluster2_fwd.cu $d/cluster2_bwd.cu $d/persistent.cu $d/persistent_cluster.cu $d/dispatch_log.cpp \
           $d/harness/cluster2_harness.cu; do
    nvcc $flags -c "$f" -o "$BLD/$(basename "$f").o" > "$BLD/$(basename "$f").log" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  if [ $rc -ne 0 ]; then tail -n 30 "$BLD"/*.log; echo "harness compile failed"; return 1; fi
  nvcc $ARCH -o "$BLD/cluster2_harness" "$BLD"/*.o || { echo "harness link failed"; return 1; }
  echo "harness built in $(( $(date +%s) - t )) s ($BLD/cluster2_harness)"
}

# run_harness MODE FILE: the harness in MODE under what is left of the stage, its output in $OUT/FILE.
run_harness() {
  local mode=$1 file=$2
  [ -x "$BLD/cluster2_harness" ] || build_harness || return 1
  if ! have_gpu; then echo "no CUDA device: harness built, not run"; return 0; fi
  local budget=$(( $(left) - ${3:-5} )); [ $budget -lt 20 ] && budget=20
  timeout "$budget" "$BLD/cluster2_harness" "$mode" > "$OUT/$file" 2>&1
  local r=$?
  echo "harness (mode $mode) rc=$r" >> "$OUT/$file"
  grep -v "^ok  " "$OUT/$file" | tail -n 40
  echo "$(grep -c '^ok  ' "$OUT/$file") checks ok"
  if [ "$mode" = 3 ] && [ $r -eq 124 ] && grep -q "^TIME " "$OUT/$file"; then
    echo "the timing was cut at the stage budget (${budget}s): the TIME lines above are all there is"
    return 0
  fi
  [ $r -eq 0 ]
}

step_ops() {
  local log rc; log=$(mktemp)
  local t=$(( $(left) - 45 )); [ $t -lt 20 ] && t=20
  timeout $t $PY -m pytest -q -m gpu --timeout=60 -p no:cacheprovider -rfEs \
    tests/test_cluster2.py 2>&1 | tee "$log" | tail -n 15
  rc=${PIPESTATUS[0]}
  if have_gpu && grep -qE "[0-9]+ skipped" "$log"; then echo "GPU tests were skipped on a machine with a GPU"; rc=1; fi
  rm -f "$log"
  t=$(( $(left) - 30 )); [ $t -lt 15 ] && t=15
  timeout $t $PY scripts/sanitize_cases.py --tiers cuda:cluster2 --dtypes bfloat16,float16,tf32 --report || rc=1
  return $rc
}

step_sanitizer() {
  if ! command -v compute-sanitizer >/dev/null; then echo "compute-sanitizer not installed: not run"; return 0; fi
  if ! have_gpu; then echo "no CUDA device: sanitizer not run"; return 0; fi
  [ -x "$BLD/cluster2_harness" ] || build_harness || return 1
  local rc=0 tool r t
  for tool in memcheck racecheck synccheck; do
    t=$(( $(left) - 2 )); [ $t -gt 25 ] && t=25
    if [ $t -lt 8 ]; then echo "$tool (harness): NOT RUN, $(left) s left of the stage"; continue; fi
    timeout $t compute-sanitizer --tool $tool --error-exitcode 3 "$BLD/cluster2_harness" 2 > "$BLD/san.txt" 2>&1
    r=$?; tail -n 4 "$BLD/san.txt"
    if grep -qE "Device not supported|LibraryNotLoaded|error 999" "$BLD/san.txt"; then echo "$tool: cannot run here"
    elif [ $r -eq 124 ]; then echo "$tool (harness): TIMEOUT after $t s"; rc=1
    elif [ $r -ne 0 ]; then echo "$tool (harness): FAILED rc=$r"; rc=1; else echo "$tool (harness): clean"; fi
  done
  return $rc
}

step_check() {
  local rc=0
  build_harness || return 1
  run_harness 1 cluster2_harness.txt 65 || rc=1  # keeps ~65 s of the stage for the op tests and the sanitizer
  step_ops || rc=1
  step_sanitizer || rc=1
  return $rc
}

case $STEP in
  check) step_check ;;
  timing) run_harness 3 cluster2_timing.txt 3 ;;
  all) rc=0; step_check || rc=1; run_harness 3 cluster2_timing.txt 3 || rc=1; exit $rc ;;
  *) echo "usage: $0 [check|timing|all]" >&2; exit 2 ;;
esac
