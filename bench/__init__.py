"""fused_rnn's benchmark suite: ``python -m bench [--preset tiny|quick|gpu|full] [--out DIR] ...``.

Modules: cases (shapes, presets), providers (what is timed), runner (check, then time), timing (do_bench / Timer),
floor (FLOP counts, the per-step floor), report (JSON, markdown, plot), cli (arguments, progress bar).
See bench/README.md for how to read the output.
"""

import os as _os

# Before torch loads OpenMP: on a shared 2-core machine, OpenMP's default spin-waiting made a 2-thread T=8 H=17
# reference forward take 250-350 ms instead of 0.4 ms (measured 2026-11-27, 2-core AMD EPYC, load ~5, torch
# 2.14.1): spinning threads fight the other processes for the cores. PASSIVE waiting costs a wake-up per parallel
# region on an idle machine; set OMP_WAIT_POLICY=ACTIVE yourself to measure that way (the JSON records the value).
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
