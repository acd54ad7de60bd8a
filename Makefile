# fused_rnn -- the two commands a fresh machine needs: `make test` and `make bench`.
SHELL := /bin/bash
PYTEST_ARGS ?=

.PHONY: test bench examples setup lint gpu-check gpu-test-full clean

setup:
	@scripts/setup_env.sh >/dev/null

test:
	@PY=$$(scripts/setup_env.sh) && cd tests/.. && $$PY -m pytest -q tests $(PYTEST_ARGS)

bench:
	@PY=$$(scripts/setup_env.sh) && $$PY -m bench --preset quick $(BENCH_ARGS)

examples:
	@PY=$$(scripts/setup_env.sh) && for f in examples/*.py; do echo "== $$f"; $$PY $$f --smoke || exit 1; done

lint:
	@PY=$$(scripts/setup_env.sh) && ($$PY -m ruff --version >/dev/null 2>&1 || $$PY -m pip install -q ruff) && $$PY -m ruff check .

# The one staged script a lent GPU runs (docs/design.md); writes its report under $$OUT (or gpu-report/).
gpu-check:
	@bash scripts/gpu_check.sh

gpu-test-full:
	@PY=$$(scripts/setup_env.sh) && $$PY -m pytest -q -m "gpu" tests

clean:
	rm -rf build fused_rnn/_C*.so fused_rnn/_build_info.json *.egg-info bench/out dist
