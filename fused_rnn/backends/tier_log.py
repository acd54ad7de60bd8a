"""Which GPU tier really ran (issue #26): a record of every CUDA and Triton recurrence launch while it is on.

A forced CUDA tier that refuses a shape (shared memory, co-residency, architecture) falls back to ``fallback`` inside
the op, and a Triton tier that does not fit runs ``per_step``; results stay correct, so a test that only compares
numbers cannot tell a tier from its fallback. ``record()`` can::

    from fused_rnn.backends import tier_log

    with tier_log.record() as runs:
        y, h_n = rnn(x)
    assert {r.ran for r in runs} == {"cluster"}, runs

The CUDA entries come from the op itself (csrc/cuda/dispatch_log.h: the C++ dispatcher appends one per call, with
the reason a tier refused and what it launched -- cluster size, batch tile, waves, GEMM kind); the Triton entries
from its host launcher. Off by default: then the CUDA op pays one relaxed atomic load per call and Triton a flag
check. Under torch.compile the CUDA entries are recorded when the compiled graph runs the op; Triton's launcher
runs at trace time, so compiled Triton calls are not recorded. Under CUDA-graph capture the entries are made while
capturing (replays do not dispatch again).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .. import _ext


@dataclass(frozen=True)
class TierRun:
    """One recurrence launch: ``ran`` is the tier that executed; ``why`` says why it differs from ``requested``."""

    backend: str  # "cuda" | "triton"
    op: str  # "fwd" | "bwd"
    requested: str  # the tier the call asked for ("" = the op's own choice)
    ran: str  # the tier that executed
    why: str  # why `ran` is not `requested` ("" when it ran as asked)
    detail: str  # what was launched (grid, batch tile, cluster plan, GEMM kind)
    shape: str  # "T=.. B=.. H=.. dtype"


_lock = threading.Lock()
_depth = 0
_triton_runs: list[TierRun] = []


def _cuda_log_available() -> bool:
    return _ext.LOADED and _ext.built_with_cuda() and hasattr(torch.ops.fused_rnn, "cuda_tier_log")


def _parse_cuda(entry: str) -> TierRun:
    op, requested, ran, why, detail, shape = (entry.split("\t") + [""] * 6)[:6]
    return TierRun("cuda", op, requested, ran, why, detail, shape)


def triton_active() -> bool:
    """Whether a record() is open (the Triton launcher checks this before noting a launch)."""
    return _depth > 0


def note_triton(op: str, requested: str, ran: str, why: str, detail: str, shape: str) -> None:
    """Called by the Triton host launcher for each launch while a record() is open."""
    with _lock:
        _triton_runs.append(TierRun("triton", op, requested, ran, why, detail, shape))


@contextlib.contextmanager
def record() -> Iterator[list[TierRun]]:
    """Record every CUDA/Triton recurrence launch inside the block; the list is filled when the block exits.

    Nesting is allowed, also across threads: each record sees the launches made while it was open (by any thread);
    the log is switched off and emptied when the last open record closes.
    """
    global _depth
    runs: list[TierRun] = []
    cuda = _cuda_log_available()
    with _lock:
        if _depth == 0 and cuda:
            torch.ops.fused_rnn.cuda_tier_log_clear()
            torch.ops.fused_rnn.cuda_tier_log_enable(True)
        _depth += 1
        t_start = len(_triton_runs)
        c_start = int(torch.ops.fused_rnn.cuda_tier_log_size()) if cuda else 0
    try:
        yield runs
    finally:
        with _lock:
            if cuda:
                runs.extend(_parse_cuda(e) for e in torch.ops.fused_rnn.cuda_tier_log(c_start))
            runs.extend(_triton_runs[t_start:])
            _depth -= 1
            if _depth == 0:
                _triton_runs.clear()
                if cuda:
                    torch.ops.fused_rnn.cuda_tier_log_enable(False)
                    torch.ops.fused_rnn.cuda_tier_log_clear()


def ran_tiers(runs: list[TierRun], backend: str | None = None) -> set[str]:
    """The set of tiers that executed in ``runs`` (of ``backend`` only, when given)."""
    return {r.ran for r in runs if backend is None or r.backend == backend}
