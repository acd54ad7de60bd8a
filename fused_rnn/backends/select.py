"""Backend, tier and path selection: the only module that knows every backend.

Two levels:
  - ``choose_path`` (module level, once per ``fused_rnn.RNN`` call): the fused stack or ``native`` -- PyTorch's own
    RNN kernels, what nn.RNN runs (fused_rnn/native.py). ``backend="native"`` forces it; ``"auto"`` asks the
    measured policy (fused_rnn/policy.py) with this process's facts (ISA class, threads, GPU capability, TF32
    settings), except under torch.compile / torch.export (the fused opaque ops keep a dynamic T; ``aten::rnn_tanh``
    decomposes into per-step ops and recompiles per T) and inside ``diagnostics.record_bptt`` (it hooks the fused
    recurrence), where auto stays fused.
  - ``resolve`` (per layer and direction of the fused stack): the fused backend and tier. ``backend="auto"``: CUDA
    tensors -> the fastest backend/tier that has **passed on a real GPU** (GPU_VERIFIED below, updated together with
    the committed report under bench/results/), else ``reference``; CPU tensors -> ``cpu`` when the extension is
    built, else ``reference``.
``FUSED_RNN_BACKEND`` replaces ``auto`` (``native`` included); ``FUSED_RNN_CUDA_TIER`` and ``FUSED_RNN_TRITON_TIER``
force a tier (tests, benchmarks).
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType

import torch

from .. import _lazy_compile, policy
from .._env import getenv
from . import fake  # noqa: F401  (registers the ops' fake implementations)
from .verified import GPU_VERIFIED, GPU_VERIFIED_CAPABILITY, GPU_VERIFIED_REPORT  # noqa: F401  (the one list)

BACKEND_NAMES: tuple[str, ...] = ("reference", "cpu", "cuda", "triton")
NATIVE = "native"
# What fused_rnn.RNN(backend=...) and FUSED_RNN_BACKEND accept.
MODULE_BACKENDS: tuple[str, ...] = ("auto", NATIVE) + BACKEND_NAMES

# GPU_VERIFIED (tiers that have passed on a real GPU), GPU_VERIFIED_CAPABILITY and GPU_VERIFIED_REPORT are imported
# above from verified.py: the list is written once, in csrc/cuda/gpu_verified.h, and the CUDA op's empty tier reads the
# same copy. `auto` uses the tiers only on GPUs of the compute capabilities they passed on (an H200, sm_90, so far).

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


# mod.available() answers, per function object: its dispatcher queries cost ~10 µs and `auto` asks per call (and
# per layer); a monkeypatched available() (tests) is a new function object, so it is asked afresh.
_AVAILABLE: dict = {}


def _available(mod: ModuleType) -> tuple[bool, str]:
    fn = mod.available
    hit = _AVAILABLE.get(fn)
    if hit is None:
        hit = _AVAILABLE[fn] = fn()
    return hit


def _check_usable(name: str, device: torch.device) -> ModuleType:
    try:
        mod = backend_module(name)
    except ImportError as e:  # a backend module missing from this install, or its dependency (triton) missing
        raise RuntimeError(f"fused_rnn: backend {name!r} is not available here: {type(e).__name__}: {e}") from e
    ok, why = _available(mod)
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
                    ok, _ = _available(backend_module(name))
                except Exception:
                    ok = False
                if ok:
                    return name
        return "reference"
    if device.type == "cpu":
        ok, _ = _available(backend_module("cpu"))
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
    if name == NATIVE:
        raise ValueError("fused_rnn: backend 'native' (here from FUSED_RNN_BACKEND) runs PyTorch's own RNN kernel "
                         "over the whole stack: it is a fused_rnn.RNN path, not a backend of elman_layer / "
                         "recurrence; name a fused backend there")
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

    The name is "native" (no tier, not auto) when FUSED_RNN_BACKEND=native replaces "auto" or backend is "native".

    Reads FUSED_RNN_BACKEND / FUSED_RNN_*_TIER and the backends' availability. Dynamo calls it at trace time and
    bakes the result into the graph (it cannot trace importlib or the dispatcher queries behind ``available()``).
    """
    device = torch.device(device_type)
    name = backend
    if name == "auto":
        name = getenv("FUSED_RNN_BACKEND", "auto") or "auto"
        if name not in MODULE_BACKENDS:
            raise ValueError(f"fused_rnn: FUSED_RNN_BACKEND={name!r} is not a backend; choose one of "
                             f"{MODULE_BACKENDS}")
    if name == NATIVE:
        return NATIVE, "", False, False
    auto = name == "auto"
    if auto:
        name = _auto(device)
    mod = _check_usable(name, device)
    forced = getenv(_TIER_ENV[name]) if name in _TIER_ENV else ""
    if forced and forced not in mod.TIERS:
        raise ValueError(f"fused_rnn: {_TIER_ENV[name]}={forced!r} is not a tier of {name!r}: {mod.TIERS}")
    return name, forced, auto, tuple(mod.TIERS) != ("",)



# ----------------------------------------------------------------------------------------------------------------
# Module level: the fused stack or native (fused_rnn/policy.py has the rules and the evidence).

# The collector of the innermost open record_paths() block, else None (one `is None` check per call otherwise).
_PATH_LOG: list | None = None


@contextmanager
def record_paths() -> Iterator[list]:
    """Collect the ``policy.Decision`` of every eager ``fused_rnn.RNN`` forward run inside the block, in order.

    What the bench uses to assert the path `auto` took instead of timing it; nothing is recorded while
    torch.compile traces (a traced graph has no Python side effects at run time).
    """
    global _PATH_LOG
    prev, log = _PATH_LOG, []
    _PATH_LOG = log
    try:
        yield log
    finally:
        _PATH_LOG = prev


def record_instead(d) -> None:
    """Inside ``record_paths``: replace the decision just recorded by ``d`` (the module's drop-in fallback to nn.RNN's
    op, taken after the policy chose: modules._fused_can_run)."""
    if _PATH_LOG:
        _PATH_LOG[-1] = d


def choose_path(backend: str, device: torch.device, dtype: torch.dtype, B: int, H: int, layers: int,
                directions: int, training: bool, recording_bptt: bool = False,
                tune: Callable[[policy.Decision], policy.Decision] | None = None, record: bool = True,
                traced: bool | None = None, T: int | None = None, memo_key: tuple | None = None):
    """The path of one ``fused_rnn.RNN`` call: a ``policy.Decision`` whose ``path`` is "native" or a fused backend.

    Args:
        backend: the module's backend ("auto", "native" or a fused backend name).
        dtype: the compute dtype (the autocast dtype under autocast).
        B, H, layers, directions: the call's batch, hidden size and stack.
        training: grad enabled and the input, hx or a parameter requires grad.
        recording_bptt: a ``diagnostics.record_bptt`` block is open (its hooks live in the fused recurrence).
        tune: autotuning (fused_rnn/autotune.py), when it is on: given the static policy's decision, returns the
            decision to run (a cached or new measurement, or the static one). Asked only where the policy is asked.
        record: append the decision to an open ``record_paths`` block (``fused_rnn.explain`` passes False: it
            reports a call without making it).
        traced: whether torch.compile / torch.export is tracing the call (None: ask ``tracing()``; explain passes
            its ``compiled`` argument).
        T: the call's number of time steps (policy rule 7: short CPU calls run native); None = not known (long).
        memo_key: the key under which the decision is remembered for the next eager CPU call (RNN._memo_key makes
            it, and RNN.forward looks it up before calling here); None = not remembered.
    Raises:
        RuntimeError for backend "native" inside record_bptt; the errors of ``_resolve_name`` for unusable backends.

    Under torch.compile / torch.export `auto` never asks the policy: it returns the fused backend at once, so no
    comparison on B becomes a guard (a new batch size does not recompile) and T stays dynamic.
    """
    if memo_key is not None and (device.type != "cpu" or traced is not False or recording_bptt or tune is not None):
        memo_key = None  # (only eager CPU calls without autotuning or record_bptt are remembered)
    name, forced_tier, auto, _ = _resolve_name(backend, device.type)
    if name == NATIVE or not auto:
        by = f"backend={backend!r} (the module's argument)" if backend != "auto" else \
            f"FUSED_RNN_BACKEND={os.environ.get('FUSED_RNN_BACKEND', '')} (the environment replaces auto)"
    if name == NATIVE:
        if recording_bptt:
            raise RuntimeError(
                "fused_rnn: backend='native' runs PyTorch's own RNN kernel, which has no per-step hook: "
                "diagnostics.record_bptt records only the fused backends. Use backend='auto' (fused inside "
                "record_bptt) or name a fused backend, e.g. backend='cpu' or 'cuda'")
        d = policy.Decision(NATIVE, "", "forced", f"forced by {by}: PyTorch's own RNN kernel, what torch.nn.RNN "
                            "runs")
    elif not auto:
        d = policy.Decision(name, "", "forced", f"forced by {by}"
                            + (f"; {_TIER_ENV[name]}={forced_tier} forces the tier" if forced_tier else ""))
    elif tracing() if traced is None else traced:
        return policy.Decision(name, "", "compile",
                               "under torch.compile / torch.export auto keeps the fused opaque ops (native "
                               "decomposes into per-step ops and recompiles for every sequence length)")
    elif recording_bptt:
        d = policy.Decision(name, "", "diagnostics", "inside diagnostics.record_bptt auto stays fused "
                            "(the recorder hooks the fused recurrence)")
    elif forced_tier:
        d = policy.Decision(name, forced_tier, "forced-tier", f"{_TIER_ENV[name]}={forced_tier} forces the tier")
    else:
        d = _policy_decision(name, device, dtype, B, H, layers, directions, training, T)
        if tune is not None:
            d = tune(d)
    if memo_key is not None:
        if len(_CPU_MEMO) >= _CPU_MEMO_SIZE:
            _CPU_MEMO.clear()
        _CPU_MEMO[memo_key] = d
    if record and _PATH_LOG is not None:
        _PATH_LOG.append(d)
    return d


# choose_path's memo of eager CPU decisions (no autotuning, no record_bptt), filled under the key fused_rnn.RNN's
# _memo_key makes and RNN.forward looks up itself (fused_rnn/modules.py says why, with the figures): the decision by
# everything it reads, and the identities of the functions that make it. clear_caches() forgets it together with
# the policy's cache.
_CPU_MEMO: dict = {}
_CPU_MEMO_SIZE = 4096


def clear_caches() -> None:
    """Forget every cached path decision: the policy's cache and choose_path's memo (tests that change the
    policy's tables or this process's facts)."""
    _CPU_MEMO.clear()
    _DECIDE_LRU.cache_clear()  # (the lru_cache itself, also while a test has monkeypatched the name)


_is_exporting = getattr(torch.compiler, "is_exporting", None) or (lambda: False)


def tracing() -> bool:
    """True while torch.compile (Dynamo) or torch.export traces (``is_exporting`` where this torch has it)."""
    return torch.compiler.is_compiling() or bool(_is_exporting())


def _policy_decision(fused: str, device: torch.device, dtype: torch.dtype, B: int, H: int, layers: int,
                     directions: int, training: bool, T: int | None = None):
    """Gather this process's facts and ask the (cached) pure policy."""
    if device.type == "cpu":
        # T matters only below rule 7's floor: every longer T shares one cache entry
        t = None if T is None or T >= policy.short_sequence_floor(H, training) else int(T)
        return _decide_cached("cpu", dtype, B, H, layers, directions, training, fused, policy.cpu_isa(),
                              torch.get_num_threads(), None, False, False, t, policy.cpu_core())
    if device.type == "cuda":
        from ..precision import allow_tf32

        return _decide_cached("cuda", dtype, B, H, layers, directions, training, fused, "", 0,
                              _capability(device.index), allow_tf32(), cudnn_rnn_tf32())
    return _decide_cached(device.type, dtype, B, H, layers, directions, training, fused, "", 0, None, False, False)


@functools.lru_cache(maxsize=4096)
def _decide_cached(device_type: str, dtype: torch.dtype, B: int, H: int, layers: int, directions: int,
                   training: bool, fused: str, isa: str, threads: int, capability: tuple[int, int] | None,
                   fused_tf32: bool, cudnn_tf32: bool, T: int | None = None, core: str = ""):
    return policy.decide(device_type, dtype, B, H, layers, directions, training, fused_backend=fused, isa=isa,
                         threads=threads, capability=capability, verified_capabilities=GPU_VERIFIED_CAPABILITY,
                         fused_tf32=fused_tf32, cudnn_tf32=cudnn_tf32, T=T, core=core)


_DECIDE_LRU = _decide_cached


@functools.lru_cache(maxsize=16)
def _capability(index: int | None) -> tuple[int, int] | None:
    try:
        return tuple(torch.cuda.get_device_capability(index))
    except Exception:  # no driver
        return None


def cudnn_rnn_tf32() -> bool:
    """True when cuDNN may run fp32 RNNs as TF32 (torch.backends.cudnn.allow_tf32, or the newer per-op
    ``torch.backends.cudnn.rnn.fp32_precision`` on torch versions that have it). Never raises."""
    cudnn = torch.backends.cudnn
    for getter in (lambda: cudnn.rnn.fp32_precision, lambda: cudnn.fp32_precision,
                   lambda: torch.backends.fp32_precision):
        try:
            p = getter()
        except Exception:
            continue
        if p == "tf32":
            return True
        if p == "ieee":
            return False
    try:
        return bool(cudnn.allow_tf32)
    except Exception:
        return True  # torch's default
