#!/bin/bash
# runs the fuzz under each ISA sequentially, 1 thread; then default at 2 threads
cd /work/wt/fuzz
export PYTHONPATH=/work/wt/fuzz/hunt:/work/wt/fuzz/tests FUSED_RNN_FUZZ_SEEDS=1500
for isa in generic avx2 avx512 ""; do
  echo "=== isa=${isa:-default} threads=1 ==="; date
  OMP_NUM_THREADS=1 HUNT_THREADS=1 HUNT_ISA=$isa /usr/bin/time -f "%e s" /work/main/.venv/bin/python -m pytest -q tests/test_fuzz_parity.py -p no:cacheprovider -p force_isa_plugin 2>&1 | grep -v PASSED | tail -30
done
echo "=== default threads=2 ==="; date
OMP_NUM_THREADS=2 HUNT_THREADS=2 /usr/bin/time -f "%e s" /work/main/.venv/bin/python -m pytest -q tests/test_fuzz_parity.py -p no:cacheprovider -p force_isa_plugin 2>&1 | tail -30
date
