"""Runs the cases: per case, one correctness check of every provider, then interleaved timing in each mode.

Correctness (once per case, before any timing, at the case's ``check_T``): the oracle is torch.nn.RNN in fp64 with
the same weights (state_dict); each provider runs the same input in the case dtype. The loss is
⟨output, dy⟩ + ⟨h_n, dh⟩, so both outputs' gradient paths are exercised. Judged quantities, as relative max-abs
errors (max |a − o| / max |o|): output, h_n, and -- when the case has a fwd+bwd mode -- the input gradient and the
worst parameter gradient. Tolerance, per quantity (DESIGN.md's rule):
    fused / auto / native / compile / external:  err ≤ 2 × err(reference backend in the same dtype and TF32) + floor
    the reference provider itself:              err ≤ REF_BOUND[dtype] (a sanity bound; tests/ prove the reference)
    nn.RNN (the baseline):                      its error is recorded, not judged.
``native`` must moreover equal nn.RNN's own results in the case dtype bit for bit (same kernel, same device), and
so must ``auto`` in every mode where it ran native. A provider over tolerance is FAILED and not timed; an exception
is ERROR (also a failure), except a NotImplementedError / ValueError from a forced tier, which means "this tier does
not take this shape" and is reported as unsupported. Any FAILED or ERROR row makes `python -m bench` exit 1.

Timing (timing.time_interleaved): ``rounds`` rounds, each timing every provider once in a rotated order; the ratio
nn.RNN / provider is taken per round, and a row reports its median and 20th percentile. Where `auto` runs native
(asserted through ``select.record_paths`` and the bit-for-bit check, in that mode) the row is timed as any other and
judged by the native rule below. auto's path is asked again at the timed T before timing (the policy looks at T,
rule 7, so the check's shorter call may go the other way): the row reports that call's path and reason, and a
native one is asserted bit for bit there too. The verdict of a timed row: median ratio ≥ 1.0 and 20th-percentile
ratio ≥ 0.95 ("≥ nn.RNN"), else "slower"; of an auto row that ran native (its kernel is nn.RNN's; the time around
it, fused_rnn's input handling and path decision, is not): "native, slower" when its median ratio is below 0.97
and its 80th percentile below 1.0, else "native".
"""

from __future__ import annotations

import contextlib
import dataclasses
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
from .timing import Timing, quantile, time_interleaved, timing_of

# Relative-error floor added to 2 × the reference's error (the reference can be luckier than a reordered sum).
FLOOR: dict[str, float] = {"fp64": 1e-12, "fp32": 2e-6, "fp32-tf32": 2e-4, "fp16": 2e-3, "bf16": 1.6e-2}
# Sanity bound on the reference's own relative error (it is the yardstick, so it is judged absolutely).
REF_BOUND: dict[str, float] = {"fp64": 1e-10, "fp32": 1e-4, "fp32-tf32": 5e-2, "fp16": 5e-2, "bf16": 3e-1}
N_ROTATE = 3  # distinct input tensors cycled by the timed call, so repeated calls do not hit warm caches
# The timing rule (issue "never slower than torch.nn.RNN"): a timed row is at least as fast as nn.RNN when the
# median of its per-round ratios is >= 1.0 and the 20th percentile >= 0.95.
PASS_MEDIAN, PASS_P20 = 1.0, 0.95
# An auto row that ran native is nn.RNN's kernel inside fused_rnn's call: timed, and judged on what fused_rnn adds
# around it. The kernels are the same, so the ratio is 1 minus that per-call cost plus noise -- and the noise is not
# small: over the 42 native rows of a grid run (Intel VM, 2026-12-08 UTC, calls of 1-200 ms) the medians ran
# ×0.94-1.05 (median ×0.995). So a row is "native, slower" only when its median is below 0.97 *and* its 80th
# percentile below 1.0 (slower in four rounds of five): the T=1 rows of `quick` (×0.93-0.96, p80 ×0.95-0.98) are;
# a noisy long call with median ×0.95 and p80 ×1.13 is not.
NATIVE_PASS_MEDIAN = 0.97
JUDGED_KINDS = ("fused", "auto", "native", "compile", "external")


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


def run_once(m: nn.Module, x: Tensor, grads: tuple[Tensor, Tensor] | None) -> dict[str, Tensor]:
    """x [T, B, H], grads (dy [T, B, D·H], dh [L·D, B, H]) | None -> {'out', 'h_n'} (+ 'dx' and 'd<param>').

    With ``grads`` the loss is ⟨out, dy⟩ + ⟨h_n, dh⟩: a provider whose h_n or h_n-gradient path is wrong shows in
    h_n, dx and the parameter gradients.
    """
    if grads is None:
        with torch.no_grad():
            out, h_n = m(x)
        return {"out": out, "h_n": h_n}
    x = x.detach().requires_grad_(True)
    out, h_n = m(x)
    named = _params(m)
    g = torch.autograd.grad((out, h_n), [x] + [p for _, p in named], grads)
    res = {"out": out.detach(), "h_n": h_n.detach(), "dx": g[0]}
    for (n, _), gp in zip(named, g[1:]):
        res["d" + n] = gp
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


def differs(got: dict[str, Tensor], want: dict[str, Tensor]) -> list[str]:
    """The quantities of ``want`` that ``got`` does not reproduce bit for bit (NaN equal to NaN)."""
    bad = []
    for k, w in want.items():
        g = got.get(k)
        if g is None or g.shape != w.shape or g.dtype != w.dtype or not torch.equal(
                torch.nan_to_num(g, nan=0.0), torch.nan_to_num(w, nan=0.0)):
            bad.append(k)
    return bad


@dataclass
class Check:
    """Outcome of a provider's correctness check on one case."""

    status: str  # "ok" | "FAILED" | "ERROR" | "unsupported" | "baseline"
    errors: dict[str, float] = field(default_factory=dict)
    tolerances: dict[str, float] = field(default_factory=dict)
    message: str = ""
    first_call_s: float = 0.0  # wall time of the first (checking) call: torch.compile's compile time lives here
    paths: dict[str, object] = field(default_factory=dict)  # mode -> policy.Decision of auto's call in that mode
    first_calls: dict[str, float] = field(default_factory=dict)  # mode -> wall time of its first call (compile)

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
    path: str = ""  # auto: the path it took in this mode ("native", "cpu", "cuda:cluster", ...)
    path_rule: str = ""  # auto: the policy rule behind it (fused_rnn/policy.py)
    path_reason: str = ""
    ratios: list[float] = field(default_factory=list)  # nn.RNN / this provider, one per round
    # derived (filled by derive())
    speedup: float | None = None
    ratio_median: float | None = None
    ratio_p20: float | None = None
    verdict: str | None = None  # "≥ nn.RNN" | "slower" | "native" | "native, slower" (auto ran nn.RNN's kernel)
    tokens_per_s: float | None = None
    us_per_layer_step: float | None = None
    tflops: float | None = None
    floor_ratio: float | None = None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _path_name(d) -> str:
    return d.path + (f":{d.tier}" if getattr(d, "tier", "") else "")


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

    def _inputs(self, case: Case, seed: int) -> tuple[Tensor, Tensor, Tensor]:
        """(x [T, B, H], dy [T, B, D·H], dh [L·D, B, H]) in fp64, drawn on the device from a fixed seed (a CPU draw
        of a T=1024 B=256 H=1024 input would cost seconds per case)."""
        g = torch.Generator(device=self.device).manual_seed(seed)
        kw = dict(generator=g, dtype=torch.float64, device=self.device)
        x = torch.randn(case.T, case.B, case.H, **kw)
        dy = torch.randn(case.T, case.B, case.directions * case.H, **kw)
        dh = torch.randn(case.layers * case.directions, case.B, case.H, **kw)
        return x, dy, dh

    def calibrate(self, case: Case) -> Case:
        """The case with T sized so that nn.RNN's forward takes about ``case.target_s`` (unchanged without it)."""
        if case.target_s is None:
            return case
        self.heartbeat(f"{case.label()} {case.dtype}: sizing T")
        m = nn.RNN(case.H, case.H, num_layers=case.layers, bidirectional=case.bidirectional)
        m = m.to(device=self.device, dtype=case.torch_dtype)
        T = case.T
        for _ in range(3):  # probe, then refine once or twice at the sized T (per-step cost is not flat at small T)
            x = torch.randn(T, case.B, case.H, device=self.device).to(case.torch_dtype)
            dt = math.inf
            with torch.no_grad():
                m(x)
                for _ in range(3):  # the fastest of three: a busy spell of a shared machine must not shrink T
                    _sync(self.device)
                    t0 = time.perf_counter()
                    m(x)
                    _sync(self.device)
                    dt = min(dt, time.perf_counter() - t0)
                    if dt > 2 * case.target_s:
                        break
            new_T = int(min(max(T * case.target_s / max(dt, 1e-6), 8), 200_000))
            new_T = int(float(f"{new_T:.2g}"))  # two significant digits: readable labels
            if abs(new_T - T) <= 0.25 * T:
                T = new_T
                break
            T = new_T
        return dataclasses.replace(case, T=T)

    def run_case(self, case: Case) -> None:
        """Check every applicable provider on ``case``, then time the ones that passed in each mode, interleaved."""
        dev = self.device
        case = self.calibrate(case)
        check_case = dataclasses.replace(case, T=case.check_T) if case.check_T else case
        torch.manual_seed(0)
        base = nn.RNN(case.H, case.H, num_layers=case.layers, nonlinearity="tanh",
                      bidirectional=case.bidirectional)
        sd = {k: v.detach().clone() for k, v in base.state_dict().items()}
        want_grad = "fwd+bwd" in case.modes
        x64, dy64, dh64 = self._inputs(check_case, seed=1)
        grads64 = (dy64, dh64) if want_grad else None
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
            oracle = self._oracle(check_case, sd, x64, grads64)
            # the reference's own error sets the tolerance of every judged provider (skip it if none runs)
            ref_err = (self._reference_errors(check_case, sd, x64, grads64, oracle)
                       if any(p.kind in JUDGED_KINDS for p, _ in applicable) else {})
            x = x64.to(case.torch_dtype)
            grads = None if grads64 is None else (grads64[0].to(case.torch_dtype), grads64[1].to(case.torch_dtype))
            base_got: dict[str, dict[str, Tensor]] = {}
            checked: list[tuple[Provider, nn.Module | None, Check]] = []
            for p, _ in applicable:
                with p.environment():
                    self.heartbeat(f"{tag}: checking {p.name}")
                    model, check = self._check(p, check_case, sd, x, grads, oracle, ref_err, base_got)
                checked.append((p, model, check))
            for mode in case.modes:
                self._time_mode(case, mode, checked, flags, want_grad, tag)
            del checked
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()

    def _time_mode(self, case: Case, mode: str, checked: list, flags: dict, want_grad: bool, tag: str) -> None:
        """Rows of one mode: failed checks and native auto rows as they are, the rest timed in interleaved rounds."""
        rows: dict[str, Row] = {}
        fns: dict[str, Callable[[], object]] = {}
        envs: dict[str, Callable[[], contextlib.AbstractContextManager]] = {}
        order: list[str] = []
        base_model = next((m for q, m, _ in checked if q.kind == "baseline"), None)
        for p, model, check in checked:
            heur = p.heuristic_tier(case, self.device)
            row = Row(case, mode, p.name, check.status if check.status != "baseline" else "ok", check=check,
                      heuristic=heur is not None and heur == p.tier, tf32=flags)
            order.append(p.name)
            rows[p.name] = row
            self.progress(f"{tag} {mode} {p.name}")
            if check.status not in ("ok", "baseline") or model is None:
                row.note = check.message
                continue
            if p.name in self.cfg.untimed:
                row.note = "checked, not timed in this preset"
                continue
            d = None
            if p.kind == "auto":
                with p.environment():
                    d, why, problem = self._auto_at_timed_T(case, mode, model, base_model)
                if problem:
                    row.status, row.note = "FAILED", problem
                    continue
            if d is not None:
                row.path, row.path_rule = _path_name(d), d.rule
                row.path_reason = why or d.reason
                if d.native:
                    # Timed all the same: the kernel is nn.RNN's, but the call around it is fused_rnn's (input
                    # handling, the path decision), and on a short call that cost is what the user sees.
                    row.verdict = "native"
                    row.note = "ran native (nn.RNN's kernel): path asserted; timed for fused_rnn's per-call cost"
            try:
                with p.environment():
                    if p.kind == "compile":
                        # the check's first call in each mode compiled that mode's graph (grad mode is a guard)
                        row.compile_s = check.first_calls.get(mode)
                    fns[p.name] = self._timed_fn(model, case, mode)
                envs[p.name] = p.environment
            except Exception as e:  # a failure while preparing is a failure, said plainly
                row.status = "ERROR" if p.kind != "baseline" else "unsupported"
                row.note = f"while timing: {type(e).__name__}: {e}"[:300]
        if fns:
            self.heartbeat(f"{tag}: timing {mode}")
            samples, errors = time_interleaved(fns, self.cfg.rounds, self.cfg.min_sample_s, self.device,
                                               beat=lambda s: self.heartbeat(f"{tag} {mode}: {s}"), contexts=envs)
            base = samples.get("nn.RNN")
            for name, err in errors.items():
                r = rows[name]
                r.status = "ERROR" if name != "nn.RNN" else "unsupported"
                r.note = f"while timing: {err}"[:300]
            for name, ts in samples.items():
                if name in errors or not ts:
                    continue
                r = rows[name]
                r.timing = timing_of(ts, f"{self.cfg.rounds} interleaved rounds, ≥ {self.cfg.min_sample_s * 1e3:g} "
                                         "ms per sample")
                if base and name != "nn.RNN" and "nn.RNN" not in errors:
                    r.ratios = [b / t for b, t in zip(base, ts)]
        self.rows += [rows[n] for n in order]

    def _oracle(self, case: Case, sd: dict, x64: Tensor, grads64) -> dict[str, Tensor]:
        """nn.RNN in fp64 with the case's weights: the yardstick of every check."""
        m = nn.RNN(case.H, case.H, num_layers=case.layers, nonlinearity="tanh", bidirectional=case.bidirectional)
        m.load_state_dict(sd)
        m = m.to(device=self.device, dtype=torch.float64).train()
        m.flatten_parameters()  # .to() does not re-flatten (torch 2.11-2.14); cuDNN warns and compacts per call
        res = run_once(m, x64, grads64)
        return {k: v.detach() for k, v in res.items()}

    def _reference_errors(self, case: Case, sd: dict, x64: Tensor, grads64,
                          oracle: dict[str, Tensor]) -> dict[str, float]:
        """The reference backend's own error in the case dtype (the scale of every tolerance)."""
        ref = Provider("reference", "reference", backend="reference").build(sd, case, self.device)
        dt = case.torch_dtype
        with Provider("reference", "reference").environment():
            got = run_once(ref, x64.to(dt), None if grads64 is None else (grads64[0].to(dt), grads64[1].to(dt)))
        return rel_errors(got, oracle)

    def _check(self, p: Provider, case: Case, sd: dict, x: Tensor, grads, oracle: dict[str, Tensor],
               ref_err: dict[str, float], base_got: dict[str, dict[str, Tensor]]
               ) -> tuple[nn.Module | None, Check]:
        """Build the provider and check it on ``case`` (the check-T case). The baseline's results (per mode) are kept
        in ``base_got`` for the bit-for-bit check of native; auto's path is recorded per mode."""
        from fused_rnn.backends.select import record_paths

        modes = [m for m in case.modes]
        if grads is not None and "fwd+bwd" not in modes:
            modes.append("fwd+bwd")
        got_by_mode: dict[str, dict[str, Tensor]] = {}
        paths: dict[str, object] = {}
        try:
            model = p.build(sd, case, self.device)
            first_calls: dict[str, float] = {}
            # the judged call first (with gradients when the case has a training mode), then the forward-only one
            for mode in sorted(modes, key=lambda m: m != ("fwd+bwd" if grads is not None else "fwd")):
                t0 = time.perf_counter()
                with record_paths() as log:
                    res = run_once(model, x, grads if mode == "fwd+bwd" else None)
                    _sync(self.device)
                first_calls[mode] = time.perf_counter() - t0
                got_by_mode[mode] = res
                if log:
                    paths[mode] = log[-1]
        except (NotImplementedError, ValueError) as e:
            if p.kind == "fused" and p.tier:
                return None, Check("unsupported", message=f"tier refused this case: {type(e).__name__}: {e}"[:300])
            return None, Check("ERROR", message=f"{type(e).__name__}: {e}"[:300])
        except Exception as e:
            status = "unsupported" if p.kind == "baseline" else "ERROR"
            return None, Check(status, message=f"{type(e).__name__}: {e}"[:300])
        judged = "fwd+bwd" if grads is not None else "fwd"
        got, first = got_by_mode[judged], first_calls[judged]
        errs = rel_errors(got, oracle)
        if p.kind == "baseline":
            base_got.update(got_by_mode)
            return model, Check("baseline", errors=errs, first_call_s=first, first_calls=first_calls)
        if p.kind == "reference":
            tol = {k: REF_BOUND[case.dtype] for k in errs}
        else:
            tol = {k: 2.0 * ref_err.get(k, 0.0) + FLOOR[case.dtype] for k in errs}
        bad = [k for k in errs if not errs[k] <= tol[k]]
        if bad:
            msg = "; ".join(f"{k}: err {errs[k]:.3g} > tol {tol[k]:.3g}" for k in bad)
            return None, Check("FAILED", errs, tol, message=f"mismatch vs nn.RNN (fp64): {msg}", first_call_s=first)
        if p.kind in ("native", "auto") and base_got:
            for mode, res in got_by_mode.items():
                d = paths.get(mode)
                if p.kind == "native" or (d is not None and d.native):
                    diff = differs(res, base_got.get(mode, {}))
                    if diff:
                        return None, Check("FAILED", errs, tol, first_call_s=first, paths=paths, message=(
                            f"ran native in {mode} but differs from nn.RNN in the same dtype: {', '.join(diff)}"))
        if p.kind == "auto":
            missing = [m for m in case.modes if m not in paths]
            if missing:
                return None, Check("ERROR", errs, tol, first_call_s=first, message=(
                    f"auto recorded no path in {', '.join(missing)} (select.record_paths saw no forward)"))
            # fused_rnn.explain, asked for the same call in the same mode, must name the path the call took (the
            # row's reason is asked again at the timed T: _auto_at_timed_T)
            for mode, d in paths.items():
                _, problem = _explain_call(model, x, mode, d)
                if problem:
                    return None, Check("ERROR", errs, tol, first_call_s=first, message=problem)
        return model, Check("ok", errs, tol, first_call_s=first, paths=paths, first_calls=first_calls)

    def _auto_at_timed_T(self, case: Case, mode: str, model: nn.Module, base_model: nn.Module | None
                         ) -> tuple[object | None, str, str]:
        """auto's path for the timed call -- at the case's T, not check_T: the policy looks at T (rule 7, short
        sequences), so the check's shorter call may take another path -- with fused_rnn.explain's reason for that
        call, and, where the path is native, the call asserted bit for bit against nn.RNN at that T (the check
        asserted it only at check_T). Returns (decision, reason, problem); problem "" when all is well."""
        from fused_rnn.backends.select import record_paths

        g = torch.Generator(device=self.device).manual_seed(11)
        dt = case.torch_dtype
        x = torch.randn(case.T, case.B, case.H, generator=g, device=self.device).to(dt)
        grads = None
        if mode == "fwd+bwd":
            grads = (torch.randn(case.T, case.B, case.directions * case.H, generator=g, device=self.device).to(dt),
                     torch.randn(case.layers * case.directions, case.B, case.H, generator=g,
                                 device=self.device).to(dt))
        with record_paths() as log:
            got = run_once(model, x, grads)
        if not log:
            return None, "", f"auto recorded no path in {mode} at T={case.T} (select.record_paths saw no forward)"
        d = log[-1]
        why, problem = _explain_call(model, x, mode, d)
        if problem:
            return d, "", problem
        if d.native and base_model is not None:
            diff = differs(got, run_once(base_model, x, grads))
            if diff:
                return d, why, (f"ran native in {mode} at T={case.T} but differs from nn.RNN in the same dtype: "
                                f"{', '.join(diff)}")
        return d, why, ""

    def _timed_fn(self, model: nn.Module, case: Case, mode: str) -> Callable[[], object]:
        """The timed call: forward (no grad) or forward + gradients of x and every parameter through the loss
        ⟨out, dy⟩ + ⟨h_n, dh⟩, cycling N_ROTATE inputs. The gradients come from autograd.grad, so nothing
        accumulates into .grad between calls."""
        g = torch.Generator(device=self.device).manual_seed(7)
        dt = case.torch_dtype
        xs = [torch.randn(case.T, case.B, case.H, generator=g, device=self.device).to(dt) for _ in range(N_ROTATE)]
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
        dy = torch.randn(case.T, case.B, case.directions * case.H, generator=g, device=self.device).to(dt)
        dh = torch.randn(case.layers * case.directions, case.B, case.H, generator=g, device=self.device).to(dt)

        def fn_bwd():
            i = it["i"] = (it["i"] + 1) % N_ROTATE
            out, h_n = model(xs[i])
            return torch.autograd.grad((out, h_n), [xs[i]] + params, (dy, dh))
        return fn_bwd


def _explain_call(model: nn.Module, x: Tensor, mode: str, d) -> tuple[str, str]:
    """fused_rnn.explain for auto's call on x [T, B, H] in ``mode``, against the path it took (policy.Decision ``d``):
    (explain's one-line reason -- the wording beside each auto row --, problem); problem "" when explain names
    that path."""
    import fused_rnn

    with torch.set_grad_enabled(mode == "fwd+bwd"):
        e = fused_rnn.explain(model, x.detach().requires_grad_(mode == "fwd+bwd"))
    if (e.path, e.tier) != (d.path, d.tier):
        return "", f"fused_rnn.explain says {e.name} in {mode} at T={x.shape[0]}, but the call ran {_path_name(d)}"
    return e.summary, ""


def verdict(ratios: list[float], native: bool = False) -> tuple[float, float, str]:
    """(median, p20, verdict) of per-round ratios nn.RNN / provider under the timing rule; ``native``: an auto row
    that ran nn.RNN's kernel ("native, slower" when the median is below NATIVE_PASS_MEDIAN and p80 below 1.0)."""
    med, p20 = quantile(ratios, 0.5), quantile(ratios, 0.2)
    if native:
        p80 = quantile(ratios, 0.8)
        return med, p20, ("native" if med >= NATIVE_PASS_MEDIAN or p80 >= 1.0 else "native, slower")
    return med, p20, ("≥ nn.RNN" if med >= PASS_MEDIAN and p20 >= PASS_P20 else "slower")


def derive(rows: list[Row], peaks: Peaks | None) -> None:
    """Fill speedup vs nn.RNN, the per-round ratio median / p20 and verdict, tokens/s, µs per layer-step, and where
    peak rates were measured (GPU, CPU) TFLOP/s and the ratio to the per-step floor."""
    base = {(r.case, r.mode): r.timing.median_ms for r in rows
            if r.provider == "nn.RNN" and r.timing is not None}
    for r in rows:
        if r.ratios:
            native = r.provider == "auto" and r.path == "native"
            r.ratio_median, r.ratio_p20, r.verdict = verdict(r.ratios, native=native)
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
