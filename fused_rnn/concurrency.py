"""The two directions of a bidirectional layer, run concurrently on two CUDA streams (issue #7).

Why: the fused CUDA tiers are latency-bound at small batch -- a ``cluster`` launch at B = 1 occupies one cluster of
≤ 16 CTAs on a 132-SM H100 for the whole sequence -- so the reverse direction, which depends only on the same layer
input, can run beside the forward one instead of after it. Expected gain (not yet measured on a GPU): up to 2× per
bidirectional layer where both grids fit on the device at once (cluster tier at small B); little or none where one
grid already spans every SM (the persistent tier sizes its grid to one CTA per SM: the second grid then shares SMs or
waits for them). Predictions per tier: csrc/cuda/NOTES_persistent.md.

How (plain PyTorch stream semantics, no change to the backend contract or the kernels):

    main = the caller's current stream; side = one extra stream per device, created once
    side.wait_stream(main)          fork: the layer input, hx and the (amp-cast) weights were produced on main
    with stream(side): reverse      the reverse direction's projection GEMM + recurrence, enqueued first
    forward on main                 the forward direction
    main.wait_stream(side)          join: everything after (cat, dropout, the next layer, the user) sees both
    y_rev.record_stream(main)       the caching allocator's rule for a tensor used on a stream it was not made on:
    x, hx, lengths.record_stream(side)   a block freed later is not reused until the recorded stream's work up to
                                    the free has run

The second record matters in backward: the reverse direction's autograd nodes keep the layer input and its hx slice
(made on main) and release them when their backward kernels -- on the side stream -- have been enqueued, maybe not yet
run; without the record, main could be handed that memory while those kernels still read it. Otherwise backward needs
nothing: autograd runs each node's backward on the stream its forward ran on and syncs the streams where gradients
cross (PyTorch's "stream semantics of backward passes"), so the two directions' BPTT kernels also run concurrently.
Under CUDA-graph capture the fork/join become graph edges (the side stream joins the
capture through the fork); record_stream is skipped there (a captured graph's memory lives in its private pool and is
not returned to the allocator while the graph exists).

No deadlock between the two directions' persistent grids: a cooperative launch starts none of its blocks until the
whole grid can be resident, so two cooperative grids never each hold part of the SMs while waiting at grid.sync() for
the rest -- the second simply starts when the first leaves room; a cluster is scheduled as a unit and its barrier
spans only that cluster. tests/test_concurrency.py runs both tiers concurrently on a busy GPU under a timeout.

Not used under torch.compile (Dynamo's stream support differs between torch versions; the compiled graph runs the
directions one after the other), on CPU tensors, or for unidirectional modules.

Selection: ``FUSED_RNN_CONCURRENT_DIRECTIONS`` = "1" forces it on for CUDA tensors, "0" off; unset or "auto" means
on only once a GPU report has shown it correct on the verified compute capabilities (``VERIFIED`` below, changed
together with a committed report under bench/results/, as select.GPU_VERIFIED is). Until then it is forced-only.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor

from ._env import getenv

ENV = "FUSED_RNN_CONCURRENT_DIRECTIONS"
# False until `make gpu-check` has run tests/test_concurrency.py's GPU tests green and the report is committed.
VERIFIED: bool = False

R = TypeVar("R")

_SIDE: dict[int, torch.cuda.Stream] = {}


def setting() -> str:
    """The environment's choice: "1" (on), "0" (off) or "auto"; raises ValueError for anything else."""
    v = getenv(ENV, "auto").strip().lower() or "auto"
    if v in ("1", "on", "true"):
        return "1"
    if v in ("0", "off", "false"):
        return "0"
    if v == "auto":
        return "auto"
    raise ValueError(f"fused_rnn: {ENV}={os.environ[ENV]!r}; use 1 (on), 0 (off) or auto")


def enabled(device: torch.device, num_directions: int) -> bool:
    """Whether the directions of a layer on ``device`` run on two streams (see the module docstring)."""
    if num_directions != 2 or device.type != "cuda" or torch.compiler.is_compiling():
        return False
    s = setting()
    if s == "0":
        return False
    if s == "1":
        return True
    from .backends.select import _verified_device

    return VERIFIED and _verified_device(device)


def side_stream(device: torch.device) -> torch.cuda.Stream:
    """The extra stream for ``device``, created on first use and kept (creating streams per call costs µs)."""
    idx = device.index if device.index is not None else torch.cuda.current_device()
    s = _SIDE.get(idx)
    if s is None:
        s = _SIDE[idx] = torch.cuda.Stream(device=idx)
    return s


def run_pair(device: torch.device, concurrent: bool, run_fwd: Callable[[], R], run_rev: Callable[[], R],
             shared: tuple[Tensor | None, ...] = ()) -> tuple[R, R]:
    """(run_fwd(), run_rev()), the reverse on the side stream when ``concurrent`` (fork, join and record_stream as
    in the module docstring). Each callable returns a tuple of tensors, e.g. (Y [T, B, H], h_n [B, H]); ``shared``
    holds the tensors made on the caller's stream that run_rev reads (layer input [T, B, I], hx, lengths [B])."""
    if not concurrent:
        return run_fwd(), run_rev()
    main = torch.cuda.current_stream(device)
    side = side_stream(device)
    side.wait_stream(main)
    _record_on(shared, side)
    with torch.cuda.stream(side):
        rev = run_rev()
    fwd = run_fwd()
    main.wait_stream(side)
    _record_on(rev, main)
    return fwd, rev


def _record_on(tensors, stream: torch.cuda.Stream) -> None:
    """Mark CUDA tensors as used on ``stream`` (the caching allocator's rule for cross-stream tensors; None and CPU
    tensors are passed over); skipped during graph capture (see the module docstring)."""
    if torch.cuda.is_current_stream_capturing():
        return
    for t in tensors:
        if isinstance(t, Tensor) and t.is_cuda:
            t.record_stream(stream)
