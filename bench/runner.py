"""Runs the cases: per case, one correctness check of every provider, then timing of each provider in each mode.

Correctness (once per case, before any timing): the oracle is torch.nn.RNN in fp64 with the same weights
(state_dict); each provider runs the same input in the case dtype. Judged quantities, as relative max-abs errors
(max |a − o| / max |o|): output, h_n, and -- when the case has a fwd+bwd mode -- the input gradient and the worst
parameter gradient (loss = ⟨output, dy⟩). Tolerance, per quantity (DESIGN.md's rule):
    fused / compile / external providers:  err ≤ 2 × err(reference backend in the same dtype and TF32 setting) + floor
    the reference provider itself:         err ≤ REF_BOUND[dtype] (a sanity bound; tests/ prove the reference)
    nn.RNN (the baseline):                 its error is recorded, not judged.
A provider over tolerance is FAILED and not timed; an exception is ERROR (also a failure), except a
NotImplementedError / ValueError from a forced tier, which means "this tier does not take this shape" and is
reported as unsupported. Any FAILED or ERROR row makes `python -m bench` exit with status 1.
"""

from __future__ import annotations

import contextlib
import gc
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .cases import Case, PresetConfig
from .floor import Peaks, floor_us_per_step, model_flops
from .providers import Provider
from .timing import Timing, time_cpu, time_gpu

# Relative-error floor added to 2 × the reference's error (the reference can be luckier than a reordered sum).
FLOOR: dict[str, float] = {"fp64": 1e-12, "fp32": 2e-6, "fp32-tf32": 2e-4, "fp16": 2e-3, "bf16": 1.6e-2}
# Sanity bound on the reference's own relative error (it is the yardstick, so it is judged absolutely).
REF_BOUND: dict[str, float] = {"fp64": 1e-10, "fp32": 1e-4, "fp32-tf32": 5e-2, "fp16": 5e-2, "bf16": 3e-1}
N_ROTATE = 3  # distinct input tensors cycled by the timed call, so repeated calls do not hit warm caches


@contextlib.contextmanager
def precision(tf32: bool) -> Iterator[None]:
    """Set cuDNN's and cuBLAS's TF32 flags for a case (legacy API only: mixing with fp32_precision raises)."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def tf32_flags() -> dict[str, bool]:
    """The TF32 settings as read back: cuDNN's flag, cuBLAS's legacy flag and fused_rnn's own reading."""
    import fused_rnn

    return {"cudnn.allow_tf32": bool(torch.backends.cudnn.allow_tf32),
            "cuda.matmul.allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
            "fused_rnn.allow_tf32()": bool(fused_rnn.allow_tf32())}


def _params(m: nn.Module) -> list[tuple[str, Tensor]]:
    """Parameters by nn.RNN name (torch.compile's wrapper prefixes '_orig_mod.'), in a fixed order."""
    out = [(n.removeprefix("_orig_mod."), p) for n, p in m.named_parameters()]
    return sorted(out, key=lambda t: t[0])


def run_once(m: nn.Module, x: Tensor, dy: Tensor | None) -> dict[str, Tensor]:
    """x [T, B, H], dy [T, B, D·H] | None -> {'out', 'h_n'} (+ 'dx' and 'd<param>' when dy is given)."""
    if dy is None:
        with torch.no_grad():
            out, h_n = m(x)
        return {"out": out, "h_n": h_n}
    x = x.detach().requires_grad_(True)
    out, h_n = m(x)
    named = _params(m)
    grads = torch.autograd.grad(out, [x] + [p for _, p in named], dy)
    res = {"out": out.detach(), "h_n": h_n.detach(), "dx": grads[0]}
    for (n, _), g in zip(named, grads[1:]):
        res["d" + n] = g
    return res


def rel_errors(got: dict[str, Tensor], want: dict[str, Tensor]) -> dict[str, float]:
    """Relative max-abs error per quantity: 'out', 'h_n', 'dx', 'dW' (worst parameter gradient). NaN -> inf."""
    def rel(a: Tensor, o: Tensor) -> float:
        if a.shape != o.shape:
            return math.inf
        d = (a.detach().to(torch.float64) - o).abs().max().item()
        s = o.abs().max().item()
        e = d / max(s, 1e-30)
        return math.inf if math.isnan(e) else e

    errs = {k: rel(got[k], want[k]) for k in ("out", "h_n", "dx") if k in want}
    pk = [k for k in want if k.startswith("dweight") or k.startswith("dbias")]
    if pk:
        errs["dW"] = max(rel(got[k], want[k]) if k in got else math.inf for k in pk)
    return errs


@dataclass
class Check:
    """Outcome of a provider's correctness check on one case."""

    status: str  # "ok" | "FAILED" | "ERROR" | "unsupported" | "baseline"
    errors: dict[str, float] = field(default_factory=dict)
    tolerances: dict[str, float] = field(default_factory=dict)
    message: str = ""
    first_call_s: float = 0.0  # wall time of the first (checking) call: torch.compile's compile time lives here

    @property
    def worst_ratio(self) -> float | None:
        """max over quantities of error / tolerance (≤ 1 passes); None when nothing was judged."""
        r = [self.errors[k] / self.tolerances[k] for k in self.tolerances if self.tolerances[k] > 0]
        return max(r) if r else None


@dataclass
class Row:
    """One (case, mode, provider) result."""

    case: Case
    mode: str
    provider: str
    status: str
    timing: Timing | None = None
    check: Check | None = None
    compile_s: float | None = None
    heuristic: bool = False  # this forced tier is the one the backend's heuristic picks for the case
    note: str = ""
    tf32: dict[str, bool] = field(default_factory=dict)
    # derived (filled by derive())
    speedup: float | None = None
    tokens_per_s: float | None = None
    us_per_layer_step: float | None = None
    tflops: float | None = None
    floor_ratio: float | None = None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Runner:
    """Runs a list of cases over providers on one device; results accumulate in ``rows``."""

    def __init__(self, device: torch.device, providers: list[Provider], cfg: PresetConfig,
                 progress: Callable[[str], None] | None = None) -> None:
        self.device = device
        self.providers = providers
        self.cfg = cfg
        self.rows: list[Row] = []
        self.progress = progress or (lambda s: None)
        self.heartbeat: Callable[[str], None] = lambda s: None  # "now doing X" for the stall watchdog

    def tasks(self, case: Case) -> int:
        """Number of progress ticks a case takes (one per applicable provider and mode)."""
        n = sum(1 for p in self.providers if p.applicable(case, self.cfg.reference_max_steps)[0])
        return n * len(case.modes)

    def _time(self, fn: Callable[[], object]) -> Timing:
        if self.device.type == "cuda":
            return time_gpu(fn, self.cfg.gpu_warmup_ms, self.cfg.gpu_rep_ms, self.cfg.gpu_max_rep_ms)
        return time_cpu(fn, self.cfg.cpu_min_run_s, self.cfg.cpu_min_samples)

    def _inputs(self, case: Case, seed: int) -> tuple[Tensor, Tensor]:
        """(x [T, B, H], dy [T, B, D·H]) in fp64, drawn on the device from a fixed seed (a CPU draw of a
        T=1024 B=256 H=1024 input would cost seconds per case)."""
        g = torch.Generator(device=self.device).manual_seed(seed)
        x = torch.randn(case.T, case.B, case.H, generator=g, dtype=torch.float64, device=self.device)
        dy = torch.randn(case.T, case.B, case.directions * case.H, generator=g, dtype=torch.float64,
                         device=self.device)
        return x, dy

    def run_case(self, case: Case) -> None:
        """Check every applicable provider on ``case``, then time the ones that passed in each mode."""
        dev = self.device
        torch.manual_seed(0)
        base = nn.RNN(case.H, case.H, num_layers=case.layers, nonlinearity="tanh",
                      bidirectional=case.bidirectional)
        sd = {k: v.detach().clone() for k, v in base.state_dict().items()}
        want_grad = "fwd+bwd" in case.modes
        x64, dy64 = self._inputs(case, seed=1)
        applicable, skipped = [], []
        for p in self.providers:
            ok, why = p.applicable(case, self.cfg.reference_max_steps)
            (applicable if ok else skipped).append((p, why))
        for p, why in skipped:
            if p.kind != "compile" or case.compile:  # compile is off by design outside its cases: no row
                for mode in case.modes:
                    self.rows.append(Row(case, mode, p.name, "skipped", note=why))

        with precision(case.tf32):
            flags = tf32_flags()
            tag = f"{case.label()} {case.dtype}"
            self.heartbeat(f"{tag}: fp64 oracle and reference error")
            oracle = self._oracle(case, sd, x64, dy64 if want_grad else None)
            # the reference's own error sets the tolerance of every non-reference provider (skip it if none runs)
            ref_err = (self._reference_errors(case, sd, x64, dy64 if want_grad else None, oracle)
                       if any(p.kind in ("fused", "compile", "external") for p, _ in applicable) else {})
            x = x64.to(case.torch_dtype)
            dy = dy64.to(case.torch_dtype) if want_grad else None
            for p, _ in applicable:
                with p.environment():
                    self.heartbeat(f"{tag}: checking {p.name}")
                    model, check = self._check(p, case, sd, x, dy, oracle, ref_err)
                    heur = p.heuristic_tier(case, dev)
                    for mode in case.modes:
                        self.heartbeat(f"{tag}: timing {p.name} {mode}")
                        self.progress(f"{case.label()} {case.dtype} {mode} {p.name}")
                        row = Row(case, mode, p.name, check.status if check.status != "baseline" else "ok",
                                  check=check, heuristic=heur is not None and heur == p.tier, tf32=flags)
                        if check.status in ("ok", "baseline") and model is not None:
                            try:
                                if p.kind == "compile":
                                    # the check's call compiled the graph for its grad mode; the other mode is
                                    # a new graph (grad mode is a guard), so its first call is timed here
                                    same = (mode == "fwd+bwd") == want_grad
                                    row.compile_s = (check.first_call_s if same
                                                     else self._first_call_s(model, x, None))
                                row.timing = self._time(self._timed_fn(model, case, mode, x))
                            except Exception as e:  # a failure while timing is a failure, said plainly
                                row.status = "ERROR" if p.kind != "baseline" else "unsupported"
                                row.note = f"while timing: {type(e).__name__}: {e}"[:300]
                        else:
                            row.note = check.message
                        self.rows.append(row)
                    del model
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()

    def _oracle(self, case: Case, sd: dict, x64: Tensor, dy64: Tensor | None) -> dict[str, Tensor]:
        """nn.RNN in fp64 with the case's weights: the yardstick of every check."""
        m = nn.RNN(case.H, case.H, num_layers=case.layers, nonlinearity="tanh", bidirectional=case.bidirectional)
        m.load_state_dict(sd)
        m = m.to(device=self.device, dtype=torch.float64).train()
        m.flatten_parameters()  # .to() does not re-flatten (torch 2.11-2.14); cuDNN warns and compacts per call
        res = run_once(m, x64, dy64)
        return {k: v.detach() for k, v in res.items()}

    def _reference_errors(self, case: Case, sd: dict, x64: Tensor, dy64: Tensor | None,
                          oracle: dict[str, Tensor]) -> dict[str, float]:
        """The reference backend's own error in the case dtype (the scale of every tolerance)."""
        ref = Provider("reference", "reference", backend="reference").build(sd, case, self.device)
        with Provider("reference", "reference").environment():
            got = run_once(ref, x64.to(case.torch_dtype), None if dy64 is None else dy64.to(case.torch_dtype))
        return rel_errors(got, oracle)

    def _check(self, p: Provider, case: Case, sd: dict, x: Tensor, dy: Tensor | None,
               oracle: dict[str, Tensor], ref_err: dict[str, float]) -> tuple[nn.Module | None, Check]:
        try:
            model = p.build(sd, case, self.device)
            t0 = time.perf_counter()
            got = run_once(model, x, dy)
            _sync(self.device)
            first = time.perf_counter() - t0
        except (NotImplementedError, ValueError) as e:
            if p.kind == "fused" and p.tier:
                return None, Check("unsupported", message=f"tier refused this case: {type(e).__name__}: {e}"[:300])
            return None, Check("ERROR", message=f"{type(e).__name__}: {e}"[:300])
        except Exception as e:
            status = "unsupported" if p.kind == "baseline" else "ERROR"
            return None, Check(status, message=f"{type(e).__name__}: {e}"[:300])
        errs = rel_errors(got, oracle)
        if p.kind == "baseline":
            return model, Check("baseline", errors=errs, first_call_s=first)
        if p.kind == "reference":
            tol = {k: REF_BOUND[case.dtype] for k in errs}
        else:
            tol = {k: 2.0 * ref_err.get(k, 0.0) + FLOOR[case.dtype] for k in errs}
        bad = [k for k in errs if not errs[k] <= tol[k]]
        if bad:
            msg = "; ".join(f"{k}: err {errs[k]:.3g} > tol {tol[k]:.3g}" for k in bad)
            return None, Check("FAILED", errs, tol, message=f"mismatch vs nn.RNN (fp64): {msg}", first_call_s=first)
        return model, Check("ok", errs, tol, first_call_s=first)

    def _first_call_s(self, model: nn.Module, x: Tensor, dy: Tensor | None) -> float:
        t0 = time.perf_counter()
        run_once(model, x, dy)
        _sync(self.device)
        return time.perf_counter() - t0

    def _timed_fn(self, model: nn.Module, case: Case, mode: str, x: Tensor) -> Callable[[], object]:
        """The timed call: forward (no grad) or forward + gradients of x and every parameter, cycling N_ROTATE
        inputs. The gradients come from autograd.grad, so nothing accumulates into .grad between calls."""
        g = torch.Generator(device=self.device).manual_seed(7)
        xs = [torch.randn(case.T, case.B, case.H, generator=g, device=self.device).to(x.dtype)
              for _ in range(N_ROTATE)]
        params = [p for _, p in _params(model)]
        it = {"i": 0}
        if mode == "fwd":
            def fn():
                i = it["i"] = (it["i"] + 1) % N_ROTATE
                with torch.no_grad():
                    return model(xs[i])
            return fn
        for t in xs:
            t.requires_grad_(True)
        dy = torch.randn(case.T, case.B, case.directions * case.H, generator=g, device=self.device).to(x.dtype)

        def fn_bwd():
            i = it["i"] = (it["i"] + 1) % N_ROTATE
            out, _ = model(xs[i])
            return torch.autograd.grad(out, [xs[i]] + params, dy)
        return fn_bwd


def derive(rows: list[Row], peaks: Peaks | None) -> None:
    """Fill speedup vs nn.RNN, tokens/s, µs per layer-step, and on a GPU TFLOP/s and the ratio to the floor."""
    base = {(r.case, r.mode): r.timing.median_ms for r in rows
            if r.provider == "nn.RNN" and r.timing is not None}
    for r in rows:
        if r.timing is None:
            continue
        ms = r.timing.median_ms
        b = base.get((r.case, r.mode))
        r.speedup = b / ms if b else None
        r.tokens_per_s = r.case.B * r.case.T / (ms * 1e-3)
        r.us_per_layer_step = ms * 1e3 / r.case.layer_steps
        if peaks is not None:
            r.tflops = model_flops(r.case, r.mode) / (ms * 1e-3) / 1e12
            rate = peaks.tflops.get(r.case.dtype)
            if rate:
                r.floor_ratio = r.us_per_layer_step / floor_us_per_step(r.case, r.mode, rate, peaks.bw_tbps)
