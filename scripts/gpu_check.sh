#!/usr/bin/env bash
# `make gpu-check`: the staged script a lent GPU runs (docs/design.md). Installs nothing (the GPU machine has no
# network). Split into PARTS so that each fits one device call (at most 600 s; every part's stage budgets add up to
# <= 540 s, build included) and writes its own report; the build of part 1 is reused by the later parts (same source
# hash), so they normally skip it:
#
#   part 1  proven tiers       versions 15 | build 240 | CPU tests on the device's torch 75 | tier report, verified
#                              tiers 45 | gpu_quick tests of verified tiers 135                          = 510 s
#   part 2  proven tiers       build (reuse) 240 | compute-sanitizer on the verified tiers 180 | bench of the
#                              verified tiers beside nn.RNN 110                                          = 530 s
#   part 3  not yet proven     build (reuse) 120 | tier report, unverified tiers and new code 45 | their gpu_quick
#                              tests 100 | compute-sanitizer on them 150 | cluster2 (forced only), last: its
#                              harness's checks, its op tests and tier report, compute-sanitizer on the
#                              harness's tiny case 125                                                  = 540 s
#   part 4  side by side       build (reuse) 240 | bench of every provider, one table 200 | cluster2 timing
#                              against cluster (its harness) 100                                        = 540 s
#   (part 3's build budget went from 240 to 120 for the cluster2 stage: part 1 builds and the later parts reuse or
#   carry its build; a fresh build with MAX_JOBS=16 took 33 s on the H200 on 2026-11-27, and the two cluster2 files
#   it has since gained compile in parallel with the rest (~50 s each on one core of the 2-core CPU machine), so
#   120 s still covers a rebuild. The cluster2 stage: harness build ~30 s on 16 cores (58 s on 2 shared ones),
#   checks <= 30 s, op tests + tier report ~35 s, three sanitizer tools on a tiny case ~30 s.)
#
# "Verified" follows the GPU-verified list (csrc/cuda/gpu_verified.h): a tier on it runs in parts 1-2; tiers not on
# it (cuda batch_tiled, every Triton tier, new tiers), new code inside listed tiers (fallback's fp16/bf16 GEMM, the
# cluster plan; tests marked gpu_unverified) and the files in GPU_CHECK_UNVERIFIED_FILES (two-stream directions) run
# in part 3, so a failure in new code cannot use up the run that re-verifies the proven tiers. A new tier with a stage
# of its own (scripts/sanitize_cases.py OWN_PART: cuda cluster2, issue #22) is in no other stage, and its stages come
# last in parts 3 and 4: a watchdog trap or a hang there cannot use up the rest of part 3 either. Every tier line says
# which tier RAN (fused_rnn.backends.tier_log): a tier that fell back fails its line.
#
#   GPU_CHECK_PART=1|2|3|4|all   which part (default all: 1 2 3 4 in sequence, for a machine with no call limit)
#   GPU_CHECK_SAVE_BUILD=1       part 1 also copies the built extension and its hash stamp to $OUT (carry them into
#                                fused_rnn/ and build/ for a later call on a fresh machine)
#   PYTHON=...                   the interpreter (default python3). Dry run on a CPU machine: PYTHON=.venv/bin/python
#                                FUSED_RNN_CUDA_ARCHS=9.0a BENCH_ARGS="--preset tiny" GPU_CHECK_PART=all (GPU stages
#                                then skip or say "no CUDA device"; every part ran so on 2026-12-01 in ~4 min)
# Files written to $OUT per part N: report-N.md, logs-N.txt; parts 2 and 4 also bench-N.{md,json,png}; part 3 also
# cluster2_harness.txt, part 4 cluster2_timing.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-report}
mkdir -p "$OUT"
PARTS=${GPU_CHECK_PART:-all}
[ "$PARTS" = all ] && PARTS="1 2 3 4"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
PY=${PYTHON:-python3}
UNVERIFIED_FILES=${GPU_CHECK_UNVERIFIED_FILES:-tests/test_concurrency.py}
STAMP=build/.gpu_check_build_hash

# stage N NAME BUDGET_S CMD...: run CMD under a timeout, log it, append a summary to the part's report.
stage() {
  local n=$1 name=$2 budget=$3; shift 3
  echo -e "\n===== stage $n: $name (budget ${budget}s) =====" >> "$LOG"
  local t0; t0=$(date +%s%N)
  timeout --kill-after=10 "$budget" bash -c "$*" > "$OUT/.stage.log" 2>&1
  local rc=$?
  local ds=$(( ($(date +%s%N) - t0) / 100000000 )); local dt="$((ds / 10)).$((ds % 10))"
  cat "$OUT/.stage.log" >> "$LOG"
  local verdict=PASS; [ $rc -ne 0 ] && verdict="FAIL (rc=$rc)"; [ $rc -eq 124 ] && verdict="TIMEOUT (${budget}s)"
  echo -e "\n## Stage $n — $name: $verdict in ${dt}s\n" >> "$R"
  echo '```' >> "$R"; tail -n "${TAIL_LINES:-25}" "$OUT/.stage.log" >> "$R"; echo '```' >> "$R"
  rm -f "$OUT/.stage.log"
  echo "[gpu-check] stage $n $name: $verdict ${dt}s" >&2
  return $rc
}

s_versions() {
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
  $PY - <<'PY'
import platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| cuDNN", torch.backends.cudnn.version())
try:
    import triton; print("triton", triton.__version__)
except Exception as e: print("triton: not importable", e)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device {p.name}: sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, {p.total_memory/2**30:.0f} GiB, "
          f"L2 {getattr(p, 'L2_cache_size', 0)/2**20:.0f} MiB, "
          f"smem opt-in {getattr(p, 'shared_memory_per_block_optin', 0)} B")
else:
    print("NO CUDA DEVICE")
PY
  nvcc --version | tail -n 2 || true
  command -v compute-sanitizer && compute-sanitizer --version | head -n 3 || echo "compute-sanitizer: not found"
}

src_hash() {
  (cat setup.py; find csrc -type f \( -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \) -print0 \
     | sort -z | xargs -0 cat; $PY -c "import torch; print(torch.__version__)"; \
   echo "${FUSED_RNN_CUDA_ARCHS:-native}${TORCH_CUDA_ARCH_LIST:-}") | sha256sum | cut -d' ' -f1
}

s_build() {
  local h; h=$(src_hash)
  if [ "${FUSED_RNN_FORCE_BUILD:-0}" != 1 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$h" ] && \
     $PY -c "import torch, fused_rnn._ext as e; assert e.built_with_cuda(); print('reusing the build of this source \
(hash ${h:0:12}); CUDA tiers:', e.cuda_tiers(), '| archs:', torch.ops.fused_rnn.cuda_archs())"; then
    return 0
  fi
  # the visible GPU's arch (9.0 is built as 9.0a, which the Hopper-only features need), unless the caller says
  MAX_JOBS=${MAX_JOBS:-16} FUSED_RNN_CUDA_ARCHS=${FUSED_RNN_CUDA_ARCHS:-native} NVCC_THREADS=${NVCC_THREADS:-2} \
    $PY setup.py build_ext --inplace 2>&1 | grep -vE '^(copying|creating|running) ' | tail -n 40
  $PY -c "import torch, fused_rnn._ext as e; print('built; CUDA tiers:', e.cuda_tiers(), '| archs:', \
      torch.ops.fused_rnn.cuda_archs(), '| backends:', __import__('fused_rnn').available_backends()); \
      assert e.built_with_cuda(), 'built without CUDA kernels'" || return 1
  mkdir -p build && echo "$h" > "$STAMP"
  if [ "${GPU_CHECK_SAVE_BUILD:-0}" = 1 ]; then cp fused_rnn/_C*.so "$STAMP" "$OUT"/ && ls -la "$OUT"/_C*.so; fi
}

s_cpu_tests() {
  $PY -m pytest -q -x -m "not gpu and not slow" --timeout=120 -p no:cacheprovider \
    ${GPU_CHECK_CPU_TESTS:-tests/test_module.py tests/test_cpu_backend.py tests/test_cuda.py tests/test_concurrency.py \
      tests/test_select.py tests/test_triton.py}
}

# gpu_quick SELECTION: pytest over the gpu_quick tests of one set; on a GPU machine a skipped test fails the stage
# (it would hide an untested tier).
s_gpu_quick() {
  local which=$1 log rc=0; log=$(mktemp)
  local ignore=""; for f in $UNVERIFIED_FILES; do ignore="$ignore --ignore=$f"; done
  if [ "$which" = verified ]; then
    $PY -m pytest -q -m "gpu_quick and not gpu_unverified" --timeout=120 -p no:cacheprovider -rfEs $ignore tests \
      2>&1 | tee "$log"; rc=${PIPESTATUS[0]}
  else
    $PY -m pytest -q -m "gpu_quick and gpu_unverified" --timeout=120 -p no:cacheprovider -rfEs $ignore tests \
      2>&1 | tee "$log"; rc=${PIPESTATUS[0]}
    if [ -n "$UNVERIFIED_FILES" ]; then
      $PY -m pytest -q -m gpu_quick --timeout=120 -p no:cacheprovider -rfEs $UNVERIFIED_FILES 2>&1 | tee -a "$log"
      local r2=${PIPESTATUS[0]}
      [ "$r2" -ne 0 ] && [ "$r2" -ne 5 ] && rc=1
    fi
    [ $rc -eq 5 ] && rc=0  # nothing unverified left to test is not a failure
  fi
  if $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" && grep -qE "[0-9]+ skipped" "$log"; then
    echo "gpu_quick tests were skipped on a machine with a GPU: failing the stage"; rc=1
  fi
  rm -f "$log"; return $rc
}

s_tier_report() { $PY scripts/sanitize_cases.py --set "$1" --dtypes float32,bfloat16,float16 --report; }

s_sanitizer() {
  local set=$1 per_tool=$2
  if ! command -v compute-sanitizer >/dev/null; then echo "compute-sanitizer not installed: stage not run"; return 0; fi
  local rc=0
  for tool in memcheck racecheck synccheck initcheck; do
    echo "--- $tool ($set tiers)"
    timeout "$per_tool" compute-sanitizer --tool $tool --error-exitcode 3 $PY scripts/sanitize_cases.py --set "$set" \
      > "$OUT/.san" 2>&1
    local r=$?
    tail -n 30 "$OUT/.san"
    if grep -qE "Device not supported|LibraryNotLoaded|error 999" "$OUT/.san"; then
      echo "$tool: the sanitizer cannot run on this machine (reported, not a failure)"
    elif [ $r -eq 124 ]; then rc=1; echo "$tool: TIMEOUT after ${per_tool}s"
    elif [ $r -ne 0 ]; then rc=1; echo "$tool: FAILED (rc=$r)"; else echo "$tool: clean"; fi
  done
  rm -f "$OUT/.san"
  return $rc
}

# bench WHICH BUDGET: python -m bench --preset gpu over the verified providers (part 2) or every provider (part 4:
# the bench times a tier off the verified list only when named, so part 4 names the unverified set of part 3 --
# not the own-stage tiers: cluster2 is timed against `cluster` by its harness in stage 4.3).
s_bench() {
  local which=$1 budget=$2 d names=""; d=$(mktemp -d)
  if [ "$which" = all ]; then
    names="nn.RNN auto native reference compile cpu cuda triton $($PY scripts/sanitize_cases.py --names \
      --set verified,unverified --dtypes float32,bfloat16,float16)" || return 1
    echo "providers: $names"
    names="--backends $names"
  elif [ "$which" = verified ]; then
    names=$($PY - <<'PY'
from bench.providers import EXTRA_NAMES
from fused_rnn.backends import verified
names = [f"cuda:{t}" for t in verified.GPU_VERIFIED.get("cuda", ())]
names += [f"triton:{t}" for t in verified.GPU_VERIFIED.get("triton", ())]
names += [n for n in ("native", "auto") if n in EXTRA_NAMES]  # when the bench has them
print(" ".join(names))
PY
)
    [ -z "$names" ] && { echo "no verified provider to bench"; return 0; }
    echo "providers: nn.RNN $names"
    names="--backends $names"
  fi
  timeout $(( budget - 10 )) $PY -m bench --preset gpu --out "$d" $names ${BENCH_ARGS:-}
  local rc=$?
  for f in "$d"/*.md "$d"/*.json "$d"/*.png; do
    [ -f "$f" ] && cp "$f" "$OUT/bench-$PART.${f##*.}"
  done
  rm -rf "$d"
  return $rc
}

# cluster2 STEP BUDGET: one step of the forced-only tier's own stages (csrc/cuda/harness/cluster2_device.sh: check,
# timing), sized to the stage budget it is given.
s_cluster2() { C2_STAGE_S=$2 OUT="$OUT" PY="$PY" bash csrc/cuda/harness/cluster2_device.sh "$1"; }

export -f s_versions src_hash s_build s_cpu_tests s_gpu_quick s_tier_report s_sanitizer s_bench s_cluster2
export PY OUT STAMP UNVERIFIED_FILES

overall=0
for PART in $PARTS; do
  export PART
  R=$OUT/report-$PART.md
  LOG=$OUT/logs-$PART.txt
  : > "$LOG"
  echo "# fused_rnn gpu-check part $PART — $(date -u '+%Y-%m-%d %H:%M UTC') — commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')" > "$R"
  fail=0
  case $PART in
    1)
      stage 1.1 "versions, card, driver" 15 s_versions || fail=1
      stage 1.2 "build (MAX_JOBS=16, the visible GPU's arch)" 240 s_build \
        || { echo "build failed: later stages skipped" >> "$R"; overall=1; continue; }
      stage 1.3 "CPU tests on the device's torch" 75 s_cpu_tests || fail=1
      TAIL_LINES=60 stage 1.4 "tier report: verified tiers (each line: the tier that ran)" 45 s_tier_report verified \
        || fail=1
      TAIL_LINES=40 stage 1.5 "gpu_quick tests of the verified tiers" 135 s_gpu_quick verified || fail=1
      ;;
    2)
      stage 2.1 "build (reused from part 1 when the source hash matches)" 240 s_build \
        || { echo "build failed: later stages skipped" >> "$R"; overall=1; continue; }
      TAIL_LINES=60 stage 2.2 "compute-sanitizer: verified tiers" 180 s_sanitizer verified 44 || fail=1
      TAIL_LINES=80 stage 2.3 "bench --preset gpu: verified tiers beside nn.RNN" 110 s_bench verified 110 || fail=1
      ;;
    3)
      stage 3.1 "build (reused from part 1 when the source hash matches)" 120 s_build \
        || { echo "build failed: later stages skipped" >> "$R"; overall=1; continue; }
      TAIL_LINES=60 stage 3.2 "tier report: tiers and code not yet run on a GPU" 45 s_tier_report unverified || fail=1
      TAIL_LINES=60 stage 3.3 "gpu_quick tests of tiers and code not yet run on a GPU" 100 s_gpu_quick unverified \
        || fail=1
      TAIL_LINES=60 stage 3.4 "compute-sanitizer: unverified tiers" 150 s_sanitizer unverified 36 || fail=1
      TAIL_LINES=70 stage 3.5 "cluster2 (forced only, not yet run on a GPU): harness checks, op tests and tier \
report (each: the tier that ran), compute-sanitizer" 125 s_cluster2 check 125 || fail=1
      ;;
    4)
      stage 4.1 "build (reused from part 1 when the source hash matches)" 240 s_build \
        || { echo "build failed: later stages skipped" >> "$R"; overall=1; continue; }
      TAIL_LINES=100 stage 4.2 "bench --preset gpu: every provider side by side" 200 s_bench all 200 || fail=1
      TAIL_LINES=30 stage 4.3 "cluster2 (forced only): kernel time per step against cluster, interleaved" 100 \
        s_cluster2 timing 100 || fail=1
      ;;
    *) echo "unknown part $PART (1, 2, 3, 4 or all)" >&2; exit 2 ;;
  esac
  echo -e "\n**Part $PART: $([ $fail = 0 ] && echo PASS || echo FAIL)**" >> "$R"
  [ $fail = 0 ] || overall=1
done
exit $overall
