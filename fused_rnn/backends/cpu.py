"""The C++ CPU backend: ``fused_rnn::elman_fwd`` / ``elman_bwd`` registered for the CPU dispatch key (csrc/cpu/).

fp32 and fp64 natively; fp16 and bf16 are upcast inside the op (same numerics contract as the reference).
Inside the op (csrc/cpu/elman_cpu.cpp): our own loops over W_hh packed in panels, with one register-blocked kernel
set per instruction set (generic, AVX2+FMA, AVX-512; chosen by cpuid at run time, capped by torch's
ATEN_CPU_CAPABILITY), run serially, with the hidden dimension split across torch's intra-op threads (each thread
owns a block of W_hh's columns for the whole sequence), or with the batch split across them -- chosen from B, H, T and
the thread count, serially when nested inside another parallel region. All three give bitwise the same results for
every ISA and thread count. A per-step BLAS path exists for benchmarks (MKL's summation order, not bitwise equal).

Test/benchmark hooks (torch.ops.fused_rnn.*): ``cpu_isa("" | "auto" | "generic" | "avx2" | "avx512" | "avx512bf16" |
"avx512bf16fma" | "avx512amx" | "avx512amx_emu")`` reads or forces the instruction set ("avx512bf16": avx512 plus
the vdpbf16ps bf16 kernels, the choice on AMD; "avx512bf16fma": the same bf16 layout with the pairs widened in
registers and fp32 FMAs, the choice on Intel, whose vdpbf16ps is the slower; "avx512amx": the same with the bf16
matvec on AMX tiles, forced only -- not yet run on AMX hardware; "avx512amx_emu": that code with the tiles emulated
in software, for tests);
``cpu_path("" | "auto" | "serial" | "hidden" | "batch" | "blas")`` reads or forces the path; ``cpu_last_run()``
says what the last call on this thread ran ("isa=avx512 path=hidden threads=2");
``cpu_nested(P, h0, w_hh, copies)`` runs the ops inside at::parallel_for (the nesting test).
``cpu_elman_fwd_inplace`` is ``forward_into``'s op (Y written over P).
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


def forward_into(P: Tensor, h0: Tensor, w_hh: Tensor, lengths: Tensor | None, reverse: bool,
                 nonlinearity: str) -> Tensor:
    """forward, writing Y into P [T,B,H] (contiguous; its old values are consumed) -> h_n [B,H]; see
    reference.forward_into. Saves allocating Y: csrc/cpu/elman_cpu.cpp, cpu_elman_fwd_inplace."""
    return torch.ops.fused_rnn.cpu_elman_fwd_inplace(P, h0, w_hh, lengths, reverse, nonlinearity)


def backward(dY: Tensor, dh_n: Tensor, Y: Tensor, w_hh: Tensor, lengths: Tensor | None, reverse: bool,
             nonlinearity: str, tier: str = "", allow_tf32: bool = False) -> tuple[Tensor, Tensor]:
    """dY [T,B,H], dh_n [B,H], Y [T,B,H], w_hh [H,H] -> (dA [T,B,H], dh0 [B,H]); see reference.backward."""
    return torch.ops.fused_rnn.elman_bwd(dY, dh_n, Y, w_hh, lengths, reverse, nonlinearity, tier, allow_tf32)
