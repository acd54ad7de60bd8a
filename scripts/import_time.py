"""Whole-process start-up cost of fused_rnn, paired against ``import torch`` alone (issue #27).

Each round runs, in random order, fresh interpreters from a folder outside the repository:
  torch:    import torch
  <label>:  import torch, fused_rnn; one tiny eager forward + backward of fused_rnn.RNN on the CPU
and times each as a whole process: wall clock around the subprocess, and its CPU time (user + sys), which a busy
machine inflates less than the wall clock. Prints per-round figures, medians, the median of the per-round ratios
to ``import torch``, and the load average before and after (figures are only as quiet as the machine).

Usage: python scripts/import_time.py [--rounds 7] [--variant LABEL=DIR ...]
  --variant LABEL=DIR puts DIR first on PYTHONPATH for that variant (e.g. a copy of another version of the package,
  to compare before/after in the same rounds); without it, one variant "fused_rnn" imports what this Python finds.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time

BASE = "import torch"
FUSED = (
    "import torch, fused_rnn\n"
    "rnn = fused_rnn.RNN(4, 8)\n"
    "out, h = rnn(torch.randn(3, 2, 4))\n"
    "out.sum().backward()\n"
)


def _run(python: str, code: str, cwd: str, pythonpath: str | None) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one fresh interpreter running ``code``."""
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([python, "-c", code], cwd=cwd, env=env, check=True)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--variant", action="append", default=[], metavar="LABEL=DIR")
    args = ap.parse_args()
    variants = [("torch", BASE, None)]
    for v in args.variant or ["fused_rnn="]:
        label, _, path = v.partition("=")
        variants.append((label, FUSED, os.path.abspath(path) if path else None))
    load0 = os.getloadavg()
    times: dict[str, list[tuple[float, float]]] = {label: [] for label, _, _ in variants}
    with tempfile.TemporaryDirectory() as cwd:
        for _, code, path in variants:  # warm the page cache once; not counted
            _run(args.python, code, cwd, path)
        for i in range(args.rounds):
            order = list(variants)
            random.shuffle(order)
            for label, code, path in order:
                times[label].append(_run(args.python, code, cwd, path))
            cells = [f"{label} {times[label][-1][0]:.2f} s wall / {times[label][-1][1]:.2f} s CPU"
                     for label, _, _ in variants]
            print(f"round {i}: " + "   ".join(cells))
    load1 = os.getloadavg()
    base = times["torch"]
    for label, _, _ in variants:
        t = times[label]
        line = (f"{label:>12}: median wall {statistics.median(w for w, _ in t):.3f} s, "
                f"CPU {statistics.median(c for _, c in t):.3f} s")
        if label != "torch":
            line += (f"; vs import torch: extra wall {statistics.median(w - b[0] for (w, _), b in zip(t, base)):.3f} s"
                     f" (ratio {statistics.median(w / b[0] for (w, _), b in zip(t, base)):.2f}), extra CPU "
                     f"{statistics.median(c - b[1] for (_, c), b in zip(t, base)):.3f} s"
                     f" (ratio {statistics.median(c / b[1] for (_, c), b in zip(t, base)):.2f})")
        print(line)
    print(f"medians of {args.rounds} paired rounds; load average before {load0[0]:.1f}, after {load1[0]:.1f} "
          f"({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
