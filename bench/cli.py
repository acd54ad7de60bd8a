"""Command line of ``python -m bench``: arguments, a progress bar on stderr, the run loop, the outputs.

Exit status: 0 when every correctness check passed, 1 when a provider FAILED its check or raised (ERROR),
2 for bad arguments, 3 when a single check or timing stalled past the preset's stall_s (a hung kernel).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from .cases import PRESET_CONFIG, PRESETS, preset_cases
from .providers import EXTRA_NAMES, FUSED_BACKENDS

DEFAULT_OUT = Path(__file__).resolve().parent / "out"


class Progress:
    """A plain progress bar on stderr: redrawn in place on a terminal, one line per step in a log file."""

    def __init__(self, total: int, width: int = 30) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.width = width
        self.t0 = time.perf_counter()
        self.tty = sys.stderr.isatty()

    def tick(self, what: str) -> None:
        self.done += 1
        frac = min(self.done / self.total, 1.0)
        bar = "#" * int(frac * self.width) + "." * (self.width - int(frac * self.width))
        line = f"[{bar}] {self.done}/{self.total} {time.perf_counter() - self.t0:5.0f}s {what}"
        if self.tty:
            sys.stderr.write("\r" + line[:150].ljust(150))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


class Watchdog:
    """Declares a hang when no heartbeat came for ``limit_s``: calls ``on_stall(what, seconds)`` (which writes the
    report so far) and then ``exit_fn(3)``. A hung GPU kernel cannot be interrupted from Python, so the process
    ends itself rather than eat the rest of a GPU stage; the report says where it stopped."""

    def __init__(self, limit_s: float, on_stall: Callable[[str, float], None],
                 exit_fn: Callable[[int], object] = os._exit) -> None:
        self.limit_s = limit_s
        self.on_stall = on_stall
        self.exit_fn = exit_fn
        self.what = "start-up"
        self.t = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="bench-watchdog", daemon=True)
        self._thread.start()

    def beat(self, what: str) -> None:
        self.what, self.t = what, time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _watch(self) -> None:
        poll = min(1.0, self.limit_s / 4)
        while not self._stop.wait(poll):
            idle = time.monotonic() - self.t
            if idle > self.limit_s:
                try:
                    self.on_stall(self.what, idle)
                finally:
                    self.exit_fn(3)
                return


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description="Benchmark fused_rnn against torch.nn.RNN.")
    p.add_argument("--preset", choices=PRESETS, default="quick",
                   help="tiny (tests, seconds), quick (default, ≤ 3 min on a 2-core CPU), grid (the CPU map the "
                        "auto policy is generated from, ~12 min on 2 cores), gpu (≤ 60 s on an H100), full")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--backends", nargs="+", default=None, metavar="NAME",
                   help="only these providers (nn.RNN is always kept): "
                        f"{', '.join(EXTRA_NAMES[1:] + FUSED_BACKENDS)} or backend:tier, e.g. cuda:fallback; "
                        "commas work too")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda if available, else cpu")
    p.add_argument("--with-flashrnn", action="store_true", help="also time FlashRNN (needs `import flashrnn`)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="stop starting new cases after this many seconds (default: the preset's budget)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads(N) before timing (default: leave torch's thread count alone)")
    p.add_argument("--omp-wait-policy", choices=("PASSIVE", "ACTIVE"), default=None,
                   help="set OMP_WAIT_POLICY (only `python -m bench` can: it must be set before torch loads "
                        "OpenMP; default: leave the environment alone)")
    p.add_argument("--stall-s", type=float, default=None,
                   help="treat a single check or timing that runs longer than this as a hang: write the report "
                        "so far and exit with status 3 (default: the preset's)")
    args = p.parse_args(argv)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    elif args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available here (torch.cuda.is_available() is False)")
    if args.backends is not None:
        names = [n for item in args.backends for n in item.split(",") if n]
        allowed = set(EXTRA_NAMES) | set(FUSED_BACKENDS)
        bad = [n for n in names if n not in allowed and n.split(":", 1)[0] not in FUSED_BACKENDS]
        if bad:
            p.error(f"--backends: unknown name(s) {bad}; choose from {sorted(allowed)} or backend:tier")
        args.backends = names
    if args.budget_s is not None and args.budget_s <= 0:
        p.error("--budget-s must be positive")
    if args.stall_s is not None and args.stall_s <= 0:
        p.error("--stall-s must be positive")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    t_start = time.perf_counter()  # the preset's budget counts from here: start-up is part of a stage's time
    args = parse_args(argv)
    from . import report
    from .floor import measure_cpu_peaks, measure_peaks
    from .providers import discover
    from .runner import Runner, derive
    from .timing import time_gpu

    device = torch.device(args.device)
    cfg = PRESET_CONFIG[args.preset]
    budget = args.budget_s if args.budget_s is not None else cfg.budget_s
    cases = preset_cases(args.preset, device.type)
    omp_note = _omp_wait_policy_note(args.omp_wait_policy)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    wanted = args.backends if args.backends is not None else (list(cfg.providers) if cfg.providers else None)
    providers, notes = discover(device, wanted, args.with_flashrnn)
    if omp_note:
        notes.append(omp_note)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"bench: cannot create --out {args.out}: {e}", file=sys.stderr)
        return 2
    print(f"bench: preset {args.preset} on {device.type}, {len(cases)} cases, providers: "
          f"{', '.join(p.name for p in providers)}", file=sys.stderr)
    if device.type == "cuda" and any(c.dtype == "bf16" for c in cases):
        # torch.backends.cudnn.CUDNN_TENSOR_DTYPES has no bf16 (torch 2.11-2.14), so nn.RNN.flatten_parameters()
        # leaves bf16 weights as they are and cuDNN compacts them on every training call, warning each time
        # (seen on an H200, torch 2.11, 2026-11-27). That is the nn.RNN users get; say it once, not per call.
        warnings.filterwarnings("ignore", message="RNN module weights are not part of single contiguous")
        notes.append("nn.RNN bf16: torch does not flatten bf16 RNN weights for cuDNN (bf16 is not in "
                     "cudnn.CUDNN_TENSOR_DTYPES), so cuDNN compacts them on every training call; the baseline "
                     "includes that cost, as every nn.RNN user in bf16 pays it")
    for n in notes:
        print(f"bench: note: {n}", file=sys.stderr)

    dropped: list[str] = []
    state: dict = {"env": None, "peaks": None, "rows": []}  # what the watchdog's report needs
    json_path, md_path = args.out / report.JSON_NAME, args.out / report.MD_NAME

    def on_stall(what: str, idle: float) -> None:
        msg = f"STALLED: no progress for {idle:.0f} s while {what}; the run was stopped (exit status 3)"
        print(f"\nbench: {msg}", file=sys.stderr, flush=True)
        if state["env"] is not None:
            env_s = dict(state["env"], provider_notes=list(state["env"]["provider_notes"]) + [msg])
            report.write_json(json_path, env_s, state["rows"], state["peaks"], dropped, finished=False)
            md_path.write_text(report.markdown(env_s, state["rows"], state["peaks"], dropped))

    watchdog = Watchdog(args.stall_s if args.stall_s is not None else cfg.stall_s, on_stall)
    watchdog.beat("measuring peak rates" if device.type == "cuda" else "start-up")
    keys = sorted({c.dtype for c in cases if c.dtype != "fp64"})
    if device.type == "cuda":
        peaks = measure_peaks(keys, lambda fn: time_gpu(fn, 5, 30).median_ms)
    else:
        watchdog.beat("measuring the CPU's peak rates")
        peaks = measure_cpu_peaks(keys)
    env = report.environment(device, args.preset, notes)
    env["threads_flag"] = args.threads
    env["omp_wait_policy_flag"] = args.omp_wait_policy
    env["dtypes"] = sorted({c.dtype for c in cases})
    env["preset_config"] = dataclasses.asdict(cfg)
    env["budget_s"] = budget
    state["env"], state["peaks"] = env, peaks
    runner = Runner(device, providers, cfg)
    state["rows"] = runner.rows  # the same list object: the watchdog reports what is done so far
    progress = Progress(sum(runner.tasks(c) for c in cases))
    runner.progress = progress.tick
    runner.heartbeat = watchdog.beat
    t0 = time.perf_counter()
    for case in cases:
        if budget is not None and time.perf_counter() - t_start > budget:
            dropped.append(f"{case.label()} {case.dtype}")
            continue
        runner.run_case(case)
        derive(runner.rows, peaks)
        # Written after every case: a run stopped by an outer timeout still leaves what it measured.
        report.write_json(json_path, env, runner.rows, peaks, dropped, finished=False)
        md_path.write_text(report.markdown(env, runner.rows, peaks, dropped))
    progress.close()
    watchdog.beat("writing the report")
    derive(runner.rows, peaks)
    report.write_json(json_path, env, runner.rows, peaks, dropped, finished=True)
    md = report.markdown(env, runner.rows, peaks, dropped)
    md_path.write_text(md)
    why_no_plot = report.write_plot(
        args.out / report.PNG_NAME, runner.rows,
        f"{env['device_name']} · torch {env['torch']} · {env['date_utc'][:10]} · preset {args.preset}")
    if why_no_plot:
        print(f"bench: {why_no_plot}", file=sys.stderr)
    watchdog.stop()
    print(md)
    print(f"bench: {report.summary_line(report.summary(runner.rows))}", file=sys.stderr)
    fails = report.failures(runner.rows)
    print(f"bench: {time.perf_counter() - t0:.0f} s; wrote {json_path}, {md_path}, {args.out / report.PNG_NAME}"
          + (f"; {len(fails)} FAILED/ERROR rows" if fails else "; all correctness checks passed"), file=sys.stderr)
    return 1 if fails else 0


def _omp_wait_policy_note(flag: str | None) -> str:
    """What --omp-wait-policy did. `python -m bench` sets the variable before torch loads (bench/__main__.py);
    here it can only check, and say so when it came too late (main() called in a process that loaded torch)."""
    if flag is None:
        return ""
    if os.environ.get("OMP_WAIT_POLICY") == flag and os.environ.get("_FUSED_RNN_BENCH_OMP_SET") == flag:
        return f"OMP_WAIT_POLICY={flag} set by --omp-wait-policy before torch loaded OpenMP"
    os.environ["OMP_WAIT_POLICY"] = flag
    return (f"--omp-wait-policy {flag}: torch was already loaded in this process, so OpenMP keeps its setting "
            "from start-up; run `python -m bench --omp-wait-policy ...` for it to take effect")
