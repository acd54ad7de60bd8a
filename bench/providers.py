"""Providers: the things timed against each other, each building an nn.RNN-compatible module from one state_dict.

  nn.RNN               torch.nn.RNN (cuDNN on a GPU, ATen's native kernel on the CPU) -- the baseline of every
                       speedup; always present.
  auto                 fused_rnn.RNN(backend="auto"): what users get -- the measured policy picks native or a fused
                       backend/tier per call (fused_rnn/policy.py); the path it took is recorded per mode, and where
                       it is native the row is asserted (bit-for-bit nn.RNN) and timed (fused_rnn's per-call cost).
  native               fused_rnn.RNN(backend="native"): PyTorch's own kernel through fused_rnn (must equal nn.RNN bit
                       for bit, and time like it).
  reference            fused_rnn.RNN(backend="reference"): the readable Python loop, timed only where T·layers·
                       directions is small (PresetConfig.reference_max_steps), since it launches ~8 ops per step.
  cpu | cuda | triton  every other backend in fused_rnn.available_backends(), through the public module. Backends
                       with tiers (cuda, triton) appear once per tier, forced through FUSED_RNN_CUDA_TIER /
                       FUSED_RNN_TRITON_TIER (select.py reads them per call); the tier the backend's own heuristic
                       would pick for the case is marked in the report. On a GPU only the tiers on the GPU-verified
                       list for it, unless named (``--backends cuda:batch_tiled``).
  compile(reference)   torch.compile of the reference module, only for cases with ``compile=True`` (short T: the
                       Python loop is unrolled, compile time grows with T); compile time is reported apart.
  flashrnn             NX-AI FlashRNN's Elman kernel, only with --with-flashrnn and when ``import flashrnn`` works.
  <tier>+streams       on CUDA, a twin of every cuda/triton tier for bidirectional cases only: the two directions of
                       each layer on two streams (FUSED_RNN_CONCURRENT_DIRECTIONS=1, fused_rnn/concurrency.py); every
                       other provider runs with it off, so the pair shows what the second stream buys.

An unavailable backend or tier is skipped with a note (the reason its ``available()`` gives), never a crash.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cases import Case

TIER_ENV: dict[str, str] = {"cuda": "FUSED_RNN_CUDA_TIER", "triton": "FUSED_RNN_TRITON_TIER"}
STREAMS_ENV = "FUSED_RNN_CONCURRENT_DIRECTIONS"  # fused_rnn.concurrency.ENV (not imported: bench loads torch lazily)
FUSED_BACKENDS: tuple[str, ...] = ("cpu", "cuda", "triton")
# Names --backends accepts besides "<backend>" and "<backend>:<tier>".
EXTRA_NAMES: tuple[str, ...] = ("nn.RNN", "auto", "native", "reference", "compile", "flashrnn")


@dataclass(frozen=True)
class Provider:
    """One timed implementation.

    name: display name, e.g. "nn.RNN", "cuda:persistent", "compile(reference)".
    kind: "baseline" | "auto" | "native" | "reference" | "fused" | "compile" | "external".
    backend: fused_rnn backend name ("auto", "native", a fused backend; None for nn.RNN / flashrnn).
    tier: forced tier ("" = the backend's own choice; it has no tiers).
    streams: run a bidirectional layer's directions on two CUDA streams (bidirectional cases only).
    """

    name: str
    kind: str
    backend: str | None = None
    tier: str = ""
    streams: bool = False

    def applicable(self, case: Case, reference_max_steps: int) -> tuple[bool, str]:
        """Whether this provider runs on ``case``; (False, why) otherwise."""
        if self.kind == "reference" and case.layer_steps > reference_max_steps:
            return False, (f"reference loop capped at T·layers·dirs ≤ {reference_max_steps} in this preset "
                           f"(case has {case.layer_steps})")
        if self.kind == "compile" and not case.compile:
            return False, "torch.compile only at the short-T compile cases"
        if self.kind == "external" and (case.layers > 1 or case.bidirectional):
            return False, "flashrnn has no layers or bidirectional"
        if self.streams and not case.bidirectional:
            return False, "two streams only for bidirectional cases"
        return True, ""

    def build(self, state_dict: dict[str, Tensor], case: Case, device: torch.device) -> nn.Module:
        """A module with nn.RNN's parameters (from ``state_dict``) in the case dtype on ``device``, train mode.

        Its forward takes x [T, B, H] (time-major) and returns (output [T, B, D·H], h_n [L·D, B, H]).
        """
        kw = dict(input_size=case.H, hidden_size=case.H, num_layers=case.layers, nonlinearity="tanh",
                  bidirectional=case.bidirectional)
        if self.kind == "baseline":
            m: nn.Module = nn.RNN(**kw)
        elif self.kind == "external":
            m = _FlashRNNElman(case.H)
        else:
            import fused_rnn

            backend = "reference" if self.kind == "compile" else self.backend
            m = fused_rnn.RNN(**kw, backend=backend)
        m.load_state_dict(state_dict)
        m = m.to(device=device, dtype=case.torch_dtype).train()  # train: cuDNN's backward refuses eval mode
        if isinstance(m, nn.RNN) and not hasattr(m, "backend"):
            # .to() does not re-flatten (torch 2.11-2.14): without this cuDNN compacts the weights on every call
            m.flatten_parameters()
        if self.kind == "compile":
            m = torch.compile(m, dynamic=False)
        return m

    @contextlib.contextmanager
    def environment(self) -> Iterator[None]:
        """Force this provider's tier (and only it) for the duration; restore the caller's environment after."""
        saved = {v: os.environ.get(v) for v in TIER_ENV.values()}
        saved["FUSED_RNN_BACKEND"] = os.environ.get("FUSED_RNN_BACKEND")
        saved[STREAMS_ENV] = os.environ.get(STREAMS_ENV)
        try:
            for var in saved:
                os.environ.pop(var, None)
            if self.backend in TIER_ENV and self.tier:
                os.environ[TIER_ENV[self.backend]] = self.tier
            os.environ[STREAMS_ENV] = "1" if self.streams else "0"
            yield
        finally:
            for var, val in saved.items():
                if val is None:
                    os.environ.pop(var, None)
                else:
                    os.environ[var] = val

    def heuristic_tier(self, case: Case, device: torch.device) -> str | None:
        """The tier the backend's own heuristic picks for this case (None when it has no tiers or cannot say)."""
        if self.kind != "fused" or not self.tier or self.streams:
            return None
        try:
            from fused_rnn.backends.select import backend_module

            return str(backend_module(self.backend).pick_tier(case.H, case.B, case.torch_dtype, device))
        except Exception:
            return None


class _FlashRNNElman(nn.Module):
    """FlashRNN's fused Elman kernel behind nn.RNN's parameter names (one layer, one direction).

    x [T, B, H] -> P = x W_ihᵀ + b_ih + b_hh [T, B, H] -> flashrnn(Wx [B, T, 1 gate, 1 head, H], R, b) ->
    (output [T, B, H], h_n [1, B, H]). The layout of R ([gates, heads, H_prev, H] with a_t = h_{t-1} R) follows
    FlashRNN's public vanilla reference; it has not been run here (no FlashRNN on this machine), so the bench's
    correctness check is what proves or disproves it on a GPU.
    """

    def __init__(self, H: int) -> None:
        super().__init__()
        self.weight_ih_l0 = nn.Parameter(torch.empty(H, H))
        self.weight_hh_l0 = nn.Parameter(torch.empty(H, H))
        self.bias_ih_l0 = nn.Parameter(torch.empty(H))
        self.bias_hh_l0 = nn.Parameter(torch.empty(H))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        import flashrnn  # noqa: F401  (only reached with --with-flashrnn, after the import check)
        from flashrnn import flashrnn as fr

        T, B, H = x.shape
        P = F.linear(x, self.weight_ih_l0, self.bias_ih_l0 + self.bias_hh_l0)
        Wx = P.transpose(0, 1).reshape(B, T, 1, 1, H)
        R = self.weight_hh_l0.t().reshape(1, 1, H, H)
        b = torch.zeros(1, 1, H, device=x.device, dtype=x.dtype)
        name = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}[x.dtype]
        h, last_h = fr(Wx, R, b, function="elman", backend="cuda_fused", dtype=name)
        # h: [states, B, T(+1), heads, H] in FlashRNN's layout; keep state 0 and the last T steps.
        y = h.reshape(-1, B, h.shape[2], H)[0][:, -T:].transpose(0, 1).contiguous()
        return y, y[-1].unsqueeze(0)


def _backend_tiers(name: str, mod) -> tuple[list[str], list[str]]:
    """(tiers to time, notes) for a fused backend module; [""] when it has no tiers."""
    tiers = [t for t in getattr(mod, "TIERS", ("",)) if t]
    if not tiers:
        return [""], []
    notes = []
    compiled = getattr(mod, "compiled_tiers", None)
    if callable(compiled):
        try:
            have = set(compiled())
        except Exception as e:  # a broken build: say so, time nothing of it
            return [], [f"{name}: cannot list compiled tiers ({type(e).__name__}: {e})"]
        missing = [t for t in tiers if t not in have]
        if missing:
            notes.append(f"{name}: tiers {missing} are not compiled into this build; skipped")
        tiers = [t for t in tiers if t in have]
    return tiers, notes


def _verified_here(backend: str, tier: str, device: torch.device) -> bool:
    """Whether ``backend:tier`` is on the GPU-verified list for ``device``'s compute capability (the tier alone when
    the capability cannot be read)."""
    from fused_rnn.backends import verified

    try:
        cap = torch.cuda.get_device_capability(device)
    except (RuntimeError, AssertionError):  # no usable device (the CPU tests' stand-in for one)
        cap = None
    return verified.is_verified(backend, tier, cap)


def discover(device: torch.device, wanted: list[str] | None, with_flashrnn: bool) -> tuple[list[Provider], list[str]]:
    """Every provider usable on ``device`` (filtered by ``wanted`` names), and notes on what was skipped and why.

    ``wanted`` holds names like "native", "cuda", "cuda:fallback", "reference", "compile", "flashrnn"; nn.RNN (every
    speedup is relative to it) and auto (what users get: an auto row in every table) are always kept. None = all.
    On a CUDA device a tier that is not on the GPU-verified list for it (fused_rnn.backends.verified, read from
    csrc/cuda/gpu_verified.h) is timed only when named as ``backend:tier``: a new kernel that traps or hangs then
    cannot take the verified providers' table down with it (make gpu-check names the ones it means to time).
    """
    import fused_rnn
    from fused_rnn.backends.select import backend_module

    notes: list[str] = []

    def keep(name: str, backend: str | None = None) -> bool:
        if wanted is None:
            return True
        return name in wanted or (backend is not None and backend in wanted)

    # nn.RNN and auto are always there: every speedup is relative to nn.RNN, and auto is what users get.
    providers = [Provider("nn.RNN", "baseline"), Provider("auto", "auto", backend="auto")]
    if keep("native"):
        providers.append(Provider("native", "native", backend="native"))
    if keep("reference"):
        providers.append(Provider("reference", "reference", backend="reference"))
    available = set(fused_rnn.available_backends())
    skipped_unverified: list[str] = []
    for name in FUSED_BACKENDS:
        if wanted is not None and name not in wanted and not any(w.startswith(name + ":") for w in wanted):
            continue
        try:
            mod = backend_module(name)
        except Exception as e:  # the backend's file is not in this tree yet, or fails to import
            notes.append(f"{name}: skipped, cannot import fused_rnn.backends.{name} ({type(e).__name__}: {e})")
            continue
        if name not in available:
            try:
                why = mod.available()[1]
            except Exception as e:
                why = f"{type(e).__name__}: {e}"
            notes.append(f"{name}: skipped, not available here: {why}")
            continue
        if not mod.supports_device(device):
            notes.append(f"{name}: skipped, cannot run on {device.type} tensors")
            continue
        tiers, tier_notes = _backend_tiers(name, mod)
        notes += tier_notes
        for tier in tiers:
            pname = f"{name}:{tier}" if tier else name
            if device.type == "cuda" and tier and not _verified_here(name, tier, device) and (
                    wanted is None or pname not in wanted):
                if keep(pname, name):
                    skipped_unverified.append(pname)
                continue
            if keep(pname, name):
                providers.append(Provider(pname, "fused", backend=name, tier=tier))
            if device.type == "cuda" and name in TIER_ENV and keep(pname + "+streams", name):
                providers.append(Provider(pname + "+streams", "fused", backend=name, tier=tier, streams=True))
    if skipped_unverified:
        notes.append(f"{', '.join(skipped_unverified)}: skipped, not on the GPU-verified list for this device "
                     "(csrc/cuda/gpu_verified.h); name a tier in --backends (e.g. cuda:batch_tiled) to time it")
    if keep("compile"):
        providers.append(Provider("compile(reference)", "compile", backend="reference"))
    if with_flashrnn:
        if device.type != "cuda":
            notes.append("flashrnn: skipped, it needs a CUDA device")
        else:
            try:
                importlib.import_module("flashrnn")
                providers.append(Provider("flashrnn", "external"))
            except Exception as e:
                notes.append(f"flashrnn: skipped, `import flashrnn` failed ({type(e).__name__}: {e}); "
                             "install it (pip install flashrnn) to compare")
    return providers, notes
