"""``fused_rnn.explain(rnn, input, hx=None, lengths=None)``: which path ``rnn(input, hx, lengths=lengths)`` would take
here and now, and why -- without running it.

It goes through the module's own steps: nn.RNN's input handling (``RNN._parse``: PackedSequence, unbatched,
batch_first, the same dimension errors), the compute dtype under torch.autocast, the mode (training = grad enabled and
the input, hx or a parameter requires grad), ``select.choose_path`` (FUSED_RNN_BACKEND, FUSED_RNN_*_TIER, a forced
``backend=``, ``diagnostics.record_bptt``, the policy), the autotune cache, and per layer and direction
``select.resolve`` (what each recurrence of the fused stack runs). The recurrence is never run: explain draws no
random numbers, builds no autograd graph and measures nothing (with autotuning on, it reports a finished measurement,
or that the first call will measure). So call it where you would call the module (same grad mode, autocast and
environment): in a training step it explains the training call, under ``torch.no_grad()`` the forward-only one.
``compiled=True`` explains the call as torch.compile / torch.export trace it.

The result is always an :class:`Explanation` (never a type that changes with flags); ``str()`` is a terminal block,
``summary`` the one-line reason (the bench prints it beside each `auto` row: one source of the wording).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from . import autotune as _autotune
from . import policy
from .policy import Decision, Evidence, Measured

_ISA_WORDS = {"avx512_amx": "AVX-512 + AMX", "avx512_bf16": "AVX-512 with BF16", "avx512": "AVX-512",
              "avx2": "AVX2", "other": "a CPU without AVX2"}


@dataclass(frozen=True)
class LayerPath:
    """What one layer-direction runs: ``path`` "native" (one PyTorch op for the whole stack) or a fused backend,
    with its ``tier`` ("" = the backend has no tiers)."""

    layer: int
    direction: str  # "forward" | "reverse"
    path: str
    tier: str

    @property
    def name(self) -> str:
        return self.path + (f":{self.tier}" if self.tier else "")

    def __str__(self) -> str:
        return f"layer {self.layer} {self.direction}: {self.name}"


@dataclass(frozen=True)
class CallInfo:
    """The call as the path choice sees it."""

    device: str
    dtype: str  # the compute dtype key: "fp32", "bf16", ... (autocast's under autocast)
    input_dtype: str
    autocast: bool
    T: int
    B: int
    I: int  # noqa: E741
    H: int
    layers: int
    directions: int
    training: bool  # grad enabled and the input, hx or a parameter requires grad
    threads: int
    form: str  # "padded" | "lengths" | "packed"
    compiled: bool
    backend: str  # the module's backend argument

    @property
    def mode(self) -> str:
        return "training (forward + backward)" if self.training else "inference (forward only)"

    def __str__(self) -> str:
        form = {"padded": "", "lengths": ", lengths=", "packed": ", PackedSequence"}[self.form]
        amp = f" (autocast from {self.input_dtype})" if self.autocast else ""
        stack = f", {self.layers} layer(s) × {self.directions} direction(s)"
        return (f"{self.device} {self.dtype}{amp}, T={self.T} B={self.B} I={self.I} H={self.H}{stack}{form}, "
                f"{self.mode}, {self.threads} thread(s)" + (", under torch.compile" if self.compiled else ""))


@dataclass(frozen=True)
class AutotuneState:
    """Autotuning's part in this call.

    state: "off"; "not-applicable" (the path is forced, compiled or inside record_bptt: nothing is tuned);
        "one-candidate" (nothing to time); "measured" (a finished measurement chose: ``measured`` has the times);
        "pending" (the next call of this key measures, or another thread is measuring it now); "blocked" (a call
        here could not measure, e.g. during CUDA-graph capture); "failed" (the measurement raised).
    """

    enabled: bool
    state: str
    detail: str
    key: _autotune.TuneKey | None = None
    measured: tuple[Measured, ...] = ()

    def __str__(self) -> str:
        return f"{self.state} -- {self.detail}"


@dataclass(frozen=True)
class Explanation:
    """What ``rnn(input, ...)`` would run, and why. ``path``/``tier``/``rule``/``reason``/``evidence``/``source``
    are the decision's (``decision``, a policy.Decision); ``summary`` is the one-line reason; ``layers`` has one entry
    per layer and direction; ``autotune`` says whether a measurement chose; ``notes`` add what a user should know."""

    module: str
    call: CallInfo
    path: str
    tier: str
    rule: str
    summary: str
    reason: str
    evidence: tuple[Evidence, ...]
    source: str
    layers: tuple[LayerPath, ...]
    autotune: AutotuneState
    notes: tuple[str, ...]
    decision: Decision

    @property
    def name(self) -> str:
        return self.path + (f":{self.tier}" if self.tier else "")

    @property
    def native(self) -> bool:
        return self.path == "native"

    def __str__(self) -> str:
        w = 118

        def field(label: str, text: str) -> list[str]:
            return textwrap.wrap(text, w, initial_indent=f"  {label:<9} ", subsequent_indent=" " * 12,
                                 break_on_hyphens=False) or [f"  {label}"]

        lines = textwrap.wrap(f"fused_rnn.explain: {self.module} on {self.call}", w + 2, subsequent_indent="  ",
                              break_on_hyphens=False)
        lines += field("path", self.name)
        lines += field("why", self.summary)
        # the rule's own sentence where the summary did not already say it
        lines += field("rule", self.rule if self.reason in self.summary else f"{self.rule}: {self.reason}")
        if self.source or self.evidence:
            lines += field("evidence", self.source or "-")
            lines += [" " * 12 + str(e) for e in self.evidence]
        lines += field("layers", str(self.layers[0]) if self.layers else "-")
        lines += [" " * 12 + str(lp) for lp in self.layers[1:]]
        lines += field("autotune", str(self.autotune))
        for i, n in enumerate(self.notes):
            lines += field("notes" if i == 0 else "", n)
        return "\n".join(lines)


def explain(rnn: torch.nn.Module, input, hx: Tensor | None = None, *,  # noqa: A002 (nn.RNN's name)
            lengths: Tensor | None = None, compiled: bool = False) -> Explanation:
    """What ``rnn(input, hx, lengths=lengths)`` would run here and now, and why, without running it.

    Args:
        rnn: a ``fused_rnn.RNN``.
        input, hx, lengths: the call's arguments, as ``rnn.forward`` takes them ([T, B, I] / [B, T, I] batch_first /
            [T, I] unbatched / PackedSequence; hx [L·D, B, H]; lengths [B]). They are parsed and checked as forward
            does (the same errors), never computed on.
        compiled: explain the call as torch.compile / torch.export trace it (auto keeps the fused opaque ops there).
    Returns:
        an :class:`Explanation`; ``print()`` it, or read ``.path``, ``.summary``, ``.layers``, ``.autotune``.
    Raises:
        what the call would raise before running: bad input dimensions or hx shape, an unknown FUSED_RNN_BACKEND, an
        unavailable backend, backend="native" inside diagnostics.record_bptt.
    """
    from .modules import DROP_IN, RNN, _fused_can_run, _grad_needed, autocast_dtype, compute_dtype_of

    if not isinstance(rnn, RNN):
        raise TypeError(f"fused_rnn.explain expects a fused_rnn.RNN, got {type(rnn).__name__} (torch.nn.RNN always "
                        "runs PyTorch's own kernel)")
    call = rnn._parse(input, hx, lengths)
    x = call.input
    amp = autocast_dtype(x.device.type)
    dtype = compute_dtype_of(x, amp)
    h = call.hx
    if h is None:
        h = torch.zeros(rnn.num_layers * (2 if rnn.bidirectional else 1), call.B, rnn.hidden_size, dtype=x.dtype,
                        device=x.device)
    rnn.check_forward_args(x, h, call.batch_sizes)  # the shape / dtype errors the call would raise
    training = _grad_needed(rnn, x, call.hx)
    if call.batch_sizes is not None:
        T, form = len(call.batch_sizes), "packed"
    else:
        T, form = x.size(1 if rnn.batch_first else 0), ("lengths" if call.lengths is not None else "padded")
    e = explain_call(rnn, x.device, dtype, x.dtype, amp is not None, T, call.B, training, form, compiled,
                     (x, call.hx))
    if not compiled and not e.native and not _fused_can_run(rnn, call, amp):
        # RNN._run's drop-in check: a call the fused stack would not compute as nn.RNN does runs nn.RNN's op
        d = DROP_IN
        layers = tuple(LayerPath(i, dr, "native", "") for i in range(rnn.num_layers)
                       for dr in _dirs(2 if rnn.bidirectional else 1))
        e = replace(e, path="native", tier="", rule=d.rule, summary=summary(d, e.call), reason=d.reason, evidence=(),
                    source="", layers=layers, decision=d)
    return e


def explain_call(rnn, device: torch.device, dtype: torch.dtype, input_dtype: torch.dtype, autocast: bool, T: int,
                 B: int, training: bool, form: str = "padded", compiled: bool = False,
                 inputs: tuple[Tensor | None, ...] = ()) -> Explanation:
    """``explain`` from the call's facts (no tensors needed: ``show_config`` uses it for sample shapes)."""
    from . import diagnostics as _diag
    from .backends import select

    directions = 2 if rnn.bidirectional else 1
    H, L = rnn.hidden_size, rnn.num_layers
    info = CallInfo(_device_name(device), policy._dtype_key(dtype), policy._dtype_key(input_dtype), autocast, T, B,
                    rnn.input_size, H, L, directions, training, torch.get_num_threads(), form, compiled,
                    rnn.backend)
    box: dict[str, AutotuneState] = {}

    def peek(static: Decision) -> Decision:
        state, d = _autotune_state(rnn, device, dtype, B, T, training, form, static, inputs)
        box["state"] = state
        return d

    d = select.choose_path(rnn.backend, device, dtype, B, H, L, directions, training,
                           (not compiled) and _diag._ACTIVE is not None, tune=peek, record=False, traced=compiled,
                           T=T)
    state = box.get("state") or _not_applicable(d)
    if d.native:
        layers = tuple(LayerPath(i, dr, "native", "") for i in range(L) for dr in _dirs(directions))
    else:
        if d.tier:
            c = select.Choice(d.path, d.tier)
        else:
            # what each elman_layer of the fused stack resolves (run_fused_stack; compiled: the module's backend)
            c = select.resolve(rnn.backend if compiled else d.path, device, H, B, dtype)
        layers = tuple(LayerPath(i, dr, c.backend, c.tier) for i in range(L) for dr in _dirs(directions))
    return Explanation(_module_name(rnn), info, d.path, d.tier, d.rule, summary(d, info), d.reason, d.evidence,
                       d.source, layers, state, _notes(d, info, device), d)


def _dirs(directions: int) -> tuple[str, ...]:
    return ("forward", "reverse")[:directions]


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}"
    return str(device)


def _module_name(rnn) -> str:
    return f"{type(rnn).__name__}({rnn.extra_repr()})"


def _not_applicable(d: Decision) -> AutotuneState:
    on = _autotune.autotune_enabled()
    why = {
        "compile": "no timing under torch.compile / torch.export: the traced graph runs the fused path",
        "diagnostics": "inside diagnostics.record_bptt auto stays fused: nothing to tune",
        "forced-tier": "the tier is forced: nothing to tune",
        "forced": "the path is forced: nothing to tune",
    }.get(d.rule, "the static policy's choice runs")
    return AutotuneState(on, "not-applicable" if on else "off", why)


def _autotune_state(rnn, device: torch.device, dtype: torch.dtype, B: int, T: int, training: bool, form: str,
                    static: Decision, inputs: tuple[Tensor | None, ...]) -> tuple[AutotuneState, Decision]:
    """(autotuning's state for this call, the decision the call would run) -- looks, never measures."""
    cands, why_one = _autotune.candidates(static, device, dtype, B, rnn.hidden_size)
    names = " and ".join(c.path + (f":{c.tier}" if c.tier else "") for c in cands)
    mode = "forward + backward" if training else "forward only"
    if not _autotune.autotune_enabled():
        what = f"would time {names} ({mode}) on" if len(cands) > 1 else "has nothing to time on"
        return AutotuneState(False, "off", f"fused_rnn.set_autotune(True) or {_autotune.ENV}=1: autotuning {what} "
                             "the first call of each shape key"), static
    key = _autotune.key_of(rnn, device, dtype, B, T, training, form)
    d, err = _autotune.lookup(key)
    if d is not None and err:
        return AutotuneState(True, "failed", f"the measurement of this key failed ({err}); the static policy's "
                             "choice runs", key), d
    if d is not None and d.rule == "autotune":
        return AutotuneState(True, "measured", f"key {key}: {d.reason}", key, d.measured), d
    if len(cands) < 2:
        return AutotuneState(True, "one-candidate", f"{why_one}: nothing to time", key), static
    if _autotune.pending(key):
        return AutotuneState(True, "pending", f"key {key} is being measured now by another call; until it is done "
                             f"the static policy's choice ({_name(static)}) is the best guess", key), static
    b = _autotune.blocked(rnn, inputs, device) if inputs else ""
    if b:
        return AutotuneState(True, "blocked", f"a call here would not measure ({b}): the cached choice if any, "
                             f"else the static policy's ({_name(static)}), runs", key), static
    return AutotuneState(True, "pending", f"not yet measured: the first call of key {key} times {names} ({mode}) "
                         f"and keeps the faster; until then the static policy says {_name(static)}", key), static


def _name(d: Decision) -> str:
    return d.path + (f":{d.tier}" if d.tier else "")


# ----------------------------------------------------------------------------------------------------------------
# The one-line reason (also the bench's wording beside each auto row).

def summary(d: Decision, call: CallInfo) -> str:
    """One line: the path, then why, in the words of the rule that fired (with its key figure and source)."""
    name = _name(d)
    if d.rule in ("measured-win", "measured-loss") and d.evidence:
        if call.device == "cpu":
            return f"{name}: {_cpu_region(d, call)}"
        return f"{name}: {_gpu_region(d, call)}"
    return f"{name}: {d.reason}"


def _span(values: list[int]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo}" if lo == hi else f"{lo}–{hi}"


def _region(ev: tuple[Evidence, ...], call: CallInfo) -> str:
    mode = "training" if call.training else "inference"
    return f"policy region B {_span([e.B for e in ev])} × H {_span([e.H for e in ev])}, {ev[0].dtype}, {mode}"


def _cpu_region(d: Decision, call: CallInfo) -> str:
    ev = d.evidence
    table, exact = policy._pick_table(policy._cpu_tables(), policy.cpu_isa(), call.threads, policy.cpu_core())
    where = ""
    if table is not None:
        machine = f" ({table.machine}{f', {table.core}' if table.core and table.core not in table.machine else ''})" \
            if table.machine else (f" ({table.core})" if table.core else "")
        prelim = ", preliminary data" if table.preliminary else ""
        where = (f" on {_ISA_WORDS.get(table.isa, table.isa)}{machine}, {table.threads} "
                 f"thread{'s' * (table.threads != 1)}, {table.date}{prelim}")
        if not exact:
            here = policy.cpu_core() or "an unknown core"
            where += (f" (borrowed for {call.threads} thread{'s' * (call.threads != 1)} on {here} with the strong "
                      f"margin ×{policy.STRONG_MARGIN[0]:g})")
    margin = policy.MARGIN if exact else policy.STRONG_MARGIN
    if d.rule == "measured-win":
        worst = min(ev, key=lambda e: e.ratio)
        p20 = f", p20 ×{worst.p20:.1f}" if worst.p20 is not None else ""
        return (f"{_region(ev, call)}; measured ×{worst.ratio:.1f} faster than nn.RNN (worst surrounding cell{p20})"
                f"{where}")
    bad = min((e for e in ev if not e.win), key=lambda e: e.ratio, default=min(ev, key=lambda e: e.ratio))
    p20 = f", p20 ×{bad.p20:.2f}" if bad.p20 is not None else ""
    return (f"{_region(ev, call)}; the fused cpu path is not measured faster by ≥ ×{margin[0]:g} (p20 ≥ "
            f"×{margin[1]:g}) there "
            f"(B={bad.B} H={bad.H}: ×{bad.ratio:.2f}{p20}){where}, so nn.RNN's own kernel runs")


def _gpu_region(d: Decision, call: CallInfo) -> str:
    ev = d.evidence
    src = ", ".join(d.source.split(", ")[:2])
    if d.rule == "measured-win":
        worst = min(ev, key=lambda e: e.ratio)
        return (f"{_region(ev, call)}; ×{worst.ratio:.1f} over cuDNN counting the input GEMM (worst surrounding "
                f"committed figure; {src})")
    bad = min((e for e in ev if not e.win), key=lambda e: e.ratio, default=min(ev, key=lambda e: e.ratio))
    return (f"{_region(ev, call)}; no fused tier beats cuDNN by ≥ ×{policy.GPU_MARGIN:g} counting the input GEMM "
            f"there (B={bad.B} H={bad.H}: ×{bad.ratio:.2f}; {src}), so cuDNN runs")


def _notes(d: Decision, call: CallInfo, device: torch.device) -> tuple[str, ...]:
    notes = []
    if d.native:
        notes.append("native = one call of PyTorch's RNN op for the whole stack (ATen on the CPU, cuDNN on CUDA): "
                     "results bit for bit torch.nn.RNN's")
        if call.form == "lengths":
            notes.append("lengths=: native packs the batch (pack_padded_sequence) and re-pads the result")
        if call.compiled:
            notes.append("under torch.compile PyTorch's RNN op decomposes into per-step ops: every new T recompiles")
    else:
        from . import concurrency

        if call.directions == 2:
            try:
                conc = concurrency.enabled(device, 2)
            except ValueError as e:
                conc, _ = False, e
            if conc:
                notes.append("the two directions of each layer run on two CUDA streams "
                             f"({concurrency.ENV})")
    if call.autocast:
        notes.append(f"torch.autocast: computes in {call.dtype} (input {call.input_dtype}), parameters stay as they "
                     "are")
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(call.dtype)
    if not d.native and call.device == "cpu" and half is not None and not call.compiled:
        from . import gemm as _gemm

        parts = [(f"layer 0's input projection and its gradients (I={call.I})", call.I)]
        if call.layers > 1:
            parts.append((f"the input projections of layers 1+ (I={call.directions * call.H})",
                          call.directions * call.H))
        parts.append((f"dW_hh (H={call.H})", call.H))
        on = [what for what, i in parts if _gemm.use_fp32_for("cpu", half, i, call.H)]
        if on:
            notes.append(f"{call.dtype} GEMMs in fp32 for {', '.join(on)}: this machine kind's grid run measured "
                         f"torch's fp32 GEMM ≥ {policy.GEMM_F32_GAIN:g}× its {call.dtype} one (policy rule 8; "
                         "fused_rnn/gemm.py, FUSED_RNN_HALF_GEMM)")
    return tuple(notes)


__all__ = ["explain", "Explanation", "LayerPath", "CallInfo", "AutotuneState", "summary"]
