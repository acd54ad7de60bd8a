"""The Triton backend: ``fused_rnn_triton::elman_fwd`` / ``elman_bwd`` (kernels in ``triton_kernels.py``).

Layers, top to bottom (fla style): ``forward`` / ``backward`` (the backend contract) -> the torch.library op
(``torch.library.triton_op`` when the installed torch has it and the kernels are compiled; a plain
``torch.library.custom_op`` under ``TRITON_INTERPRET=1``, because torch 2.11's ``wrap_triton`` rejects interpreted
kernels) with a fake implementation -> host launchers ``elman_fwd`` / ``elman_bwd`` (allocate, pick blocks, build the
grid) -> the ``@triton.jit`` kernels.

Shapes: T time, B batch, H hidden. P, Y, dY, dA [T, B, H]; h0, h_n, dh_n, dh0 [B, H]; w_hh [H, H]; lengths [B] int64.

Tiers (``FUSED_RNN_TRITON_TIER`` forces one; ``select.py`` passes the string here):
  resident     one program per batch tile holds all of w_hh for all T (H <= RESIDENT_MAX_H[dtype]).
  cooperative  one launch; hidden tiles of a batch tile meet at a grid barrier every step. Only under triton's
               ``launch_cooperative_grid=True`` (triton >= 3.3 has it; 3.6 and 3.8 do) and never under the
               interpreter, which runs programs one after another (a barrier there would hang).
  per_step     one launch per step; any H, any GPU, and the interpreter.
Policy for a forced tier that cannot run: a tier that does not exist here (``cooperative`` under the interpreter or
on a triton without cooperative launches) raises a clear RuntimeError -- nothing is emulated; a tier that exists
but does not fit this shape (``resident`` above its H limit, ``cooperative`` when the grid exceeds one program per
SM) runs ``per_step`` instead, like the CUDA backend's fallback. ``effective_tier`` says which tier a call runs, and
``tier_log.record()`` records what each launch ran.

``cooperative`` and torch.compile (issue #21): its grid barrier spins on an atomic, which is safe only when every
program of the grid is resident, i.e. under triton's cooperative launch. Under torch.compile the launch is code that
Inductor generates, and nothing shows that ``launch_cooperative_grid`` reaches it (torch 2.11 unverified; 2.14 passes
backend options another way) -- a plain launch could deadlock while other work holds SMs (the other direction on a
second stream). So the tier refuses to be traced: forced, it raises a clear RuntimeError; ``pick_tier`` (``auto``,
``backend="triton"``) never picks it while compiling. Eager mode launches it through triton's own launcher, where
the option is passed.
"""

import contextlib
from typing import Optional

import torch
from torch import Tensor

from . import tier_log

NAME = "triton"
TIERS: tuple[str, ...] = ("resident", "cooperative", "per_step")

_IMPORT_ERROR: str | None = None
try:
    import triton

    from . import triton_kernels as K
except Exception as e:  # triton missing or broken: the backend reports itself unavailable
    triton = None  # type: ignore[assignment]
    K = None  # type: ignore[assignment]
    _IMPORT_ERROR = f"{type(e).__name__}: {e}"

# Largest H the resident tier takes, per storage dtype (fp32 split by dot precision), sized from `ptxas -v` of these
# kernels compiled for sm_90a by triton 3.8 (2026-11-27, this CPU machine, no GPU; the table is in
# tests/test_triton_compile.py): the largest power of two at which forward AND backward launch (triton's shared
# memory <= 227 KB) with no spill, except TF32 H=128 (4 B) and fp16/bf16 H=256 (150-200 B at 255 registers), kept
# because a one-launch loop with a small spill should still beat a launch per step -- to be confirmed by the GPU bench.
#   fp32 IEEE H=128: forward spills 5.0 KB;  TF32 / fp32 H=256 and fp64 H=256: 272-672 KB of shared memory.
RESIDENT_MAX_H: dict[str, int] = {
    "float32": 64,  # IEEE
    "float32_tf32": 128,
    "float16": 256,
    "bfloat16": 256,
    "float64": 128,
}
RESIDENT_BLOCK_B = 16  # rows of the batch per resident program: tl.dot needs M >= 16
COOP_BLOCK_B = 16


def resident_num_warps(block_h: int) -> int:
    """Warps of a resident program: 8 from BLOCK_H=64 (fp32 IEEE forward at H=64 spills 224 B with 4 warps)."""
    return 4 if block_h <= 32 else 8


def _interpreting() -> bool:
    return K is not None and K.INTERPRET


def _has_cooperative_launch() -> bool:
    """Whether the installed triton's NVIDIA backend has the ``launch_cooperative_grid`` launch option."""
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
    except Exception:
        return False
    return "launch_cooperative_grid" in getattr(CUDAOptions, "__dataclass_fields__", {})


def _tracing(x: Tensor | None = None) -> bool:
    """True while torch.compile / export traces: Dynamo, or AOTAutograd running a triton_op's Python implementation on
    fake tensors. A launch made then becomes generated code, not a call of triton's own launcher."""
    try:
        if torch.compiler.is_compiling():
            return True
    except Exception:  # pragma: no cover - a torch without torch.compiler.is_compiling
        pass
    if x is not None:
        try:
            from torch._subclasses.fake_tensor import is_fake

            return bool(is_fake(x))
        except Exception:  # pragma: no cover
            return False
    return False


COOPERATIVE_UNDER_COMPILE = (
    "fused_rnn: the triton tier 'cooperative' cannot run under torch.compile: its grid barrier is safe only under "
    "triton's cooperative launch (launch_cooperative_grid), and nothing shows that option reaching the launch "
    "torch.compile generates -- a plain launch can deadlock while other work holds SMs. Run it in eager mode, or "
    "pick another tier (FUSED_RNN_TRITON_TIER=resident or per_step)"
)


def available() -> tuple[bool, str]:
    """Usable here? On CPU only under TRITON_INTERPRET=1 (then CPU tensors only); else it needs a CUDA device."""
    if K is None:
        return False, f"triton could not be imported ({_IMPORT_ERROR})"
    if _interpreting():
        return True, ""
    if not torch.cuda.is_available():
        return False, "no CUDA device is available (set TRITON_INTERPRET=1 to run the kernels on CPU tensors)"
    return True, ""


def supports_device(device: torch.device) -> bool:
    """Interpreter: CPU tensors only; compiled: CUDA tensors only."""
    if K is None:
        return False
    return device.type == ("cpu" if _interpreting() else "cuda")


def cooperative_available() -> tuple[bool, str]:
    """Whether the cooperative tier exists here at all (independent of shape)."""
    if K is None:
        return False, f"triton could not be imported ({_IMPORT_ERROR})"
    if _interpreting():
        return False, "the interpreter runs programs one after another, so a grid barrier would never be reached"
    if not _has_cooperative_launch():
        return False, f"triton {triton.__version__} has no launch_cooperative_grid launch option"
    if not torch.cuda.is_available():
        return False, "no CUDA device is available"
    return True, ""


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def resident_max_h(dtype: torch.dtype, allow_tf32: bool = False) -> int:
    """H limit of the resident tier for this storage dtype (and fp32 dot precision)."""
    key = str(dtype).removeprefix("torch.")
    if dtype == torch.float32 and allow_tf32:
        key = "float32_tf32"
    return RESIDENT_MAX_H.get(key, 0)


def _coop_blocks(H: int, B: int, device: torch.device) -> tuple[int, int] | None:
    """(BLOCK_N, N_TILES) for a cooperative grid of at most one program per SM, or None when it does not fit."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    btiles = triton.cdiv(B, COOP_BLOCK_B)
    for bn in (16, 32, 64, 128):  # the most programs that fit: each streams the fewest w_hh columns per step
        nt = triton.cdiv(H, bn)
        if btiles * nt <= sms:
            return bn, nt
    return None


def effective_tier(tier: str, H: int, B: int, dtype: torch.dtype, device: torch.device,
                   allow_tf32: bool = False, tracing: bool | None = None) -> str:
    """The tier a call with this request and shape really runs (see the fallback policy in the module docstring).

    Raises RuntimeError for ``cooperative`` where it does not exist or while torch.compile traces (``tracing``: None
    = ask ``torch.compiler.is_compiling()``); ValueError for an unknown tier.
    """
    if tier == "":
        tier = pick_tier(H, B, dtype, device)
    if tier not in TIERS:
        raise ValueError(f"fused_rnn: unknown triton tier {tier!r}; choose one of {TIERS}")
    if tier == "resident" and H > resident_max_h(dtype, allow_tf32 and dtype == torch.float32):
        return "per_step"
    if tier == "cooperative":
        if _tracing() if tracing is None else tracing:
            raise RuntimeError(COOPERATIVE_UNDER_COMPILE)
        ok, why = cooperative_available()
        if not ok:
            raise RuntimeError(f"fused_rnn: the triton tier 'cooperative' is not available here: {why}")
        if _coop_blocks(H, B, device) is None:
            return "per_step"
    return tier


def pick_tier(H: int, B: int, dtype: torch.dtype, device: torch.device) -> str:
    """resident when w_hh fits one program (the fp32 limit is the IEEE one), else cooperative (never while
    torch.compile traces: see the module docstring), else per_step."""
    if H <= resident_max_h(dtype):
        return "resident"
    if (device.type == "cuda" and not _tracing() and cooperative_available()[0]
            and _coop_blocks(H, B, device) is not None):
        return "cooperative"
    return "per_step"


# ----------------------------------------------------------------------------------------------------------------------
# input checks (the Function already hands over contiguous tensors; direct callers get clear errors too)
# ----------------------------------------------------------------------------------------------------------------------

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check(x: Tensor, state: Tensor, w_hh: Tensor, lengths: Optional[Tensor], nonlinearity: str,  # noqa: UP045
           what: str) -> tuple[int, int, int]:
    """x [T, B, H], state [B, H], w_hh [H, H], lengths [B] | None -> (T, B, H); raises ValueError on a mismatch."""
    if x.dim() != 3:
        raise ValueError(f"fused_rnn.triton.{what}: expected a [T, B, H] tensor, got shape {tuple(x.shape)}")
    T, B, H = x.shape
    if x.dtype not in _DTYPES:
        raise ValueError(f"fused_rnn.triton.{what}: unsupported dtype {x.dtype}; use one of {_DTYPES}")
    if tuple(state.shape) != (B, H) or tuple(w_hh.shape) != (H, H):
        raise ValueError(f"fused_rnn.triton.{what}: shapes do not match: [T, B, H]={tuple(x.shape)}, "
                         f"state {tuple(state.shape)} (want [B, H]), w_hh {tuple(w_hh.shape)} (want [H, H])")
    if state.dtype != x.dtype or w_hh.dtype != x.dtype:
        raise ValueError(f"fused_rnn.triton.{what}: dtypes differ: {x.dtype}, {state.dtype}, {w_hh.dtype}")
    if state.device != x.device or w_hh.device != x.device:
        raise ValueError(f"fused_rnn.triton.{what}: tensors on different devices")
    if lengths is not None:
        if lengths.dtype != torch.int64 or tuple(lengths.shape) != (B,) or lengths.device != x.device:
            raise ValueError(f"fused_rnn.triton.{what}: lengths must be int64 [B]={B} on {x.device}, got "
                             f"{lengths.dtype} {tuple(lengths.shape)} on {lengths.device}")
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"fused_rnn.triton.{what}: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    if T < 1:
        raise ValueError(f"fused_rnn.triton.{what}: T must be >= 1")
    if not supports_device(x.device):
        raise RuntimeError(f"fused_rnn.triton.{what}: cannot run on {x.device.type} tensors here "
                           f"({'interpreter: CPU only' if _interpreting() else 'compiled: CUDA only'})")
    return T, B, H


def _dot_prec(dtype: torch.dtype, allow_tf32: bool) -> str:
    return "tf32" if (allow_tf32 and dtype == torch.float32) else "ieee"


def _launcher(kernel, use_wrap: bool):
    """The kernel itself, or torch's traceable wrapper of it inside a triton_op."""
    if use_wrap:
        from torch.library import wrap_triton

        return wrap_triton(kernel)
    return kernel


def _device_guard(x: Tensor):
    """Triton launches on the current CUDA device: make it x's (x on cuda:1 while cuda:0 is current)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _note(op: str, requested: str, ran: str, T: int, B: int, H: int, dtype: torch.dtype) -> None:
    """One tier_log entry for a launch (only while a record is open, never while tracing)."""
    why = "" if requested in ("", ran) else f"'{requested}' cannot take H={H}, B={B}, {dtype} here"
    tier_log.note_triton(op, requested, ran, why, "", f"T={T} B={B} H={H} {str(dtype).removeprefix('torch.')}")


def _step_blocks(B: int, H: int) -> tuple[int, int, int]:
    """(BLOCK_B, BLOCK_N, BLOCK_K) for the per-step tiles; every dim >= 16 for tl.dot."""
    bb = min(64, max(16, _next_pow2(B)))
    bn = min(64, max(16, _next_pow2(H)))
    return bb, bn, bn


# ----------------------------------------------------------------------------------------------------------------------
# host launchers
# ----------------------------------------------------------------------------------------------------------------------


def elman_fwd(P: Tensor, h0: Tensor, w_hh: Tensor, lengths: Optional[Tensor], reverse: bool,  # noqa: UP045
              nonlinearity: str, tier: str, allow_tf32: bool, use_wrap: bool = False) -> tuple[Tensor, Tensor]:
    """P [T, B, H], h0 [B, H], w_hh [H, H], lengths [B] | None -> (Y [T, B, H], h_n [B, H]); see reference.forward."""
    T, B, H = _check(P, h0, w_hh, lengths, nonlinearity, "elman_fwd")
    if B == 0 or H == 0:  # a zero-size grid is an invalid launch; nothing to compute
        return torch.zeros_like(P, memory_format=torch.contiguous_format), h0.clone(
            memory_format=torch.contiguous_format)
    requested = tier
    tracing = _tracing(P)
    tier = effective_tier(tier, H, B, P.dtype, P.device, allow_tf32, tracing)
    if not tracing and tier_log.triton_active():
        _note("fwd", requested, tier, T, B, H, P.dtype)
    with _device_guard(P):
        return _elman_fwd(P.contiguous(), h0.contiguous(), w_hh.contiguous(), lengths, reverse, nonlinearity, tier,
                          allow_tf32, use_wrap)


def _elman_fwd(P: Tensor, h0: Tensor, w_hh: Tensor, lengths: Optional[Tensor], reverse: bool,  # noqa: UP045
               nonlinearity: str, tier: str, allow_tf32: bool, use_wrap: bool,
               coop_blocks: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
    """elman_fwd for checked, contiguous, non-empty inputs and a resolved tier, on the current device.

    coop_blocks: (BLOCK_N, N_TILES) instead of ``_coop_blocks`` -- for the interpreter test with N_TILES=1 only.
    """
    T, B, H = P.shape
    # loop bounds as host ints for triton 3.6's interpreter (kernel docstrings); constant 0 when compiled
    t_host, h_host = (T, H) if K.INTERPRET else (0, 0)
    # co-residency is the driver's guarantee under a cooperative launch (never emulated: the interpreter runs it only
    # with one program per batch tile, see the coop kernels)
    coop = {} if K.INTERPRET else {"launch_cooperative_grid": True}
    Y = torch.empty_like(P)
    has_len = lengths is not None
    LEN = lengths if has_len else h0  # never read when HAS_LEN is False
    common = dict(HAS_LEN=has_len, NONLIN=K.NONLIN_TANH if nonlinearity == "tanh" else K.NONLIN_RELU,
                  DOT_PREC=_dot_prec(P.dtype, allow_tf32), INTERP=K.INTERPRET)
    if tier == "resident":
        h_n = torch.empty_like(h0)
        bh = max(16, _next_pow2(H))
        grid = (triton.cdiv(B, RESIDENT_BLOCK_B),)
        _launcher(K.elman_fwd_resident_kernel, use_wrap)[grid](
            P, h0, w_hh, LEN, Y, h_n, T, B, H, REVERSE=reverse, BLOCK_B=RESIDENT_BLOCK_B, BLOCK_H=bh, T_HOST=t_host,
            num_warps=resident_num_warps(bh), **common)
        return Y, h_n
    if tier == "cooperative":
        bn, nt = coop_blocks or _coop_blocks(H, B, P.device)
        hbuf = torch.empty((2, B, H), dtype=P.dtype, device=P.device)
        hbuf[0].copy_(h0)
        sync = torch.zeros(triton.cdiv(B, COOP_BLOCK_B), dtype=torch.int32, device=P.device)
        grid = (triton.cdiv(B, COOP_BLOCK_B) * nt,)
        _launcher(K.elman_fwd_coop_kernel, use_wrap)[grid](
            P, w_hh, LEN, hbuf, Y, sync, T, B, H, REVERSE=reverse, N_TILES=nt, BLOCK_B=COOP_BLOCK_B, BLOCK_N=bn,
            BLOCK_K=min(64, max(16, _next_pow2(H))), T_HOST=t_host, H_HOST=h_host, num_warps=4, **coop, **common)
        return Y, hbuf[T % 2].clone()
    # per_step: ping-pong state buffers, one launch per step
    bb, bn, bk = _step_blocks(B, H)
    grid = (triton.cdiv(B, bb), triton.cdiv(H, bn))
    cur, nxt = h0.clone(), torch.empty_like(h0)
    launch = _launcher(K.elman_fwd_step_kernel, use_wrap)
    for s in range(T):
        t = T - 1 - s if reverse else s
        launch[grid](P, w_hh, LEN, cur, nxt, Y, t, B, H, BLOCK_B=bb, BLOCK_N=bn, BLOCK_K=bk, H_HOST=h_host,
                     num_warps=4, **common)
        cur, nxt = nxt, cur
    return Y, cur


def elman_bwd(dY: Tensor, dh_n: Tensor, Y: Tensor, w_hh: Tensor, lengths: Optional[Tensor],  # noqa: UP045
              reverse: bool, nonlinearity: str, tier: str, allow_tf32: bool,
              use_wrap: bool = False) -> tuple[Tensor, Tensor]:
    """dY [T, B, H], dh_n [B, H], Y [T, B, H], w_hh [H, H] -> (dA [T, B, H], dh0 [B, H]); see reference.backward."""
    T, B, H = _check(Y, dh_n, w_hh, lengths, nonlinearity, "elman_bwd")
    if tuple(dY.shape) != (T, B, H) or dY.dtype != Y.dtype or dY.device != Y.device:
        raise ValueError(f"fused_rnn.triton.elman_bwd: dY {tuple(dY.shape)} {dY.dtype} must match Y "
                         f"{tuple(Y.shape)} {Y.dtype}")
    if B == 0 or H == 0:
        return torch.zeros_like(Y, memory_format=torch.contiguous_format), dh_n.clone(
            memory_format=torch.contiguous_format)
    requested = tier
    tracing = _tracing(Y)
    tier = effective_tier(tier, H, B, Y.dtype, Y.device, allow_tf32, tracing)
    if not tracing and tier_log.triton_active():
        _note("bwd", requested, tier, T, B, H, Y.dtype)
    with _device_guard(Y):
        return _elman_bwd(dY.contiguous(), dh_n.contiguous(), Y.contiguous(), w_hh.contiguous(), lengths, reverse,
                          nonlinearity, tier, allow_tf32, use_wrap)


def _elman_bwd(dY: Tensor, dh_n: Tensor, Y: Tensor, w_hh: Tensor, lengths: Optional[Tensor],  # noqa: UP045
               reverse: bool, nonlinearity: str, tier: str, allow_tf32: bool,
               use_wrap: bool, coop_blocks: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
    """elman_bwd for checked, contiguous, non-empty inputs and a resolved tier, on the current device.

    coop_blocks: as in ``_elman_fwd``.
    """
    T, B, H = Y.shape
    # loop bounds as host ints for triton 3.6's interpreter (kernel docstrings); constant 0 when compiled
    t_host, h_host = (T, H) if K.INTERPRET else (0, 0)
    # co-residency is the driver's guarantee under a cooperative launch (never emulated: the interpreter runs it only
    # with one program per batch tile, see the coop kernels)
    coop = {} if K.INTERPRET else {"launch_cooperative_grid": True}
    dA = torch.empty_like(Y)
    acc = torch.float64 if Y.dtype == torch.float64 else torch.float32
    has_len = lengths is not None
    LEN = lengths if has_len else dh_n
    common = dict(HAS_LEN=has_len, NONLIN=K.NONLIN_TANH if nonlinearity == "tanh" else K.NONLIN_RELU,
                  DOT_PREC=_dot_prec(Y.dtype, allow_tf32), INTERP=K.INTERPRET)
    if tier == "resident":
        dh0 = torch.empty_like(dh_n)
        bh = max(16, _next_pow2(H))
        grid = (triton.cdiv(B, RESIDENT_BLOCK_B),)
        _launcher(K.elman_bwd_resident_kernel, use_wrap)[grid](
            dY, dh_n, Y, w_hh, LEN, dA, dh0, T, B, H, REVERSE=reverse, BLOCK_B=RESIDENT_BLOCK_B, BLOCK_H=bh,
            T_HOST=t_host, num_warps=resident_num_warps(bh), **common)
        return dA, dh0
    if tier == "cooperative":
        bn, nt = coop_blocks or _coop_blocks(H, B, Y.device)
        cbuf = torch.empty((2, B, H), dtype=acc, device=Y.device)
        cbuf[0].copy_(dh_n)
        sync = torch.zeros(triton.cdiv(B, COOP_BLOCK_B), dtype=torch.int32, device=Y.device)
        grid = (triton.cdiv(B, COOP_BLOCK_B) * nt,)
        _launcher(K.elman_bwd_coop_kernel, use_wrap)[grid](
            dY, Y, w_hh, LEN, cbuf, dA, sync, T, B, H, REVERSE=reverse, N_TILES=nt, BLOCK_B=COOP_BLOCK_B,
            BLOCK_N=bn, BLOCK_K=min(64, max(16, _next_pow2(H))), T_HOST=t_host, H_HOST=h_host, num_warps=4, **coop,
            **common)
        return dA, cbuf[T % 2].to(Y.dtype)
    bb, bn, bk = _step_blocks(B, H)
    grid = (triton.cdiv(B, bb), triton.cdiv(H, bn))
    # the carried gradient stays in fp32 (fp64) between steps, in a scratch pair; copied so that dh_n, the caller's
    # tensor, is never written when the pair swaps
    cur = dh_n.to(acc, copy=True)
    nxt = torch.empty_like(cur)
    launch = _launcher(K.elman_bwd_step_kernel, use_wrap)
    for s in range(T):
        t = s if reverse else T - 1 - s
        launch[grid](dY, Y, w_hh, LEN, cur, nxt, dA, t, B, H, BLOCK_B=bb, BLOCK_N=bn, BLOCK_K=bk, H_HOST=h_host,
                     num_warps=4, **common)
        cur, nxt = nxt, cur
    return dA, cur.to(Y.dtype)


# ----------------------------------------------------------------------------------------------------------------------
# the torch.library ops
# ----------------------------------------------------------------------------------------------------------------------

OP_NAMESPACE = "fused_rnn_triton"
USES_TRITON_OP: bool = False


def _register_ops() -> None:
    global USES_TRITON_OP
    USES_TRITON_OP = hasattr(torch.library, "triton_op") and not _interpreting()
    wrap = USES_TRITON_OP

    def fwd_impl(P: Tensor, h0: Tensor, w_hh: Tensor, lengths: Optional[Tensor], reverse: bool,  # noqa: UP045
                 nonlinearity: str, tier: str, allow_tf32: bool) -> tuple[Tensor, Tensor]:
        return elman_fwd(P, h0, w_hh, lengths, reverse, nonlinearity, tier, allow_tf32, use_wrap=wrap)

    def bwd_impl(dY: Tensor, dh_n: Tensor, Y: Tensor, w_hh: Tensor, lengths: Optional[Tensor],  # noqa: UP045
                 reverse: bool, nonlinearity: str, tier: str, allow_tf32: bool) -> tuple[Tensor, Tensor]:
        return elman_bwd(dY, dh_n, Y, w_hh, lengths, reverse, nonlinearity, tier, allow_tf32, use_wrap=wrap)

    if USES_TRITON_OP:
        fwd = torch.library.triton_op(f"{OP_NAMESPACE}::elman_fwd", fwd_impl, mutates_args=())
        bwd = torch.library.triton_op(f"{OP_NAMESPACE}::elman_bwd", bwd_impl, mutates_args=())
    else:
        fwd = torch.library.custom_op(f"{OP_NAMESPACE}::elman_fwd", fwd_impl, mutates_args=())
        bwd = torch.library.custom_op(f"{OP_NAMESPACE}::elman_bwd", bwd_impl, mutates_args=())

    # The fake implementations run only while tracing (torch.compile, export): the place to refuse 'cooperative' for
    # both op kinds (module docstring).
    @fwd.register_fake
    def _fwd_fake(P, h0, w_hh, lengths, reverse, nonlinearity, tier, allow_tf32):
        if tier == "cooperative":
            raise RuntimeError(COOPERATIVE_UNDER_COMPILE)
        torch._check(P.dim() == 3, lambda: "fused_rnn_triton.elman_fwd: P must be [T, B, H]")
        return torch.empty_like(P, memory_format=torch.contiguous_format), torch.empty_like(
            h0, memory_format=torch.contiguous_format)

    @bwd.register_fake
    def _bwd_fake(dY, dh_n, Y, w_hh, lengths, reverse, nonlinearity, tier, allow_tf32):
        if tier == "cooperative":
            raise RuntimeError(COOPERATIVE_UNDER_COMPILE)
        torch._check(Y.dim() == 3, lambda: "fused_rnn_triton.elman_bwd: Y must be [T, B, H]")
        return torch.empty_like(Y, memory_format=torch.contiguous_format), torch.empty_like(
            dh_n, memory_format=torch.contiguous_format)


if K is not None:
    _register_ops()


# ----------------------------------------------------------------------------------------------------------------------
# the backend contract
# ----------------------------------------------------------------------------------------------------------------------


def forward(P: Tensor, h0: Tensor, w_hh: Tensor, lengths: Tensor | None, reverse: bool, nonlinearity: str,
            tier: str = "", allow_tf32: bool = False) -> tuple[Tensor, Tensor]:
    """P [T,B,H], h0 [B,H], w_hh [H,H], lengths [B] | None -> (Y [T,B,H], h_n [B,H]); see reference.forward."""
    ok, why = available()
    if not ok:
        raise RuntimeError(f"fused_rnn: backend 'triton' is not available here: {why}")
    return torch.ops.fused_rnn_triton.elman_fwd(P, h0, w_hh, lengths, reverse, nonlinearity, tier, allow_tf32)


def backward(dY: Tensor, dh_n: Tensor, Y: Tensor, w_hh: Tensor, lengths: Tensor | None, reverse: bool,
             nonlinearity: str, tier: str = "", allow_tf32: bool = False) -> tuple[Tensor, Tensor]:
    """dY [T,B,H], dh_n [B,H], Y [T,B,H], w_hh [H,H] -> (dA [T,B,H], dh0 [B,H]); see reference.backward."""
    ok, why = available()
    if not ok:
        raise RuntimeError(f"fused_rnn: backend 'triton' is not available here: {why}")
    return torch.ops.fused_rnn_triton.elman_bwd(dY, dh_n, Y, w_hh, lengths, reverse, nonlinearity, tier, allow_tf32)
