"""The fused layer's half-precision GEMMs on the CPU, run in fp32 where this machine kind's fp32 GEMM is the faster.

The fused stack's own GEMMs -- the input projection P = x W_ihᵀ + b, its gradients dx = dP W_ih, dW_ih = Σ dPᵀ x,
db = Σ dP, and dW_hh = Σ_t dA_tᵀ S_t (recurrence.grad_w_hh) -- are torch GEMMs in the storage dtype, as nn.RNN's.
On a CPU whose bf16 GEMM is slower than its fp32 one they run here instead: the operands widened to fp32 in chunks
of time steps (exact: a bf16 or fp16 value is an fp32 value), one fp32 GEMM per chunk, the result rounded once to
the storage dtype -- what a half GEMM with fp32 accumulation computes, up to the summation order. When: policy rule 8
(``policy.gemm_in_fp32``: the machine kind's grid run measured fp32 ≥ 1.25× bf16) and I, H ≥ 512.

Measured on the 2-core Intel Emerald Rapids VM (AVX512-BF16, AMX hidden; 2 threads, torch 2.14.1, 2026-12-07), torch
bf16 / this route, ms, x [K, I], W [H, I]: K7040 I=H=1024 linear 77-117 / 45 (×1.7-2.6), dW 79-97 / 45 (×1.8-2.1);
K30000 I=H=512 ×1.6 / ×2.3; K8000 I=H=768 ×1.6 / ×1.8; but I=H=256: ×0.8-1.8 by K, I=H=64: ×0.9-1.3 (there the
conversions cost what the GEMM gains: hence the 512 floor). Chunks of ~16 MB of fp32 temporaries (2048 rows at
I=H=1024): unchunked, the widened copy of a long x went to memory and cost ×0.2-0.4 of the gain.

``FUSED_RNN_HALF_GEMM`` (read at each call): "auto" (default, the rule), "fp32" (always, any size: tests) or
"storage" (never: the storage-dtype GEMMs, as before). Never under torch.compile / torch.jit tracing (traced graphs
keep the plain ops) and never on other devices.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from ._env import getenv

MIN_DIM = 512  # I and H at least this (see the module docstring)
_CHUNK_FLOATS = 1 << 22  # fp32 elements of widened operands per chunk (16 MB)
_HALF = (torch.bfloat16, torch.float16)


def _mode() -> str:
    mode = getenv("FUSED_RNN_HALF_GEMM", "auto") or "auto"
    if mode not in ("auto", "fp32", "storage"):
        raise ValueError(f"FUSED_RNN_HALF_GEMM must be 'auto', 'fp32' or 'storage', got {mode!r}")
    return mode


@functools.lru_cache(maxsize=16)
def _machine_says_fp32(dtype: torch.dtype, threads: int) -> bool:
    from . import policy

    dkey = {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    return policy.gemm_in_fp32(dkey, isa=policy.cpu_isa(), threads=threads, core=policy.cpu_core())


def use_fp32(t: Tensor, I: int, H: int) -> bool:  # noqa: E741 (DESIGN.md's shape letters)
    """Whether the fused layer's GEMMs on ``t``'s device and dtype, input size I, hidden size H, run in fp32 here."""
    return use_fp32_for(t.device.type, t.dtype, I, H)


def use_fp32_for(device_type: str, dtype: torch.dtype, I: int, H: int) -> bool:  # noqa: E741
    """``use_fp32`` from the device type and dtype alone (fused_rnn.explain asks before any tensor exists)."""
    if device_type != "cpu" or dtype not in _HALF:
        return False
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    mode = _mode()
    if mode != "auto":
        return mode == "fp32"
    return min(I, H) >= MIN_DIM and _machine_says_fp32(dtype, torch.get_num_threads())


def _steps(B: int, n: int) -> int:
    """Time steps per chunk: ~_CHUNK_FLOATS fp32 elements over rows of n (I + H) values."""
    return max(1, _CHUNK_FLOATS // max(1, n) // max(1, B))


def _wide(x: Tensor) -> Tensor:
    """x [n, B, k] (any strides, half) -> [n·B, k] fp32, contiguous."""
    out = torch.empty(x.shape, dtype=torch.float32)
    out.copy_(x)
    return out.view(-1, x.shape[-1])


class _ProjectionF32(torch.autograd.Function):
    """(x [T, B, I], w [H, I], bias [H] | None) -> P [T, B, H] in x's dtype, = F.linear(x, w, bias) with fp32 GEMMs."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, bias: Tensor | None) -> Tensor:
        T, B, I = x.shape  # noqa: E741
        H = w.shape[0]
        P = torch.empty(T, B, H, dtype=x.dtype)
        with torch.autocast("cpu", enabled=False):
            wt = w.float().t()  # [I, H]
            b = bias.float() if bias is not None else None
            n = _steps(B, I + H)
            for t0 in range(0, T, n):
                xc = _wide(x[t0:t0 + n])
                out = torch.addmm(b, xc, wt) if b is not None else xc.mm(wt)
                P[t0:t0 + n].view(-1, H).copy_(out)
        ctx.save_for_backward(x, w)
        ctx.has_bias = bias is not None
        return P

    @staticmethod
    def backward(ctx, dP: Tensor):
        """dP [T, B, H] -> (dx [T, B, I], dw [H, I], db [H]), each only when needed; fp32 sums rounded once."""
        x, w = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        need_b = need_b and ctx.has_bias
        T, B, I = x.shape  # noqa: E741
        H = w.shape[0]
        dx = torch.empty(T, B, I, dtype=x.dtype) if need_x else None
        dw = torch.zeros(H, I) if need_w else None
        db = torch.zeros(H) if need_b else None
        with torch.autocast("cpu", enabled=False):
            w32 = w.float() if need_x else None
            n = _steps(B, I + H)
            for t0 in range(0, T, n):
                g = _wide(dP[t0:t0 + n])  # [n·B, H]
                if need_x:
                    dx[t0:t0 + n].view(-1, I).copy_(g.mm(w32))
                if need_w:
                    dw.addmm_(g.t(), _wide(x[t0:t0 + n]))
                if need_b:
                    db += g.sum(0)
        return (dx, None if dw is None else dw.to(w.dtype), None if db is None else db.to(w.dtype))


def projection_fp32(x: Tensor, w: Tensor, bias: Tensor | None) -> Tensor:
    """x [T, B, I], w [H, I], bias [H] | None (half, CPU) -> P [T, B, H] = x wᵀ + bias, fp32 GEMMs, differentiable."""
    return _ProjectionF32.apply(x, w, bias)


def accumulate_tn(out: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """out [H, K] fp32 += Σ_t a_tᵀ b_t for a [n, B, H], b [n, B, K] (half, any strides), in chunks of steps."""
    n, B, H = a.shape
    step = _steps(B, H + b.shape[-1])
    for t0 in range(0, n, step):
        out.addmm_(_wide(a[t0:t0 + step]).t(), _wide(b[t0:t0 + step]))
    return out
