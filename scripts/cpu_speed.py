"""Side-by-side CPU speed of ``fused_rnn.RNN(..., backend="cpu")`` against ``torch.nn.RNN`` (issue 3).

Both modules hold the same weights and run in one process, in interleaved rounds (nn, fused, nn, fused, ...), so
machine noise hits both alike; the table reports medians and the ratio nn.RNN / fused (> 1 means fused is faster).
Modes: ``fwd`` = forward under no_grad; ``fwd+bwd`` = forward, then backward of a fixed output gradient into every
parameter (input GEMM, recurrence, dW GEMMs: the whole layer). Input x [T, B, I], time-major, fp32, 2 threads.

    python scripts/cpu_speed.py                 # the issue's shapes and targets
    python scripts/cpu_speed.py --rounds 30 --threads 2 --shapes 512,1,128 256,16,256
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

import fused_rnn

# (T, B, H=I) -> minimum required speed-up (nn.RNN time / fused time) for fwd+bwd and fwd (None = no target).
TARGETS: dict[tuple[int, int, int], tuple[float | None, float | None]] = {
    (512, 1, 128): (5.0, 5.0),
    (256, 16, 256): (1.5, None),
    (128, 64, 512): (1.0, None),
}


def make_step(mod: torch.nn.Module, x: torch.Tensor, gout: torch.Tensor, mode: str) -> Callable[[], None]:
    """A closure running one forward (mode "fwd", no grad) or forward+backward (mode "fwd+bwd") of mod on x [T,B,I]."""
    params = list(mod.parameters())

    def fwd() -> None:
        with torch.no_grad():
            mod(x)

    def fwd_bwd() -> None:
        for p in params:
            p.grad = None
        out, _ = mod(x)
        out.backward(gout)

    return fwd if mode == "fwd" else fwd_bwd


def time_interleaved(steps: dict[str, Callable[[], None]], rounds: int,
                     min_s: float) -> dict[str, tuple[float, float]]:
    """(median, best) seconds per call for each step; each round times every step once, in turn, with enough
    repetitions to last ``min_s`` (calibrated on a warm-up call)."""
    reps = {}
    for name, fn in steps.items():  # warm-up and calibration
        fn()
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        reps[name] = max(1, int(min_s / max(dt, 1e-9)))
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            n = reps[name]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - t0) / n)
    return {name: (statistics.median(v), min(v)) for name, v in samples.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="*", default=[",".join(map(str, s)) for s in TARGETS],
                    help="T,B,H triples (I = H)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--min-s", type=float, default=0.02, help="minimum seconds per timed sample")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--nonlinearity", default="tanh", choices=["tanh", "relu"])
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    assert "cpu" in fused_rnn.available_backends(), "build the extension first (setup.py build_ext --inplace)"
    isa = torch.ops.fused_rnn.cpu_isa("")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fused_rnn cpu kernels: {isa}, fp32, "
          f"{args.nonlinearity}, {args.rounds} interleaved rounds; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs")
    print("speed-up = nn.RNN median / fused median (the target's measure); best-of = the same from each one's fastest "
          "round, less sensitive to other processes on a shared machine")
    header = (f"| {'T, B, H=I':>14} | {'mode':>7} | {'nn.RNN ms':>9} | {'fused ms':>8} | {'speed-up':>8} | "
              f"{'best-of':>7} | target |")
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for spec in args.shapes:
        T, B, H = (int(v) for v in spec.split(","))
        torch.manual_seed(0)
        ref = torch.nn.RNN(H, H, nonlinearity=args.nonlinearity)
        fused = fused_rnn.RNN(H, H, nonlinearity=args.nonlinearity, backend="cpu")
        fused.load_state_dict(ref.state_dict())
        x = torch.randn(T, B, H)
        gout = torch.randn(T, B, H)
        targets = TARGETS.get((T, B, H), (None, None))
        for mode, target in (("fwd+bwd", targets[0]), ("fwd", targets[1])):
            med = time_interleaved({"nn": make_step(ref, x, gout, mode), "fused": make_step(fused, x, gout, mode)},
                                   args.rounds, args.min_s)
            ratio = med["nn"][0] / med["fused"][0]
            best = med["nn"][1] / med["fused"][1]
            tgt = "-" if target is None else (f">= {target:g} " + ("ok" if ratio >= target else "MISSED"))
            print(f"| {f'{T}, {B}, {H}':>14} | {mode:>7} | {med['nn'][0] * 1e3:9.3f} | {med['fused'][0] * 1e3:8.3f} | "
                  f"{ratio:7.2f}x | {best:6.2f}x | {tgt} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
