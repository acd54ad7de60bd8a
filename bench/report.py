"""Writes the results: results.json (environment + every row), results.md (the table), speedup.png (the plot)."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from .floor import Peaks, datasheet_for
from .runner import Row

JSON_NAME = "results.json"
MD_NAME = "results.md"
PNG_NAME = "speedup.png"


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        r = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    except Exception:
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device, preset: str, provider_notes: list[str]) -> dict:
    """Device, versions, flags, commit and date: everything needed to compare two reports honestly."""
    import fused_rnn

    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = None
    cudnn = None
    try:
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    except Exception:
        pass
    env = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "preset": preset,
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "triton": triton_version,
        "python": sys.version.split()[0],
        "fused_rnn": fused_rnn.__version__,
        "cpu_threads": torch.get_num_threads(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "available_backends": fused_rnn.available_backends(),
        "provider_notes": provider_notes,
        "tf32_default": {"cudnn.allow_tf32": bool(torch.backends.cudnn.allow_tf32),
                         "cuda.matmul.allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32)},
        "env_vars": {k: v for k, v in os.environ.items()
                     if k.startswith(("FUSED_RNN_", "OMP_", "MKL_", "CUDA_VISIBLE", "TRITON_"))},
    }
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env["sm_count"] = p.multi_processor_count
        env["capability"] = f"{p.major}.{p.minor}"
        env["datasheet"] = datasheet_for(env["device_name"])
    return env


def _row_json(r: Row) -> dict:
    d = {"case": r.case.to_json(), "dtype": r.case.dtype, "mode": r.mode, "provider": r.provider,
         "status": r.status, "heuristic_tier": r.heuristic, "note": r.note, "tf32_flags": r.tf32,
         "compile_s": r.compile_s, "speedup_vs_nn_rnn": r.speedup, "tokens_per_s": r.tokens_per_s,
         "us_per_layer_step": r.us_per_layer_step, "tflops": r.tflops, "floor_ratio": r.floor_ratio}
    if r.timing is not None:
        d["time_ms"] = {"median": r.timing.median_ms, "p20": r.timing.p20_ms, "p80": r.timing.p80_ms,
                        "n": r.timing.n, "method": r.timing.method}
    if r.check is not None:
        d["check"] = {"status": r.check.status, "errors": _finite(r.check.errors),
                      "tolerances": r.check.tolerances, "worst_ratio": r.check.worst_ratio,
                      "message": r.check.message, "first_call_s": r.check.first_call_s}
    return d


def _finite(d: dict[str, float]) -> dict[str, float | str]:
    """JSON has no inf/NaN: write them as strings."""
    return {k: (v if math.isfinite(v) else str(v)) for k, v in d.items()}


def failures(rows: list[Row]) -> list[Row]:
    """Rows that make the run fail: a correctness mismatch or an error of one of our providers."""
    return [r for r in rows if r.status in ("FAILED", "ERROR")]


def write_json(path: Path, env: dict, rows: list[Row], peaks: Peaks | None, dropped: list[str],
               finished: bool) -> None:
    checked = [r for r in rows if r.check is not None and r.check.status not in ("baseline",)]
    data = {
        "env": env,
        "finished": finished,
        "peaks": None if peaks is None else {"tflops": peaks.tflops, "bw_TBps": peaks.bw_tbps},
        "dropped_cases": dropped,
        "all_checks_passed": not failures(rows),
        "n_checks": len(checked),
        "rows": [_row_json(r) for r in rows],
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)  # atomic: a run killed mid-write still leaves the previous complete file


def _fmt(x: float | None, spec: str, suffix: str = "") -> str:
    return "—" if x is None else f"{x:{spec}}{suffix}"


def _si(x: float | None) -> str:
    if x is None:
        return "—"
    for unit, k in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= k:
            return f"{x / k:.3g}{unit}"
    return f"{x:.3g}"


def markdown(env: dict, rows: list[Row], peaks: Peaks | None, dropped: list[str]) -> str:
    """The report: environment header, one table, notes. ★ marks the tier the backend's heuristic picks."""
    gpu = env["device"] == "cuda"
    lines = [
        f"# fused_rnn bench — {env['device_name']} — {env['date_utc'][:10]}",
        "",
        f"preset `{env['preset']}` · torch {env['torch']} · CUDA {env['cuda']} · cuDNN {env['cudnn']} · "
        f"triton {env['triton']} · Python {env['python']} · threads {env['cpu_threads']} · "
        f"commit {(env['git_commit'] or '?')[:12]}{' (dirty)' if env['git_dirty'] else ''} · "
        f"backends {', '.join(env['available_backends'])}",
        "",
    ]
    if peaks is not None:
        rates = ", ".join(f"{k} {v:.0f}" for k, v in peaks.tflops.items())
        lines += [f"measured peaks: matmul TFLOP/s {rates}; copy bandwidth {peaks.bw_tbps:.2f} TB/s", ""]
    head = ["case", "dtype", "mode", "provider", "status", "median ms (p20–p80)", "× nn.RNN", "tokens/s",
            "µs/layer-step"]
    if gpu:
        head += ["TFLOP/s", "× floor"]
    head += ["err/tol"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    shown = [r for r in rows if r.status != "skipped"]
    skipped: dict[tuple[str, str], int] = {}
    for r in rows:
        if r.status == "skipped":
            skipped[(r.provider, r.note)] = skipped.get((r.provider, r.note), 0) + 1
    for r in shown:
        t = r.timing
        tcell = "—" if t is None else f"{t.median_ms:.3f} ({t.p20_ms:.3f}–{t.p80_ms:.3f})"
        if r.compile_s is not None:
            tcell += f" +compile {r.compile_s:.1f} s"
        name = r.provider + (" ★" if r.heuristic else "")
        status = r.status if not r.note or r.status == "ok" else f"{r.status}: {r.note}"
        cells = [r.case.label(), r.case.dtype, r.mode, name, status.replace("|", "/"), tcell,
                 _fmt(r.speedup, ".2f", "×"), _si(r.tokens_per_s), _fmt(r.us_per_layer_step, ".2f")]
        if gpu:
            cells += [_fmt(r.tflops, ".2f"), _fmt(r.floor_ratio, ".1f", "×")]
        wr = r.check.worst_ratio if r.check is not None else None
        cells += [_fmt(wr, ".2g")]
        lines.append("| " + " | ".join(cells) + " |")
    fails = failures(rows)
    lines += ["", f"**correctness: {'all checks passed' if not fails else f'{len(fails)} FAILED/ERROR rows'}**"]
    notes = list(env.get("provider_notes", []))
    notes += [f"{prov}: not run in {n} row(s): {why}" for (prov, why), n in skipped.items()]
    if dropped:
        notes.append(f"time budget reached: {len(dropped)} case(s) not run: {', '.join(dropped)}")
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    lines += ["", "How to read: bench/README.md. × nn.RNN = nn.RNN's median / this median (> 1 is faster); "
              "µs/layer-step = median / (T · layers · directions); err/tol = worst relative error vs nn.RNN in "
              "fp64 over the tolerance (≤ 1 passes); ★ = the tier the backend's heuristic picks."]
    return "\n".join(lines) + "\n"


def write_plot(path: Path, rows: list[Row], title: str) -> str | None:
    """Speedup vs batch size, one line per (provider, H), one panel per (dtype, mode); single-layer cases only.

    Returns None when written, else why not (matplotlib missing -- the table and JSON do not need it).
    """
    try:
        import matplotlib
    except ImportError as e:
        return f"plot not written: matplotlib is not installed ({e})"

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts: dict[tuple[str, str], dict[tuple[str, int], list[tuple[int, float]]]] = {}
    for r in rows:
        if r.speedup is None or r.provider == "nn.RNN" or r.case.layers != 1 or r.case.bidirectional:
            continue
        panel = pts.setdefault((r.case.dtype, r.mode), {})
        panel.setdefault((r.provider, r.case.H, r.case.T), []).append((r.case.B, r.speedup))
    n = max(1, len(pts))
    ncols = min(n, 3)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 4.2 * nrows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[len(pts):]:
        ax.set_axis_off()
    if not pts:
        flat[0].text(0.5, 0.5, "no timed rows with an nn.RNN baseline", ha="center", va="center")
    for ax, ((dtype, mode), lines) in zip(flat, sorted(pts.items())):
        for (prov, H, T), xy in sorted(lines.items()):
            xy.sort()
            ax.plot([b for b, _ in xy], [s for _, s in xy], marker="o", label=f"{prov} H={H} T={T}")
        ax.axhline(1.0, color="gray", lw=0.8, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size B")
        ax.set_ylabel("speedup vs nn.RNN (×)")
        ax.set_title(f"{dtype}, {mode}")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
