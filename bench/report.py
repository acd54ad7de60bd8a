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


def _cpu_identity() -> dict | None:
    from fused_rnn._config import read_cpu_identity

    return read_cpu_identity()


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
        # The two settings that change CPU timings most: recorded as found (the bench changes neither unless
        # --omp-wait-policy / --threads say so; cli.py adds which it set).
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset (OpenMP's default)"),
        "cpu_isa": _cpu_isa(),
        "cpu": _cpu_identity(),  # vendor, family/model, AMD core generation, ISA flags: name the machine from this
        "cpu_policy_tables": _policy_tables(),
    }
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env["sm_count"] = p.multi_processor_count
        env["capability"] = f"{p.major}.{p.minor}"
        env["datasheet"] = datasheet_for(env["device_name"])
    return env


def _cpu_isa() -> str:
    from fused_rnn.policy import cpu_isa

    return cpu_isa()


def _policy_tables() -> list[dict]:
    """Which CPU policy tables `auto` consulted in this run (machine kind, date, run file, preliminary)."""
    from fused_rnn import policy_data

    keys = ("isa", "threads", "machine", "date", "run_file", "preliminary", "note")
    return [{k: t.get(k) for k in keys} for t in policy_data.CPU_TABLES]


def summary(rows: list[Row]) -> dict:
    """auto vs nn.RNN over every (case, mode): worst and geometric-mean ratio, and the timing rule's verdict.

    A row where auto ran native (path asserted, bit-for-bit nn.RNN) counts with its measured ratio -- nn.RNN's
    kernel, and fused_rnn's per-call cost around it -- and passes unless its median ratio is below 0.97 and its p80
    below 1.0 (×1.00 where it was not timed). Any other timed row passes when its per-round ratio has median ≥ 1.0
    and 20th percentile ≥ 0.95.
    """
    auto = [r for r in rows if r.provider == "auto" and r.status == "ok"]
    vals, failing = [], []
    n_native = n_timed = 0
    for r in auto:
        if r.verdict in ("native", "native, slower"):
            vals.append(r.ratio_median if r.ratio_median is not None else 1.0)
            n_native += 1
            if r.verdict != "native":
                failing.append(f"{r.case.label()} {r.case.dtype} {r.mode} (native): median ×{r.ratio_median:.2f}")
        elif r.ratio_median is not None:
            vals.append(r.ratio_median)
            n_timed += 1
            if r.verdict != "≥ nn.RNN":
                failing.append(f"{r.case.label()} {r.case.dtype} {r.mode}: median ×{r.ratio_median:.2f}, "
                               f"p20 ×{r.ratio_p20:.2f}")
    bad = [r for r in rows if r.provider == "auto" and r.status != "ok" and r.status != "skipped"]
    out = {"rows": len(vals), "native_asserted": n_native, "timed": n_timed,
           "worst": min(vals) if vals else None,
           "geomean": math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else None,
           "rule": "fused rows: median ratio >= 1.0 and p20 ratio >= 0.95; native rows: path asserted, median "
                   "ratio >= 0.97 or p80 >= 1.0",
           "failing": failing + [f"{r.case.label()} {r.case.dtype} {r.mode}: {r.status}" for r in bad]}
    out["verdict"] = ("n/a" if not vals and not bad else "PASS" if not out["failing"] else "FAIL")
    return out


def summary_line(s: dict) -> str:
    """'auto vs nn.RNN: worst ×…, geometric mean ×… (…)' -- the whole map in one line."""
    if s["worst"] is None:
        return "auto vs nn.RNN: no auto rows"
    line = (f"auto vs nn.RNN: worst ×{s['worst']:.2f}, geometric mean ×{s['geomean']:.2f} over {s['rows']} rows "
            f"({s['native_asserted']} native: path asserted, timed for the per-call cost; {s['timed']} fused) -- "
            f"{s['verdict']} ({s['rule']})")
    if s["failing"]:
        line += "; slower: " + "; ".join(s["failing"])
    return line


def _row_json(r: Row) -> dict:
    d = {"case": r.case.to_json(), "dtype": r.case.dtype, "mode": r.mode, "provider": r.provider,
         "status": r.status, "heuristic_tier": r.heuristic, "note": r.note, "tf32_flags": r.tf32,
         "compile_s": r.compile_s, "speedup_vs_nn_rnn": r.speedup, "tokens_per_s": r.tokens_per_s,
         "us_per_layer_step": r.us_per_layer_step, "tflops": r.tflops, "floor_ratio": r.floor_ratio,
         "ratio_rounds": {"median": r.ratio_median, "p20": r.ratio_p20, "all": r.ratios} if r.ratios else None,
         "verdict": r.verdict, "path": r.path or None, "path_rule": r.path_rule or None,
         "path_reason": r.path_reason or None}
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
        "summary": summary(rows),
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
    """The report: environment header, one table, the auto summary, notes. ★ marks the tier the backend's
    heuristic picks."""
    gpu = env["device"] == "cuda"
    lines = [
        f"# fused_rnn bench — {env['device_name']} — {env['date_utc'][:10]}",
        "",
        f"preset `{env['preset']}` · torch {env['torch']} · CUDA {env['cuda']} · cuDNN {env['cudnn']} · "
        f"triton {env['triton']} · Python {env['python']} · threads {env['cpu_threads']} · "
        f"OMP_WAIT_POLICY {env.get('omp_wait_policy', '?')} · ISA class {env.get('cpu_isa', '?')} · "
        f"commit {(env['git_commit'] or '?')[:12]}{' (dirty)' if env['git_dirty'] else ''} · "
        f"backends {', '.join(env['available_backends'])}",
        "",
    ]
    cpu = env.get("cpu")
    if not gpu and cpu:
        lines += [f"CPU: {cpu.get('vendor')} family {cpu.get('family')} model {cpu.get('model')} "
                  f"({cpu.get('core') or 'generation not named'}) · flags {' '.join(cpu.get('flags') or []) or 'none'}",
                  ""]
    if peaks is not None:
        rates = ", ".join(f"{k} {v:.3g}" for k, v in peaks.tflops.items())
        what = "matmul TFLOP/s" if gpu else "CPU matmul TFLOP/s"
        bw = "copy bandwidth" if gpu else "cache read bandwidth"
        lines += [f"measured peaks: {what} {rates}; {bw} {peaks.bw_tbps:.3g} TB/s", ""]
    head = ["case", "dtype", "mode", "provider", "status", "median ms (p20–p80)", "× nn.RNN", "× p20", "verdict",
            "tokens/s", "µs/layer-step"]
    if peaks is not None:
        head += ["TFLOP/s", "× floor"]
    head += ["err/tol"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    shown = [r for r in rows if r.status != "skipped"]
    # auto's reasons (fused_rnn.explain's one-line summary), numbered: each auto row points at its own
    reasons = list(dict.fromkeys((r.path, r.path_reason) for r in shown if r.provider == "auto" and r.path_reason))
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
        if r.path:
            name += f" → {r.path}"
        if r.provider == "auto" and r.path_reason:
            name += f" [{reasons.index((r.path, r.path_reason)) + 1}]"
        status = r.status
        if r.note and (r.status != "ok" or (r.timing is None and not (r.verdict or "").startswith("native"))):
            status = f"{r.status}: {r.note}"
        elif r.path_rule:
            status = f"ok ({r.path_rule})"
        speed = _fmt(r.ratio_median or r.speedup, ".2f", "×")
        if (r.verdict or "").startswith("native"):
            speed = "=1 (native, not timed)" if r.ratio_median is None else f"{speed} (native)"
        cells = [r.case.label(), r.case.dtype, r.mode, name, status.replace("|", "/"), tcell, speed,
                 _fmt(r.ratio_p20, ".2f", "×"), r.verdict or "—", _si(r.tokens_per_s),
                 _fmt(r.us_per_layer_step, ".2f")]
        if peaks is not None:
            cells += [_fmt(r.tflops, ".3g"), _fmt(r.floor_ratio, ".1f", "×")]
        wr = r.check.worst_ratio if r.check is not None else None
        cells += [_fmt(wr, ".2g")]
        lines.append("| " + " | ".join(cells) + " |")
    fails = failures(rows)
    lines += ["", f"**correctness: {'all checks passed' if not fails else f'{len(fails)} FAILED/ERROR rows'}**"]
    lines += ["", f"**{summary_line(summary(rows))}**"]
    if reasons:
        lines += ["", "Why auto took each path ([n] beside each auto row; fused_rnn.explain's words):", ""]
        lines += [f"{i}. {why}" for i, (_, why) in enumerate(reasons, 1)]
    notes = list(env.get("provider_notes", []))
    notes += [f"{prov}: not run in {n} row(s): {why}" for (prov, why), n in skipped.items()]
    if dropped:
        notes.append(f"time budget reached: {len(dropped)} case(s) not run: {', '.join(dropped)}")
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    lines += ["", "How to read: bench/README.md. × nn.RNN = median over interleaved rounds of nn.RNN's time / this "
              "provider's time in the same round (> 1 is faster), × p20 its 20th percentile; verdict ≥ nn.RNN when "
              "median ≥ 1.0 and p20 ≥ 0.95; `auto → native` rows ran nn.RNN's kernel (path asserted; timed, their "
              "ratio is fused_rnn's per-call cost: native, slower when median < 0.97 and p80 < 1.0); "
              "µs/layer-step = median / (T · layers · directions); × floor = µs/layer-step over the per-step floor "
              "(bench/floor.py); err/tol = worst relative error vs nn.RNN in fp64 over the tolerance (≤ 1 passes); "
              "★ = the tier the backend's heuristic picks."]
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
