"""Opt-in autotuning for `auto`, like ``torch.backends.cudnn.benchmark``: measure, once per shape key, which verified
path is fastest for this process's calls, and keep the winner.

Off by default. ``fused_rnn.set_autotune(True)`` (or ``False``; ``None`` returns to the environment) or the
environment variable ``FUSED_RNN_AUTOTUNE=1`` switches it on; ``autotune_enabled()`` says whether it is on. Off, it
changes nothing: ``select.choose_path`` is called without a tuner, exactly as before this module existed.

**What is measured.** On the first call of a new key (below) whose path the static policy decides (fused_rnn/
policy.py) -- not a forced backend or tier, not torch.compile / torch.export (the module never asks the policy
while tracing), not inside ``diagnostics.record_bptt`` -- the *verified candidates* are timed on the call's own
input, in the call's own mode: forward only, or forward + backward (gradients of every parameter, and of the input
and hx where they require grad). The candidates:
  - ``native`` (PyTorch's RNN op), except on CUDA fp32 where cuDNN's TF32 setting differs from fused_rnn's (the two
    would compute at different precisions: policy rule 5);
  - the fused path `auto` would run: on the CPU the C++ ``cpu`` backend (its correctness is tested in CI on every
    CPU kind, so it is a candidate even where the policy has no table); on CUDA the ``cuda`` backend with a tier on
    ``select.GPU_VERIFIED``, only on a compute capability on ``GPU_VERIFIED_CAPABILITY`` and never for fp64 -- a
    tier that has not passed on that GPU is never timed. The Python ``reference`` loop is never a candidate.
With one candidate there is nothing to time and the static decision stands.

**Procedure** (``_measure``): one warm-up call per candidate; then interleaved rounds (the order rotated each round)
of ``calls`` calls per sample, ``calls`` chosen so a sample lasts ≥ SAMPLE_S; at least MIN_ROUNDS rounds (1 when
a round takes over LONG_S), until BUDGET_S has passed or MAX_ROUNDS. The winner is the lowest median;
the static policy's choice is kept unless another candidate's median is ≥ SWITCH faster (noise on a loaded machine
should not flip a measured policy). The winner is cached for the life of the process (``clear_cache()`` forgets).

**No side effects.** The measurement runs on a *shadow* of the module: the same options, its parameters as detached
aliases (same storage, ``requires_grad`` kept, no copy), the input and hx detached; backward is
``torch.autograd.grad`` with respect to those aliases. So the parameters' ``.grad``, their tensor hooks, module
hooks, the caller's autograd graph and DDP's reducer hooks see nothing. It runs under ``torch.random.fork_rng``
(the CPU generator and the input's CUDA device), so dropout's random stream after a tuned call is what it would have
been without tuning. It is skipped -- the cached choice if any, else the static policy, runs -- where it cannot be
side-effect free or cannot time: CUDA-graph capture, a ``torch.func`` transform, tensor-subclass inputs (fake,
functional, DTensor), a module with submodules or parametrizations, active saved-tensor hooks (activation
checkpointing / offloading would see the measurement's tensors), and inside another measurement.

**Key** (``TuneKey``): device, compute dtype, B, H, layers, directions, mode, intra-op threads, T bucketed to the next
power of two (the issue's key), plus:
  - I (input size), nonlinearity, bias, batch_first: constants of a module, so they never cost one module a second
    measurement, and each changes the work of one path and not the other by a shape-dependent amount (the input
    GEMM's share of the call; tanh vs relu in each path's step; the fused path's layout copies for batch_first);
  - the input form (padded, padded with ``lengths=``, PackedSequence): native packs and unpacks for ``lengths=``, the
    fused path pads and repacks a PackedSequence -- a cost on one side only;
  - on CUDA the two TF32 settings: they decide whether native is a candidate at all.
Not in the key: the values in ``lengths`` (measured with the first call's), dropout (the same cost on both paths).

**Concurrency.** The cache is a dict guarded by a lock: the first caller of a key inserts a pending entry under the
lock and measures outside it; callers of the same key wait for that entry's event (one measurement per key);
callers of other keys wait for the process-wide measurement lock, so two measurements never disturb each other's
timings. A measurement never calls into the tuner (its calls name their path), so no thread waits on itself; the
entry's event is set in a ``finally``, so an error in a measurement (it is reported once as a warning, and the static
policy stands for that key) never leaves waiters hanging.

**Cost.** The first call of each key pays the measurement: measured on a 2-core AMD EPYC (Zen 5, shared, load 2-8),
torch 2.14.1, 2026-12-01 -- see README.md ("What does auto do?") for the figures. Paths differ by rounding: the fused
and native paths are not bitwise equal (each equals its own reference), so turning autotuning on can change results
in the last bits, and two processes (e.g. DDP ranks) may pick different paths for the same shape.
"""

from __future__ import annotations

import math
import os
import threading
import time
import warnings
import weakref
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from . import policy
from ._env import getenv

ENV = "FUSED_RNN_AUTOTUNE"

SAMPLE_S = 1e-3  # a sample lasts at least this long (many calls per sample for short calls)
MAX_CALLS = 64  # calls per sample at most
MIN_ROUNDS, MAX_ROUNDS = 3, 9
BUDGET_S = 0.1  # after MIN_ROUNDS, stop once this much time has passed
LONG_S = 1.0  # a first round longer than this is enough (a measurement of 1 + 1 calls per candidate)
SWITCH = 1.05  # another candidate replaces the static choice only when its median is >= 5% faster

_SETTING: bool | None = None


def set_autotune(enabled: bool | None) -> None:
    """Switch autotuning on (True) or off (False) for this process; None follows ``FUSED_RNN_AUTOTUNE`` again.

    Switching it off keeps the measurements already made (``clear_cache()`` forgets them) but stops using them.
    """
    global _SETTING
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"fused_rnn.set_autotune expects True, False or None, got {enabled!r}")
    _SETTING = enabled


def autotune_enabled() -> bool:
    """Whether autotuning is on: ``set_autotune``'s value, else ``FUSED_RNN_AUTOTUNE`` (1/on/true, 0/off/false).

    Raises ValueError for any other value of the variable (a typo must not silently leave it off).
    """
    if _SETTING is not None:
        return _SETTING
    v = getenv(ENV).strip().lower()
    if v in ("", "0", "off", "false"):
        return False
    if v in ("1", "on", "true"):
        return True
    raise ValueError(f"fused_rnn: {ENV}={os.environ[ENV]!r}; use 1 (on) or 0 (off)")


enabled = autotune_enabled


class TuneKey(NamedTuple):
    """What one measurement is valid for (see the module docstring for why each field is there)."""

    device: str  # "cpu", "cuda:0"
    dtype: str  # the compute dtype: "fp32", "bf16", ...
    B: int
    H: int
    I: int  # noqa: E741 (the input size, as nn.RNN's input_size)
    layers: int
    directions: int
    mode: str  # "fwd" | "fwd+bwd"
    threads: int
    T_bucket: int  # the smallest power of two >= T
    nonlinearity: str
    bias: bool
    batch_first: bool
    form: str  # "padded" | "lengths" | "packed"
    tf32: tuple[bool, bool]  # CUDA: (fused_rnn's fp32 matmul TF32, cuDNN's RNN TF32); (False, False) elsewhere

    def __str__(self) -> str:
        t = f"T {self.T_bucket // 2 + 1}..{self.T_bucket}" if self.T_bucket > 1 else "T 1"
        return (f"{self.device} {self.dtype} {self.mode} B={self.B} H={self.H} I={self.I} {t} "
                f"layers={self.layers} directions={self.directions} {self.nonlinearity} "
                f"threads={self.threads} {self.form}")


def t_bucket(T: int) -> int:
    """The smallest power of two >= T (T >= 1): 1, 2, 4, 8, ... so T 65..128 share one measurement."""
    return 1 << max(int(T) - 1, 0).bit_length()


def key_of(module: torch.nn.RNNBase, device: torch.device, dtype: torch.dtype, B: int, T: int, training: bool,
           form: str) -> TuneKey:
    """The key of one call (``device``/``dtype`` as the call computes: autocast's dtype under autocast)."""
    tf32 = (False, False)
    dev = device.type
    if device.type == "cuda":
        from .backends.select import cudnn_rnn_tf32
        from .precision import allow_tf32

        idx = device.index if device.index is not None else torch.cuda.current_device()
        dev = f"cuda:{idx}"
        tf32 = (allow_tf32(), cudnn_rnn_tf32())
    return TuneKey(dev, policy._dtype_key(dtype), int(B), module.hidden_size, module.input_size, module.num_layers,
                   2 if module.bidirectional else 1, "fwd+bwd" if training else "fwd", torch.get_num_threads(),
                   t_bucket(T), module.nonlinearity, bool(module.bias), bool(module.batch_first), form, tf32)


@dataclass
class _Entry:
    done: threading.Event = field(default_factory=threading.Event)
    decision: policy.Decision | None = None
    error: str = ""


_CACHE: dict[TuneKey, _Entry] = {}
_LOCK = threading.Lock()  # guards insertion into _CACHE (a finished entry is read without it)
_MEASURE_LOCK = threading.Lock()  # one measurement at a time in the process
_LOCAL = threading.local()  # .measuring: this thread is inside a measurement
_STATS = {"measurements": 0}


def _after_fork_in_child() -> None:
    """A child forked while another thread measured (e.g. a DataLoader worker) must not inherit a held lock or a
    pending entry no thread of its own will ever finish: fresh locks, finished entries only."""
    global _LOCK, _MEASURE_LOCK, _LOCAL
    _LOCK, _MEASURE_LOCK, _LOCAL = threading.Lock(), threading.Lock(), threading.local()
    for k in [k for k, e in _CACHE.items() if not e.done.is_set()]:
        del _CACHE[k]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def clear_cache() -> None:
    """Forget every measurement (the next call of each key measures again). Waiting callers are not affected."""
    with _LOCK:
        _CACHE.clear()


def cache_info() -> dict:
    """{'keys': finished keys, 'pending': keys being measured, 'measurements': measurements run in this process}."""
    with _LOCK:
        done = sum(e.done.is_set() for e in _CACHE.values())
        return {"keys": done, "pending": len(_CACHE) - done, "measurements": _STATS["measurements"]}


def lookup(key: TuneKey) -> tuple[policy.Decision | None, str]:
    """(the cached decision of a finished measurement or None, its error or "") -- never waits, never measures."""
    e = _CACHE.get(key)
    if e is None or not e.done.is_set():
        return None, ""
    return e.decision, e.error


def pending(key: TuneKey) -> bool:
    e = _CACHE.get(key)
    return e is not None and not e.done.is_set()


# ----------------------------------------------------------------------------------------------------------------
# Candidates and the reasons a measurement cannot run now.

def candidates(static: policy.Decision, device: torch.device, dtype: torch.dtype, B: int, H: int
               ) -> tuple[tuple[policy.Decision, ...], str]:
    """(the verified candidates of this call, why there is only one -- "" when there are two)."""
    from .backends import select

    native = policy.Decision(select.NATIVE, "", "autotune", "candidate")
    if device.type == "cpu":
        try:
            ok, why = select._available(select.backend_module("cpu"))
        except Exception as e:  # noqa: BLE001
            ok, why = False, f"{type(e).__name__}: {e}"
        if not ok:
            return (native,), f"native only: the C++ CPU backend is not available ({why})"
        return (native, policy.Decision("cpu", "", "autotune", "candidate")), ""
    if device.type != "cuda":
        return (native,), f"native only: no fused backend runs on {device.type} tensors"
    if not select._verified_device(device):
        cap = select._capability(device.index)
        sm = f"sm_{cap[0]}{cap[1]}" if cap else "this GPU"
        return (native,), f"native only: no fused tier is verified on {sm}"
    if dtype == torch.float64:
        return (native,), "native only: no fused tier has an fp64 kernel that beats cuDNN"
    fused = select._auto(device)
    if fused not in select.GPU_VERIFIED or not select.GPU_VERIFIED[fused]:
        return (native,), f"native only: auto's fused backend here is {fused!r}, not a verified CUDA backend"
    tier = static.tier if static.path == fused and static.tier else select.resolve("auto", device, H, B, dtype).tier
    if tier not in select.GPU_VERIFIED[fused]:
        return (native,), f"native only: tier {tier!r} has not passed on a GPU"
    f = policy.Decision(fused, tier, "autotune", "candidate")
    if static.rule == "precision":
        return (f,), f"{f.path}:{f.tier} only: {static.reason}"
    return (native, f), ""


def blocked(module: torch.nn.RNNBase, inputs: tuple[Tensor | None, ...], device: torch.device) -> str:
    """Why a measurement must not run now ("" when it may); see the module docstring."""
    if getattr(_LOCAL, "measuring", False):
        return "inside another autotuning measurement"
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return "CUDA-graph capture is in progress (nothing may be timed or synchronised)"
    try:
        if torch._C._functorch.peek_interpreter_stack() is not None:
            return "inside a torch.func transform"
    except Exception:  # noqa: BLE001 - a torch without the query
        pass
    for t in inputs:
        if t is not None and type(t) not in (Tensor, torch.nn.Parameter):
            return f"the input is a tensor subclass ({type(t).__name__})"
    if module._modules:
        return "the module has submodules or parametrizations (its parameters are not plain leaves)"
    try:
        if torch._C._autograd._top_saved_tensors_default_hooks(False) is not None:
            return "saved-tensor hooks are active (activation checkpointing or offloading would see the timing's " \
                   "tensors)"
    except Exception:  # noqa: BLE001
        pass
    return ""


# ----------------------------------------------------------------------------------------------------------------
# The tuner select.choose_path calls (through RNN._choose_path) when autotuning is on.

def tuned(module, call, amp_dtype: torch.dtype | None, dtype: torch.dtype, training: bool,
          static: policy.Decision) -> policy.Decision:
    """The decision to run for this call: a finished measurement of its key, a new one (first call of the key),
    or ``static`` (one candidate, or a measurement cannot run now)."""
    device = call.input.device
    form = "packed" if call.batch_sizes is not None else ("lengths" if call.lengths is not None else "padded")
    T = len(call.batch_sizes) if call.batch_sizes is not None else call.input.size(1 if module.batch_first else 0)
    key = key_of(module, device, dtype, call.B, T, training, form)
    e = _CACHE.get(key)
    if e is not None and e.done.is_set():
        return e.decision if e.decision is not None else static
    cands, _ = candidates(static, device, dtype, call.B, module.hidden_size)
    if len(cands) < 2:
        return static
    if blocked(module, (call.input, call.hx), device):
        return static
    with _LOCK:
        e = _CACHE.get(key)
        owner = e is None
        if owner:
            e = _CACHE[key] = _Entry()
    if not owner:
        e.done.wait()
        return e.decision if e.decision is not None else static
    decision = static
    try:
        with _MEASURE_LOCK:
            t0 = time.perf_counter()
            measured = _measure(module, call, amp_dtype, training, cands)
            elapsed = time.perf_counter() - t0
        decision = _decide(measured, static, key, elapsed)
    except Exception as err:  # noqa: BLE001 - reported once; the static policy stands for this key
        e.error = f"{type(err).__name__}: {err}"
        warnings.warn(f"fused_rnn: autotuning failed for {key}: {e.error}; the static policy's choice "
                      f"({static.path}) is used for this shape", RuntimeWarning, stacklevel=4)
    finally:
        e.decision = decision
        e.done.set()
    return decision


def _decide(measured: tuple[policy.Measured, ...], static: policy.Decision, key: TuneKey,
            elapsed_s: float | None = None) -> policy.Decision:
    """The winner: the lowest median, unless the static choice is within SWITCH of it."""
    best = min(measured, key=lambda m: m.median_ms)
    stat = next((m for m in measured if (m.path, m.tier) == (static.path, static.tier)), None)
    if stat is not None and stat.median_ms <= best.median_ms * SWITCH:
        best = stat
    ranked = tuple(sorted(measured, key=lambda m: m.median_ms))
    times = ", ".join(f"{m.name} {_ms(m.median_ms)}" for m in ranked)
    m0 = ranked[0]
    mode = "forward + backward" if key.mode == "fwd+bwd" else "forward"
    took = f"; measuring took {elapsed_s:.2g} s" if elapsed_s is not None else ""
    reason = (f"autotuned in this process: {times} per call ({mode}, median of {m0.rounds} interleaved rounds of "
              f"{m0.calls} call(s){took}); the static policy said "
              f"{static.path}{':' + static.tier if static.tier else ''} ({static.rule})")
    return policy.Decision(best.path, best.tier, "autotune", reason, static.evidence, static.source, ranked, static)


def _ms(ms: float) -> str:
    return f"{ms * 1e3:.3g} µs" if ms < 1 else f"{ms:.3g} ms"


def _shadow(module: torch.nn.RNNBase) -> torch.nn.RNNBase:
    """The module with its parameters replaced by detached aliases (same storage, same requires_grad): running it
    and differentiating with respect to the aliases leaves the module's own parameters, hooks and .grad untouched.
    The flat-weight list is set too, so RNNBase does not re-flatten (on CUDA that would copy the weights)."""
    s = object.__new__(type(module))
    d = dict(module.__dict__)
    params = {k: (None if p is None else p.detach().requires_grad_(p.requires_grad))
              for k, p in module._parameters.items()}
    d["_parameters"] = params
    flat = [params.get(n) for n in module._flat_weights_names]
    d["_flat_weights"] = flat
    d["_flat_weight_refs"] = [weakref.ref(w) if w is not None else None for w in flat]
    s.__dict__.update(d)
    return s


def _measure(module, call, amp_dtype: torch.dtype | None, training: bool,
             cands: tuple[policy.Decision, ...]) -> tuple[policy.Measured, ...]:
    """Time every candidate on the call's own input and mode (see the module docstring); no side effects."""
    _STATS["measurements"] += 1
    device = call.input.device
    shadow = _shadow(module)

    def leaf(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.detach().requires_grad_(t.requires_grad and training)

    x, hx = leaf(call.input), leaf(call.hx)
    c = call._replace(input=x, hx=hx)
    wrt = [t for t in (x, hx) if t is not None and t.requires_grad]
    wrt += [p for p in shadow._parameters.values() if p is not None and p.requires_grad]

    def once(d: policy.Decision) -> None:
        if training:
            out, h_n = shadow._run(d, c, amp_dtype)
            o = out.data if isinstance(out, PackedSequence) else out
            torch.autograd.grad((o, h_n), wrt, (torch.ones_like(o), torch.ones_like(h_n)), allow_unused=True)
        else:
            with torch.no_grad():
                shadow._run(d, c, amp_dtype)

    if device.type == "cuda":
        def sync() -> None:
            torch.cuda.synchronize(device)
    else:
        def sync() -> None:
            pass

    def sample(d: policy.Decision, n: int) -> float:
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            once(d)
        sync()
        return (time.perf_counter() - t0) / n

    rng_devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    _LOCAL.measuring = True
    try:
        with torch.random.fork_rng(devices=rng_devices, **({"device_type": "cuda"} if rng_devices else {})):
            with torch.enable_grad() if training else torch.no_grad():
                warm = [sample(d, 1) for d in cands]  # first calls: lazy initialisation lands here
                n = max(1, min(MAX_CALLS, math.ceil(SAMPLE_S / max(min(warm), 1e-9))))
                times: list[list[float]] = [[] for _ in cands]
                t0 = time.perf_counter()
                for r in range(MAX_ROUNDS):
                    for j in range(len(cands)):
                        i = (j + r) % len(cands)
                        times[i].append(sample(cands[i], n))
                    elapsed = time.perf_counter() - t0
                    # long calls (a round over LONG_S) stop after one round; others after MIN_ROUNDS and BUDGET_S
                    if (r + 1 >= MIN_ROUNDS or elapsed > LONG_S) and elapsed >= BUDGET_S:
                        break
    finally:
        _LOCAL.measuring = False
    out = []
    for d, ts in zip(cands, times):
        s = sorted(ts)
        out.append(policy.Measured(d.path, d.tier, _median(s) * 1e3, s[0] * 1e3, len(s), n))
    return tuple(out)


def _median(s: list[float]) -> float:
    k = len(s)
    return s[k // 2] if k % 2 else 0.5 * (s[k // 2 - 1] + s[k // 2])


__all__ = ["set_autotune", "autotune_enabled", "TuneKey", "t_bucket", "clear_cache", "cache_info"]
