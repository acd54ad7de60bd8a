#!/usr/bin/env python3
"""Autotuning picks the faster path where the static `auto` policy is wrong -- a demonstration to rerun on a quiet
machine: ``python scripts/autotune_demo.py [--threads N] [--rounds R] [--json out.json]``.

Two shapes, chosen so the answer cannot be noise: one where the static policy (fused_rnn/policy.py) is wrong by a
large factor, and a control it now gets right:
  off-grid H   I = H = 32 < the smallest measured H (64), B = 1, T = 512, fp32, training: the policy runs native
               ("outside the measured grid"), but the fused cpu path's advantage at small H (×8-×76 at H = 64, B = 1)
               only grows as H shrinks.
  decode step  I = H = 256, 2 layers, B = 1, T = 1, fp32, inference -- decoding by calling forward one step at a time:
               the grid cell B = 1, H = 256 wins ×4 forward (measured at T ≈ 15000), but at T = 1 the recurrence is
               nothing and the fused stack's per-layer overhead (W_hh packing, input GEMM, autograd.Function) is all
               there is, while native is one op call. The policy got this wrong until its rule 7 (short sequences run
               native); the shape stays as the control: autotuning must keep native.
For each: what ``fused_rnn.explain`` says before (static) and after the first call (autotuned, with its times); the
first call's cost; then an independent check -- both paths forced (backend="native" / "cpu"), timed in interleaved
rounds (order alternating), forward + backward as in the tuned call -- with the medians, the per-round ratio's median
and 20th percentile, and the load average before and after. Exit status 0 when autotuning picked the path the
independent check found faster in every shape, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import torch  # noqa: E402

import fused_rnn  # noqa: E402
from fused_rnn import autotune  # noqa: E402


@dataclass(frozen=True)
class Shape:
    name: str
    I: int  # noqa: E741
    H: int
    B: int
    T: int
    layers: int = 1
    training: bool = True


SHAPES = (Shape("off-grid H", 32, 32, 1, 512), Shape("decode step", 256, 256, 1, 1, layers=2, training=False))


def _call(m: torch.nn.Module, x: torch.Tensor, training: bool) -> None:
    """One training step's worth of the module: forward, and with ``training`` the gradients of x and every
    parameter (autograd.grad: nothing accumulates between calls)."""
    with torch.set_grad_enabled(training):
        out, h_n = m(x)
        if training:
            torch.autograd.grad((out.sum() + h_n.sum()), [x] + list(m.parameters()))


def _median_of(fn, n: int = 7) -> float:
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    i = q * (len(s) - 1)
    lo = int(i)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (i - lo)


def run_shape(s: Shape, rounds: int) -> dict:
    torch.manual_seed(0)
    rnn = fused_rnn.RNN(s.I, s.H, num_layers=s.layers)
    x = torch.randn(s.T, s.B, s.I, requires_grad=s.training)

    autotune.set_autotune(False)
    with torch.set_grad_enabled(s.training):
        static = fused_rnn.explain(rnn, x)
    autotune.set_autotune(True)
    autotune.clear_cache()
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    with torch.set_grad_enabled(s.training):
        rnn(x)  # the first call of this shape key: measures, then runs the winner
    first = time.perf_counter() - t0
    with torch.set_grad_enabled(s.training):
        steady = _median_of(lambda: rnn(x))
        tuned = fused_rnn.explain(rnn, x)
    autotune.set_autotune(None)

    # The independent check: both paths forced, interleaved rounds, the same work per call as the measurement.
    mods = {p: fused_rnn.RNN(s.I, s.H, num_layers=s.layers, backend=p) for p in ("native", "cpu")}
    for m in mods.values():
        m.load_state_dict(rnn.state_dict())
    for m in mods.values():
        _call(m, x, s.training)
    est = min(_median_of(lambda m=m: _call(m, x, s.training), 3) for m in mods.values())
    reps = max(1, int(5e-3 / max(est, 1e-9)))
    times: dict[str, list[float]] = {p: [] for p in mods}
    for r in range(rounds):
        order = list(mods) if r % 2 == 0 else list(mods)[::-1]
        for p in order:
            t = time.perf_counter()
            for _ in range(reps):
                _call(mods[p], x, s.training)
            times[p].append((time.perf_counter() - t) / reps * 1e3)
    load1 = os.getloadavg()
    ratios = [n / c for n, c in zip(times["native"], times["cpu"])]  # > 1: cpu faster
    med = {p: statistics.median(v) for p, v in times.items()}
    faster = "cpu" if med["cpu"] < med["native"] else "native"
    return {
        "shape": s.name, "I": s.I, "H": s.H, "B": s.B, "T": s.T, "layers": s.layers,
        "mode": "fwd+bwd" if s.training else "fwd",
        "static": {"path": static.name, "rule": static.rule, "why": static.summary},
        "autotuned": {"path": tuned.name, "rule": tuned.rule, "why": tuned.summary,
                      "measured_ms": {m.name: m.median_ms for m in tuned.autotune.measured}},
        "first_call_s": first, "steady_forward_s": steady,
        "check": {"rounds": rounds, "calls_per_sample": reps, "median_ms": med,
                  "ratio_native_over_cpu": {"median": statistics.median(ratios), "p20": _quantile(ratios, 0.2),
                                            "p80": _quantile(ratios, 0.8)},
                  "faster": faster},
        "load_avg_before_after": [load0[0], load1[0]],
        # right: the faster path runs -- autotuning switched to it, or the static policy already had it (a control)
        "ok": tuned.path == faster and (tuned.rule == "autotune" or static.path == faster),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds of the independent check")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if not fused_rnn._ext.has_kernel("CPU"):
        print("autotune_demo: the C++ cpu backend is not built; nothing to compare", file=sys.stderr)
        return 2
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_isa": fused_rnn.policy.cpu_isa(),
           "date": time.strftime("%Y-%m-%d"), "cpu": fused_rnn._config._cpu().get("model")}
    print(f"autotune demo: {env['cpu']} ({env['cpu_isa']}), {env['threads']} thread(s), torch {env['torch']}, "
          f"{env['date']}")
    results = []
    for s in SHAPES:
        r = run_shape(s, args.rounds)
        results.append(r)
        c = r["check"]
        rr = c["ratio_native_over_cpu"]
        print(f"\n== {s.name}: I={s.I} H={s.H} B={s.B} T={s.T} layers={s.layers} fp32 {r['mode']}")
        print(f"  static policy : {r['static']['why']}")
        print(f"  autotuned     : {r['autotuned']['why']}")
        print(f"  first call    : {r['first_call_s'] * 1e3:.1f} ms (a steady forward: "
              f"{r['steady_forward_s'] * 1e3:.3f} ms)")
        print(f"  check         : native {c['median_ms']['native']:.3f} ms, cpu {c['median_ms']['cpu']:.3f} ms per "
              f"call (median of {c['rounds']} interleaved rounds × {c['calls_per_sample']} calls); native/cpu "
              f"median ×{rr['median']:.2f} (p20 ×{rr['p20']:.2f}, p80 ×{rr['p80']:.2f}) -> {c['faster']} is faster")
        print(f"  load average  : {r['load_avg_before_after'][0]:.1f} before, {r['load_avg_before_after'][1]:.1f} "
              "after")
        print(f"  verdict       : {'OK' if r['ok'] else 'WRONG'} -- autotuning picked {r['autotuned']['path']}, "
              f"the static policy {r['static']['path']}")
    if args.json is not None:
        args.json.write_text(json.dumps({"env": env, "results": results}, indent=1))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
