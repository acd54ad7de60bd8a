"""Side-by-side CPU speed of ``fused_rnn.RNN(..., backend="cpu")`` against ``torch.nn.RNN`` (issues 3 and 18).

Both modules hold the same weights and run in one process, in interleaved rounds (nn, fused, nn, fused, ...), so
machine noise hits both alike; the table reports medians and the ratio nn.RNN / fused (> 1 means fused is faster),
with issue 18's target for the shape. Modes: ``fwd`` = forward under no_grad; ``fwd+bwd`` = forward, then backward of
a fixed output gradient into every parameter (input GEMM, recurrence, dW GEMMs: the whole layer). Input x [T, B, I],
time-major, fp32, I = H, one layer, default threading environment (do not set OMP_WAIT_POLICY: ENV.md).

``--paths hidden,batch,serial,blas`` adds fused columns with the CPU backend's path forced (for tuning the automatic
choice in csrc/cpu/elman_cpu.cpp); the fused column itself is the automatic choice. On a shared machine the ratios
are indicative only: the load average is printed before and after.

    python scripts/cpu_speed.py                          # issue 18's grid and targets, 2 threads
    python scripts/cpu_speed.py --rounds 30 --threads 2 --shapes 128,1,1024 256,16,256 --paths hidden,batch
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

import fused_rnn

# (T, B, H=I): issue 18's grid (fp32, 2 threads).
SHAPES: list[tuple[int, int, int]] = [
    (256, 1, 64), (256, 1, 256), (128, 1, 1024), (128, 4, 512), (128, 4, 1024), (256, 16, 256), (128, 16, 512),
    (128, 16, 1024), (128, 64, 512), (64, 256, 256),
]


def targets(B: int, H: int) -> tuple[float | None, float | None]:
    """Issue 18's minimum speed-up (nn.RNN time / fused time) for (fwd, fwd+bwd) at batch B, hidden H."""
    if B <= 4 and H <= 1024:
        return 2.0, (10.0 if B == 1 and H <= 256 else 2.0)
    if B <= 16 and H <= 256:
        return 1.3, 2.0
    if B <= 16 and H <= 1024:
        return 1.3, 1.3
    if B >= 64:
        return 1.2, 1.2
    return None, None


def make_step(mod: torch.nn.Module, x: torch.Tensor, gout: torch.Tensor, mode: str,
              path: str | None = None) -> Callable[[], None]:
    """A closure running one forward (mode "fwd", no grad) or forward+backward (mode "fwd+bwd") of mod on x [T,B,I];
    ``path`` forces the CPU backend's path for the call (None: the automatic choice)."""
    params = list(mod.parameters())

    def fwd() -> None:
        with torch.no_grad():
            mod(x)

    def fwd_bwd() -> None:
        for p in params:
            p.grad = None
        out, _ = mod(x)
        out.backward(gout)

    step = fwd if mode == "fwd" else fwd_bwd
    if path is None:
        return step

    def forced() -> None:
        torch.ops.fused_rnn.cpu_path(path)
        try:
            step()
        finally:
            torch.ops.fused_rnn.cpu_path("auto")

    return forced


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
    ap.add_argument("--shapes", nargs="*", default=[",".join(map(str, s)) for s in SHAPES],
                    help="T,B,H triples (I = H)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--min-s", type=float, default=0.02, help="minimum seconds per timed sample")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--nonlinearity", default="tanh", choices=["tanh", "relu"])
    ap.add_argument("--modes", default="fwd,fwd+bwd", help="comma-separated: fwd, fwd+bwd")
    ap.add_argument("--paths", default="", help="comma-separated forced paths to time as extra fused columns")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    assert "cpu" in fused_rnn.available_backends(), "build the extension first (setup.py build_ext --inplace)"
    isa = torch.ops.fused_rnn.cpu_isa("")
    paths = [p for p in args.paths.split(",") if p]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fused_rnn cpu kernels: {isa}, fp32, "
          f"{args.nonlinearity}, {args.rounds} interleaved rounds; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    print("speed-up = nn.RNN median / fused median (the target's measure); best-of = the same from each one's fastest "
          "round, less sensitive to other processes on a shared machine; path = what the automatic choice ran")
    extra = "".join(f" {p + ' ms':>12} |" for p in paths)
    header = (f"| {'T, B, H=I':>14} | {'mode':>7} | {'nn.RNN ms':>9} | {'fused ms':>8} |{extra} {'speed-up':>8} | "
              f"{'best-of':>7} | {'target':>12} | path |")
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
        t_fwd, t_fb = targets(B, H)
        for mode in args.modes.split(","):
            target = t_fwd if mode == "fwd" else t_fb
            steps = {"nn": make_step(ref, x, gout, mode), "fused": make_step(fused, x, gout, mode)}
            steps.update({p: make_step(fused, x, gout, mode, p) for p in paths})
            med = time_interleaved(steps, args.rounds, args.min_s)
            make_step(fused, x, gout, "fwd")()
            ran = dict(kv.split("=", 1) for kv in torch.ops.fused_rnn.cpu_last_run().split())
            ratio = med["nn"][0] / med["fused"][0]
            best = med["nn"][1] / med["fused"][1]
            tgt = "-" if target is None else (f">= {target:g} " + ("ok" if ratio >= target else "MISSED"))
            cols = "".join(f" {med[p][0] * 1e3:12.3f} |" for p in paths)
            print(f"| {f'{T}, {B}, {H}':>14} | {mode:>7} | {med['nn'][0] * 1e3:9.3f} | {med['fused'][0] * 1e3:8.3f} |"
                  f"{cols} {ratio:7.2f}x | {best:6.2f}x | {tgt:>12} | {ran['path']}/{ran['threads']} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
