# fused_rnn -- the two commands a fresh machine needs: `make test` and `make bench`.
SHELL := /bin/bash
PYTEST_ARGS ?=

.PHONY: test bench examples setup lint gpu-check gpu-check-1 gpu-check-2 gpu-check-3 gpu-check-4 gpu-test-full \
	arch-check amx-check clean

# `make test` compiles the CUDA kernels for one arch, sm_90a (H100/H200; ~38 s per .cu file on 2 cores), unless
# FUSED_RNN_CUDA_ARCHS or TORCH_CUDA_ARCH_LIST says otherwise or a GPU is visible (then setup.py builds for it).
# A distributable build (pip install / wheel with no GPU visible and nothing set) compiles the wide list instead.
TEST_CUDA_ARCHS ?= $(shell nvidia-smi -L >/dev/null 2>&1 || echo 9.0a)

setup:
	@scripts/setup_env.sh >/dev/null

test:
	@PY=$$(TORCH_CUDA_ARCH_LIST=$${TORCH_CUDA_ARCH_LIST:-$(TEST_CUDA_ARCHS)} scripts/setup_env.sh) && cd tests/.. && \
		$$PY -m pytest -q tests $(PYTEST_ARGS)

bench:
	@PY=$$(scripts/setup_env.sh) && $$PY -m bench --preset quick $(BENCH_ARGS)

examples:
	@PY=$$(scripts/setup_env.sh) && for f in examples/*.py; do echo "== $$f"; $$PY $$f --smoke || exit 1; done

lint:
	@PY=$$(scripts/setup_env.sh) && ($$PY -m ruff --version >/dev/null 2>&1 || $$PY -m pip install -q ruff) && $$PY -m ruff check .

# The staged script a lent GPU runs (docs/design.md), in four parts that each fit one device call (<= 540 s of stage
# budgets): 1 and 2 re-verify the proven tiers, 3 runs what has not yet run on a GPU (the forced-only cluster2 tier
# as its last stage), 4 benches every provider side by side (then times cluster2 against cluster). Reports under
# $$OUT (or gpu-report/): report-N.md, logs-N.txt, bench-N.*. `make gpu-check` runs all four.
gpu-check:
	@GPU_CHECK_PART=all bash scripts/gpu_check.sh
gpu-check-1 gpu-check-2 gpu-check-3 gpu-check-4:
	@GPU_CHECK_PART=$(@:gpu-check-%=%) bash scripts/gpu_check.sh

# Compile every .cu for sm_80 (compile only; .ci/run times it): proves the Hopper-only code is guarded.
arch-check:
	@PY=$$(TORCH_CUDA_ARCH_LIST=$${TORCH_CUDA_ARCH_LIST:-$(TEST_CUDA_ARCHS)} scripts/setup_env.sh) && \
		$$PY scripts/arch_compile_check.py --arch $${ARCH_CHECK_ARCH:-8.0}

# On an Intel CPU with AMX (Sapphire Rapids and later): the AMX bf16 kernels (set avx512amx), which have passed only in
# software emulation so far, run for real in a child process against the reference (tests/test_cpu_bf16.py). Not part
# of `make test` until they have passed once on such a machine (README, status table).
amx-check:
	@PY=$$(TORCH_CUDA_ARCH_LIST=$${TORCH_CUDA_ARCH_LIST:-$(TEST_CUDA_ARCHS)} scripts/setup_env.sh) && \
		FUSED_RNN_AMX_CHECK=1 $$PY -m pytest -q -rs tests/test_cpu_bf16.py -k "avx512amx and not emu"

gpu-test-full:
	@PY=$$(scripts/setup_env.sh) && $$PY -m pytest -q -m "gpu" tests

clean:
	rm -rf build fused_rnn/_C*.so fused_rnn/_build_info.json *.egg-info bench/out dist
