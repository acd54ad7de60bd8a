"""Timing: triton.testing.do_bench on a GPU, torch.utils.benchmark.Timer on the CPU; median and p20/p80 spread.

Callers pass a function that cycles through a few pre-made inputs itself (see runner.Rotator), so that neither
caches nor a lucky allocation flatter the repeated call.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
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


def time_cpu(fn: Callable[[], object], min_run_s: float, min_samples: int = 3, extra_s: float = 3.0) -> Timing:
    """torch.utils.benchmark.Timer.blocked_autorange with the process's thread count (the Timer defaults to 1),
    topped up with single calls to ``min_samples`` blocks (spending at most ``extra_s`` on that)."""
    import time

    from torch.utils.benchmark import Timer

    fn()  # warm-up (first-call allocations, lazy init)
    t = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    m = t.blocked_autorange(min_run_time=min_run_s)
    times = [x * 1e3 for x in m.times]  # ms per call, one value per block
    t_end = time.perf_counter() + extra_s
    while len(times) < min_samples and time.perf_counter() < t_end:
        times += [x * 1e3 for x in t.timeit(number=1).times]
    return Timing(statistics.median(times), _quantile(times, 0.2), _quantile(times, 0.8), len(times),
                  f"torch.utils.benchmark blocked_autorange(min_run_time={min_run_s}s)")


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
