"""Backend and tier selection: the only module that knows every backend.

``backend="auto"``: CUDA tensors -> the fastest backend/tier that has **passed on a real GPU** (GPU_VERIFIED below,
updated together with the committed report under bench/results/), else ``reference``; CPU tensors -> ``cpu`` when the
extension is built, else ``reference``. ``FUSED_RNN_BACKEND`` replaces ``auto``; ``FUSED_RNN_CUDA_TIER`` and
``FUSED_RNN_TRITON_TIER`` force a tier (tests, benchmarks).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from types import ModuleType

import torch

from .. import _lazy_compile
from . import fake  # noqa: F401  (registers the ops' fake implementations)

BACKEND_NAMES: tuple[str, ...] = ("reference", "cpu", "cuda", "triton")

# Tiers that have passed on a real GPU, with the report that shows it (README status table). `auto` uses them only
# on GPUs of the compute capabilities they passed on: the kernels were proven on an H200 (sm_90), not elsewhere.
# `batch_tiled` and every Triton tier have not run on a GPU yet: forced only.
GPU_VERIFIED: dict[str, tuple[str, ...]] = {
    "cuda": ("cluster", "persistent", "fallback"),
    "triton": (),
}
GPU_VERIFIED_CAPABILITY: tuple[tuple[int, int], ...] = ((9, 0),)
GPU_VERIFIED_REPORT: str = "bench/results/H200-2026-11-27.md"

_TIER_ENV = {"cuda": "FUSED_RNN_CUDA_TIER", "triton": "FUSED_RNN_TRITON_TIER"}


# Imported once, then looked up: torch.compile (Dynamo) refuses to trace importlib, so a Function whose forward
# looked its backend up through importlib could not be compiled (checked: torch 2.14.1, CPU, 2026-11-27).
_MODULES: dict[str, ModuleType] = {}


def _module(name: str) -> ModuleType:
    mod = _MODULES.get(name)
    if mod is None:
        mod = _MODULES[name] = importlib.import_module(f"fused_rnn.backends.{name}")
    return mod


def backend_module(name: str) -> ModuleType:
    """The backend module for ``name`` (one of BACKEND_NAMES)."""
    if name not in BACKEND_NAMES:
        raise ValueError(f"fused_rnn: unknown backend {name!r}; choose one of {('auto',) + BACKEND_NAMES}")
    return _module(name)


def available_backends() -> list[str]:
    """Names of the backends usable on this machine (``reference`` always is)."""
    out = []
    for name in BACKEND_NAMES:
        try:
            ok, _ = backend_module(name).available()
        except Exception:
            ok = False
        if ok:
            out.append(name)
    return out


@dataclass(frozen=True)
class Choice:
    backend: str
    tier: str


def _check_usable(name: str, device: torch.device) -> ModuleType:
    try:
        mod = backend_module(name)
    except ImportError as e:  # a backend module missing from this install, or its dependency (triton) missing
        raise RuntimeError(f"fused_rnn: backend {name!r} is not available here: {type(e).__name__}: {e}") from e
    ok, why = mod.available()
    if not ok:
        raise RuntimeError(f"fused_rnn: backend {name!r} is not available here: {why}")
    if not mod.supports_device(device):
        raise RuntimeError(f"fused_rnn: backend {name!r} cannot run on {device.type} tensors")
    return mod


def _verified_device(device: torch.device) -> bool:
    try:
        return tuple(torch.cuda.get_device_capability(device)) in GPU_VERIFIED_CAPABILITY
    except Exception:  # no driver
        return False


def _auto(device: torch.device) -> str:
    if device.type == "cuda":
        if not _verified_device(device):
            return "reference"
        for name in ("cuda", "triton"):
            if GPU_VERIFIED.get(name):
                try:
                    ok, _ = backend_module(name).available()
                except Exception:
                    ok = False
                if ok:
                    return name
        return "reference"
    if device.type == "cpu":
        ok, _ = backend_module("cpu").available()
        return "cpu" if ok else "reference"
    return "reference"


def resolve(backend: str, device: torch.device, H: int, B: int, dtype: torch.dtype) -> Choice:
    """Pick (backend, tier) for one layer-direction call; raises a clear error for an unusable request.

    Under torch.compile the environment and availability part (``_resolve_name``) runs once, at trace time, and its
    result is a constant of the graph: FUSED_RNN_BACKEND / FUSED_RNN_*_TIER changed after the first compile take
    effect after ``torch._dynamo.reset()`` (or in a new process), not in the compiled module. Backends with no tiers
    never look at H or B, so a dynamic batch or sequence size does not recompile for them. H, B: ints, or SymInts
    while torch.compile traces with dynamic shapes.
    """
    name, forced, auto, multi_tier = _resolve_name(backend, device.type)
    if forced:
        return Choice(name, forced)
    if not multi_tier:
        return Choice(name, "")
    # Traced by Dynamo under torch.compile (not a trace-time constant like _resolve_name: H and B may be symbolic,
    # and a constant's arguments cannot be). Each comparison the heuristic makes on B becomes a guard, so a batch size
    # on its other side recompiles. Heuristics must stay traceable: plain Python over H, B, dtype (checked for the
    # CUDA one, compiled-tier query included, on CPU with dynamic H and B: torch 2.14.1, 2026-11-27).
    tier = backend_module(name).pick_tier(H, B, dtype, device)
    if auto and device.type == "cuda" and name in GPU_VERIFIED and tier not in GPU_VERIFIED[name]:
        # auto runs only GPU-verified tiers: the always-correct fallback when verified, else the first verified one.
        verified = GPU_VERIFIED[name]
        tier = "fallback" if "fallback" in verified else (verified[0] if verified else "")
        if not tier:
            return Choice("reference", "")
    return Choice(name, tier)


@_lazy_compile.assume_constant_result
def _resolve_name(backend: str, device_type: str) -> tuple[str, str, bool, bool]:
    """(backend name, forced tier or "", whether it came from "auto", whether the backend has several tiers).

    Reads FUSED_RNN_BACKEND / FUSED_RNN_*_TIER and the backends' availability. Dynamo calls it at trace time and
    bakes the result into the graph (it cannot trace importlib or the dispatcher queries behind ``available()``).
    """
    device = torch.device(device_type)
    name = backend
    if name == "auto":
        name = os.environ.get("FUSED_RNN_BACKEND", "auto") or "auto"
        if name != "auto" and name not in BACKEND_NAMES:
            raise ValueError(f"fused_rnn: FUSED_RNN_BACKEND={name!r} is not a backend; choose one of "
                             f"{('auto',) + BACKEND_NAMES}")
    auto = name == "auto"
    if auto:
        name = _auto(device)
    mod = _check_usable(name, device)
    forced = os.environ.get(_TIER_ENV.get(name, ""), "") if name in _TIER_ENV else ""
    if forced and forced not in mod.TIERS:
        raise ValueError(f"fused_rnn: {_TIER_ENV[name]}={forced!r} is not a tier of {name!r}: {mod.TIERS}")
    return name, forced, auto, tuple(mod.TIERS) != ("",)

