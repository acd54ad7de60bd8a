"""The functional layer: one Elman layer, one direction.

The parallel part is one GEMM over all T·B rows (P = x W_ihᵀ + b_ih + b_hh; autograd differentiates it); the
sequential part is ``recurrence`` (the selected backend). Shapes: T time, B batch, I input, H hidden.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _lazy_compile
from . import gemm as _gemm
from .backends.select import resolve
from .precision import allow_tf32 as _allow_tf32
from .recurrence import check_unedited, recurrence


def input_projection(x: Tensor, w_ih: Tensor, b_ih: Tensor | None, b_hh: Tensor | None,
                     fp32_gemm: bool | None = None) -> Tensor:
    """x [T, B, I] -> P [T, B, H] = x W_ihᵀ + b_ih + b_hh, one GEMM with both biases folded in -- in fp32 for half
    dtypes where this CPU's fp32 GEMM is the faster (fused_rnn/gemm.py; ``fp32_gemm``: that choice, None = decide
    now with :func:`projection_in_fp32`)."""
    if b_ih is not None and b_hh is not None:
        bias = b_ih + b_hh
    else:
        bias = b_ih if b_ih is not None else b_hh
    if fp32_gemm if fp32_gemm is not None else projection_in_fp32(x, w_ih, bias):
        return _gemm.projection_fp32(x, w_ih, bias)
    return F.linear(x, w_ih, bias)


def projection_in_fp32(x: Tensor, w_ih: Tensor, bias: Tensor | None) -> bool:
    """Whether ``input_projection`` runs its GEMM in fp32 (fused_rnn/gemm.py): x [T, B, I], w_ih and the bias all of
    one half dtype on the CPU, autocast off, and ``gemm.use_fp32`` says so for (I, H)."""
    return (x.dim() == 3 and x.dtype == w_ih.dtype and (bias is None or bias.dtype == x.dtype)
            and not torch.is_autocast_enabled("cpu") and _gemm.use_fp32(x, w_ih.shape[1], w_ih.shape[0]))


class ProjectionRecompute:
    """``input_projection(x, w_ih, b_ih, b_hh)`` [T, B, H] once more, for ElmanRecurrence's backward after an in-place
    edit of its output. Created per layer-direction (references only); ``arm()``, called by the forward only when a
    graph is being recorded, keeps detached aliases (the same storage and version counters; a module .to() between
    forward and backward rebinds the Parameters' data, not these) with their versions, and a call raises autograd's
    in-place error if one of them has been edited since, else computes P in the autocast state it is given (the
    forward's: the same dtype and values). ``inputs``: the tensors themselves, for the double-backward guard's edges
    (x and w_ih are held by the projection's own backward anyway; none of them can reach the recurrence's graph
    node, so no reference cycle)."""

    __slots__ = ("_args", "_held", "_versions", "_fp32")

    def __init__(self, x: Tensor, w_ih: Tensor, b_ih: Tensor | None, b_hh: Tensor | None) -> None:
        self._args = (x, w_ih, b_ih, b_hh)
        self._held: tuple[Tensor | None, ...] = ()
        self._versions: tuple[int, ...] = ()
        self._fp32: bool | None = None

    @property
    def inputs(self) -> tuple[Tensor, ...]:
        """The tensors P is computed from (x, w_ih and the biases given)."""
        return tuple(t for t in self._args if t is not None)

    def arm(self) -> None:
        self._held = tuple(None if t is None else t.detach() for t in self._args)
        self._versions = tuple(0 if t is None else t._version for t in self._held)
        # the forward's GEMM choice (the same values again, whatever the thread count or setting by then)
        x, w_ih, b_ih, b_hh = self._held
        self._fp32 = projection_in_fp32(x, w_ih, b_ih if b_ih is not None else b_hh)

    def __call__(self, dev: str, amp: bool, amp_dtype: torch.dtype | None) -> Tensor:
        names = (f"{n} of a fused_rnn layer" for n in ("the input", "w_ih", "b_ih", "b_hh"))
        check_unedited(zip(self._held, self._versions, names))
        with torch.no_grad(), torch.autocast(dev, dtype=amp_dtype, enabled=amp):
            return input_projection(*self._held, fp32_gemm=self._fp32).contiguous()


def projection_recompute(x: Tensor, w_ih: Tensor, b_ih: Tensor | None, b_hh: Tensor | None
                         ) -> ProjectionRecompute | None:
    """A ProjectionRecompute in eager mode with grad enabled; None when no graph is recorded, and while
    torch.jit.trace / torch.compile / torch.export trace (a traced graph would record the object as a constant, and
    there the recurrence saves Y plainly anyway)."""
    if not torch.is_grad_enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return None
    return ProjectionRecompute(x, w_ih, b_ih, b_hh)


def elman_layer(
    x: Tensor,
    h0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None = None,
    b_hh: Tensor | None = None,
    lengths: Tensor | None = None,
    reverse: bool = False,
    nonlinearity: str = "tanh",
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """One layer, one direction of an Elman RNN, time-major.

    Args:
        x: [T, B, I] input.
        h0: [B, H] initial state.
        w_ih: [H, I], w_hh: [H, H], b_ih: [H] | None, b_hh: [H] | None -- nn.RNN's parameters.
        lengths: [B] int64 (any device; moved once to x's device), values in [1, T], or None.
        reverse: process each sequence from its last valid step back to step 0.
        nonlinearity: "tanh" or "relu".
        backend: "auto" | "reference" | "cpu" | "cuda" | "triton".
    Returns:
        Y: [T, B, H] (0 at padded steps), h_n: [B, H].
    """
    T, B, _ = x.shape
    H = w_hh.shape[0]
    if lengths is not None and lengths.device != x.device:
        lengths = lengths.to(x.device, non_blocking=True)
    P = input_projection(x, w_ih, b_ih, b_hh).contiguous()
    choice = resolve(backend, P.device, H, B, P.dtype)
    return recurrence(P, h0, w_hh, lengths, reverse, nonlinearity, choice.backend, choice.tier, _tf32_setting(),
                      consume_p=True, recompute_p=projection_recompute(x, w_ih, b_ih, b_hh))


@_lazy_compile.assume_constant_result
def _tf32_setting() -> bool:
    """precision.allow_tf32(), read at trace time under torch.compile (Dynamo cannot trace the dispatcher getters
    behind it): a compiled module keeps the TF32 setting it was traced with until ``torch._dynamo.reset()``."""
    return _allow_tf32()


def check_lengths(lengths: Tensor, T: int, B: int) -> Tensor:
    """Validate user-given lengths [B] (values in [1, T]) and return them as int64; reads them on the host once."""
    if not isinstance(lengths, Tensor):
        lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1 or lengths.shape[0] != B:
        raise ValueError(f"lengths must be a 1-D tensor of size batch ({B}), got shape {tuple(lengths.shape)}")
    if lengths.dtype.is_floating_point or lengths.dtype == torch.bool or lengths.is_complex():
        raise TypeError(f"lengths must hold integers, got {lengths.dtype}")
    lengths = lengths.to(torch.int64)
    if B > 0:
        if torch.compiler.is_compiling():
            # Reading the values on the host would break the graph (a data-dependent branch). On CPU the check
            # becomes an in-graph assert that raises a RuntimeError with this message. On CUDA it is skipped in
            # compiled graphs (a device-side assert would poison the CUDA context): the CUDA kernels clamp L_b into
            # [0, T] (csrc/cuda: clamp_len, length_of) and the reference masks with t < L_b, so out-of-range values
            # are memory-safe there (L_b > T acts as T, L_b < 1 as an empty sequence); the C++ CPU op re-checks.
            if lengths.device.type == "cpu":
                # (no T in the message: formatting a symbolic T would specialise the graph to one length)
                torch._assert_async(((lengths >= 1) & (lengths <= T)).all(),
                                    "fused_rnn: lengths must lie in [1, T], T = the input's sequence length")
            return lengths
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo < 1 or hi > T:
            raise ValueError(f"lengths must lie in [1, {T}] (the sequence length), got values in [{lo}, {hi}]")
    return lengths
