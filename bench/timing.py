"""Timing: interleaved rounds (every provider of a case once per round, rotated order) on the CPU and the GPU --
the bench's timing rule -- and triton.testing.do_bench for the GPU's peak-rate probes; median and p20/p80 spread.

Callers pass functions that cycle through a few pre-made inputs themselves (runner._timed_fn), so that neither
caches nor a lucky allocation flatter the repeated call.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Timing:
    """Milliseconds per call: median and the 20th / 80th percentiles; n = measurements behind them."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    n: int
    method: str


def _quantile(xs: list[float], q: float) -> float:
    """Linear-interpolated quantile of xs (q in [0, 1])."""
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def time_gpu(fn: Callable[[], object], warmup_ms: int, rep_ms: int, max_rep_ms: int | None = None,
             min_calls: int = 5) -> Timing:
    """triton.testing.do_bench (it flushes L2 between calls); CUDA events when triton is missing.

    do_bench repeats for ``rep_ms``, i.e. once for a call longer than that; the repetition time is raised to
    ``min_calls`` calls (at most ``max_rep_ms``) so that p20/p80 come from several calls.
    """
    est = _estimate_ms(fn)
    rep = max(rep_ms, min(min_calls * est, max_rep_ms if max_rep_ms is not None else rep_ms))
    try:
        from triton.testing import do_bench
    except Exception:
        do_bench = None
    if do_bench is not None:
        med, p20, p80 = do_bench(fn, warmup=warmup_ms, rep=rep, quantiles=[0.5, 0.2, 0.8])
        return Timing(float(med), float(p20), float(p80), max(1, int(rep / max(est, 1e-6))),
                      f"triton do_bench(warmup={warmup_ms}, rep={rep:.0f})")
    return _time_events(fn, warmup_ms, rep)


def _estimate_ms(fn: Callable[[], object]) -> float:
    """One call's time in ms (after one untimed call), with CUDA events."""
    fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return max(start.elapsed_time(end), 1e-3)


def _time_events(fn: Callable[[], object], warmup_ms: int, rep_ms: float) -> Timing:
    """Plain CUDA-event timing, one event pair per call (used only without triton)."""
    est = _estimate_ms(fn)
    for _ in range(max(1, int(warmup_ms / est))):
        fn()
    n = max(3, int(rep_ms / est))
    pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    for s, e in pairs:
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    times = [s.elapsed_time(e) for s, e in pairs]
    return Timing(statistics.median(times), _quantile(times, 0.2), _quantile(times, 0.8), n, "cuda events")


def timing_of(samples_ms: list[float], method: str) -> Timing:
    """A Timing from per-call samples in ms."""
    return Timing(statistics.median(samples_ms), _quantile(samples_ms, 0.2), _quantile(samples_ms, 0.8),
                  len(samples_ms), method)


def quantile(xs: list[float], q: float) -> float:
    """Linear-interpolated quantile of xs (q in [0, 1])."""
    return _quantile(xs, q)


def time_interleaved(fns: dict[str, Callable[[], object]], rounds: int, min_sample_s: float,
                     device: torch.device, beat: Callable[[str], None] | None = None,
                     contexts: dict[str, Callable[[], AbstractContextManager]] | None = None
                     ) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Per-call times in ms of every function, one sample per round, the functions interleaved.

    Each function is called once untimed (warm-up, first-call allocations), and a second time to estimate its cost
    when the first took less than ``min_sample_s``; a sample then repeats it ``reps = ceil(min_sample_s /
    estimate)`` times (one call when it is slower than that). Round r
    calls the functions in the order rotated by r, so neither a slow spell of a shared machine nor the cache state
    one function leaves favours another. On CUDA every sample is bracketed by synchronisations. ``contexts[name]()``
    (e.g. a provider's environment variables) is entered around each of that function's samples, outside the timed
    span. A function that raises is dropped from the remaining rounds: returns (samples, {name: error}).
    """
    import math
    import time

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    contexts = contexts or {}
    names = list(fns)
    reps: dict[str, int] = {}
    errors: dict[str, str] = {}
    out: dict[str, list[float]] = {n: [] for n in names}

    def ctx(n: str) -> AbstractContextManager:
        return contexts[n]() if n in contexts else nullcontext()

    for n in names:
        if beat is not None:
            beat(f"warm-up {n}")
        try:
            with ctx(n):
                t0 = time.perf_counter()
                fns[n]()
                sync()
                est = time.perf_counter() - t0
                if est < min_sample_s:  # a fast call: estimate again without first-call costs
                    t0 = time.perf_counter()
                    fns[n]()
                    sync()
                    est = time.perf_counter() - t0
        except Exception as e:
            errors[n] = f"{type(e).__name__}: {e}"
            continue
        reps[n] = max(1, math.ceil(min_sample_s / max(est, 1e-9)))
    live = [n for n in names if n not in errors]
    for r in range(rounds):
        k = r % len(live) if live else 0
        for n in live[k:] + live[:k]:
            if n in errors:
                continue
            if beat is not None:
                beat(f"round {r + 1}/{rounds} {n}")
            fn, m = fns[n], reps[n]
            try:
                with ctx(n):
                    sync()
                    t0 = time.perf_counter()
                    for _ in range(m):
                        fn()
                    sync()
                    out[n].append((time.perf_counter() - t0) / m * 1e3)
            except Exception as e:
                errors[n] = f"{type(e).__name__}: {e}"
    return out, errors
