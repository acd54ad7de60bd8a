"""The C++ CPU backend: ``fused_rnn::elman_fwd`` / ``elman_bwd`` registered for the CPU dispatch key (csrc/cpu/).

fp32 and fp64 natively; fp16 and bf16 are upcast inside the op (same numerics contract as the reference).
Inside the op (csrc/cpu/elman_cpu.cpp): our own register-blocked loops, each batch row run through all T steps
with no per-step synchronisation (generic and AVX2+FMA builds, chosen by cpuid at run time), or, for B >= 32 and
H >= 384, one BLAS GEMM per step. Test/benchmark hooks: ``torch.ops.fused_rnn.cpu_isa("generic" | "avx2" | "auto")``
and ``torch.ops.fused_rnn.cpu_blas_min_batch(n)`` (n > 0 forces BLAS for B >= n, 0 restores the default).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _ext

NAME = "cpu"
TIERS: tuple[str, ...] = ("",)


def available() -> tuple[bool, str]:
    if not _ext.LOADED:
        return False, f"the C++ extension fused_rnn._C is not built or failed to load ({_ext.load_error()})"
    if not _ext.has_kernel("CPU"):
        return False, "the C++ extension has no CPU kernel for fused_rnn::elman_fwd/elman_bwd"
    return True, ""


def supports_device(device: torch.device) -> bool:
    return device.type == "cpu"


def pick_tier(H: int, B: int, dtype: torch.dtype, device: torch.device) -> str:
    return ""


def forward(P: Tensor, h0: Tensor, w_hh: Tensor, lengths: Tensor | None, reverse: bool, nonlinearity: str,
            tier: str = "", allow_tf32: bool = False) -> tuple[Tensor, Tensor]:
    """P [T,B,H], h0 [B,H], w_hh [H,H], lengths [B] | None -> (Y [T,B,H], h_n [B,H]); see reference.forward."""
    return torch.ops.fused_rnn.elman_fwd(P, h0, w_hh, lengths, reverse, nonlinearity, tier, allow_tf32)


def backward(dY: Tensor, dh_n: Tensor, Y: Tensor, w_hh: Tensor, lengths: Tensor | None, reverse: bool,
             nonlinearity: str, tier: str = "", allow_tf32: bool = False) -> tuple[Tensor, Tensor]:
    """dY [T,B,H], dh_n [B,H], Y [T,B,H], w_hh [H,H] -> (dA [T,B,H], dh0 [B,H]); see reference.backward."""
    return torch.ops.fused_rnn.elman_bwd(dY, dh_n, Y, w_hh, lengths, reverse, nonlinearity, tier, allow_tf32)
