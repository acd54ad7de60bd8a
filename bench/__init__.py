"""fused_rnn's benchmark suite: ``python -m bench [--preset tiny|quick|grid|gpu|full] [--out DIR] ...``.

Modules: cases (shapes, presets), providers (what is timed), runner (check, then interleaved timing), timing
(interleaved rounds), floor (FLOP counts, peak rates, the per-step floor), report (JSON, markdown, summary, plot),
cli (arguments, progress bar), policy (``python -m bench.policy``: the CPU policy data from a grid run).
See bench/README.md for how to read the output.
"""

# The environment is left alone: OMP_WAIT_POLICY and the thread count are what the user runs with (they change
# nn.RNN's CPU times ~10x: OMP_WAIT_POLICY=PASSIVE took nn.RNN T512 B1 H128 fp32 forward from 3.0 to 31.6 ms on a
# quiet Intel Xeon, 2 threads, torch 2.14.1, 2026-12-01). `--omp-wait-policy` / `--threads` change them on request;
# the JSON records both either way.
