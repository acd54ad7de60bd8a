#!/usr/bin/env bash
# Prepare the Python environment for fused_rnn and print the interpreter to use (last line of stdout).
#  - If `python3` already imports torch (the GPU machine, where python3 is itself a virtual environment with no
#    network), use it as is and install nothing that is already there.
#  - Otherwise create .venv and install torch (ENV.md: torch 2.14.1 is a CUDA 13.0 build that can compile .cu
#    files without a GPU) plus the test/bench tools.
#  - Build the extension with `pip install --no-build-isolation -e .`, skipped when csrc/ and setup.py are unchanged
#    since the last build (a stamp file holds their hash).
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_SPEC=${FUSED_RNN_TORCH_SPEC:-torch==2.14.1}
log() { echo "[setup] $*" >&2; }

if python3 -c "import torch" >/dev/null 2>&1 && [ ! -x .venv/bin/python ]; then
  PY=$(command -v python3)
else
  if [ ! -x .venv/bin/python ]; then
    log "creating .venv"
    python3 -m venv .venv
  fi
  PY=$PWD/.venv/bin/python
  if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    log "installing $TORCH_SPEC into .venv (a few minutes, once)"
    "$PY" -m pip install -q "$TORCH_SPEC" >&2
  fi
fi

# Only what is missing (the GPU machine has everything and no registry).
tools=(pytest:pytest pytest_timeout:pytest-timeout numpy:numpy matplotlib:matplotlib setuptools:setuptools wheel:wheel
       ninja:ninja)
# `build` makes the sdist in tests/test_packaging.py; only in our own .venv (a machine with a registry): where python3
# already has torch (the GPU machine, no registry) the test uses setuptools' PEP 517 hook, which `build` calls anyway.
if [ "$PY" = "$PWD/.venv/bin/python" ]; then tools+=(build:build); fi
missing=()
for mod in "${tools[@]}"; do
  # From /: a checkout's build/ folder would otherwise pass for the `build` package (a namespace package).
  (cd / && "$PY" -c "import ${mod%%:*}") >/dev/null 2>&1 || missing+=("${mod##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  "$PY" -m pip install -q "${missing[@]}" >&2
fi
# The ONNX export tests' dependencies (tests/test_onnx.py; versions as tested, 2026-12-01). Where python3 already
# had torch (the GPU machine: no registry) a failed install is reported and those tests skip; in .venv (CI) it fails.
missing=()
for mod in onnx:onnx~=1.23.2 onnxscript:onnxscript~=0.7.2 onnxruntime:onnxruntime~=1.32.0; do
  "$PY" -c "import ${mod%%:*}" >/dev/null 2>&1 || missing+=("${mod#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  if ! "$PY" -m pip install -q "${missing[@]}" >&2; then
    [ "$PY" = "$PWD/.venv/bin/python" ] && exit 1
    log "could not install ${missing[*]} (no registry?): the ONNX tests will skip"
  fi
fi

stamp=build/.fused_rnn_build_stamp
hash=$( (cat setup.py; find csrc -type f \( -name '*.cpp' -o -name '*.h' -o -name '*.inc' -o -name '*.cu' -o -name '*.cuh' \) \
         -print0 | sort -z | xargs -0 cat; "$PY" -c "import torch; print(torch.__version__)";
         echo "${FUSED_RNN_SKIP_CUDA_BUILD:-0}${TORCH_CUDA_ARCH_LIST:-}${FUSED_RNN_CUDA_ARCHS:-}") | sha256sum | cut -d' ' -f1)
if [ "${FUSED_RNN_FORCE_BUILD:-0}" = 1 ] || [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$hash" ] \
   || ! ( cd /tmp && "$PY" -c "import torch, fused_rnn._C" ) >/dev/null 2>&1; then
  log "building the extension (pip install --no-build-isolation -e .)"
  t0=$(date +%s)
  MAX_JOBS=${MAX_JOBS:-$(nproc)} "$PY" -m pip install -q --no-build-isolation --no-deps -e . >&2
  mkdir -p build && echo "$hash" > "$stamp"
  log "built in $(( $(date +%s) - t0 )) s"
else
  log "extension up to date"
fi
echo "$PY"
