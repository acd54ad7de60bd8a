"""The CUDA C++ backend: ``fused_rnn::elman_fwd`` / ``elman_bwd`` registered for the CUDA dispatch key (csrc/cuda/).

Tiers (docs/design.md, csrc/cuda/NOTES.md):
  batch_tiled  one CTA per batch tile holds all of w_hh in shared memory for the whole sequence (small H)
  persistent   hidden units split across a cooperative grid, one grid barrier per step (medium/large H)
  cluster      hidden units split across a Hopper thread-block cluster, h_t exchanged through DSMEM
  cluster2     the cluster tier on tensor cores (mma.sync; fp16/bf16, fp32 only as TF32 under allow_tf32) with a
               DSMEM bulk-copy exchange; forced only, not yet run on a GPU (csrc/cuda/NOTES_cluster2.md)
  fallback     any H, any B, any GPU: per step one cuBLAS GEMM (w_hh streamed from L2; fp16/bf16 forward as a 16-bit
               GEMM with fp32 accumulation and output) + one pointwise kernel
The C++ launcher falls back to ``fallback`` when a forced tier cannot run for this shape (shared memory,
co-residency, architecture), so a forced tier never fails to produce a result; ``tier_log.record()`` says which tier
ran and why. The empty tier ``""`` (a direct op call) runs only GPU-verified tiers (``verified.py``). All tiers:
fp64/fp32/fp16/bf16 storage, fp32 accumulation (fp64 for fp64), IEEE fp32 unless ``allow_tf32`` (batch_tiled is
always IEEE), deterministic except `fallback`'s cuBLAS GEMM across streams.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _ext

NAME = "cuda"
TIERS: tuple[str, ...] = ("batch_tiled", "persistent", "cluster", "cluster2", "fallback")


def available() -> tuple[bool, str]:
    if not _ext.LOADED:
        return False, f"the C++ extension fused_rnn._C is not built or failed to load ({_ext.load_error()})"
    if not _ext.built_with_cuda() or not _ext.has_kernel("CUDA"):
        return False, "the extension was built without CUDA kernels (no CUDA torch or no nvcc at build time)"
    if not torch.cuda.is_available():
        return False, "no CUDA device is available"
    return True, ""


def compiled_tiers() -> tuple[str, ...]:
    return tuple(t for t in _ext.cuda_tiers() if t in TIERS)


def supports_device(device: torch.device) -> bool:
    return device.type == "cuda"


def pick_tier(H: int, B: int, dtype: torch.dtype, device: torch.device) -> str:
    """Heuristic over H, B and dtype; the C++ side re-checks resources and falls back when a tier cannot run."""
    from . import cuda_heuristic

    return cuda_heuristic.pick_tier(H, B, dtype, device, compiled_tiers())


def forward(P: Tensor, h0: Tensor, w_hh: Tensor, lengths: Tensor | None, reverse: bool, nonlinearity: str,
            tier: str = "", allow_tf32: bool = False) -> tuple[Tensor, Tensor]:
    """P [T,B,H], h0 [B,H], w_hh [H,H], lengths [B] | None -> (Y [T,B,H], h_n [B,H]); see reference.forward."""
    return torch.ops.fused_rnn.elman_fwd(P, h0, w_hh, lengths, reverse, nonlinearity, tier, allow_tf32)


def backward(dY: Tensor, dh_n: Tensor, Y: Tensor, w_hh: Tensor, lengths: Tensor | None, reverse: bool,
             nonlinearity: str, tier: str = "", allow_tf32: bool = False) -> tuple[Tensor, Tensor]:
    """dY [T,B,H], dh_n [B,H], Y [T,B,H], w_hh [H,H] -> (dA [T,B,H], dh0 [B,H]); see reference.backward."""
    return torch.ops.fused_rnn.elman_bwd(dY, dh_n, Y, w_hh, lengths, reverse, nonlinearity, tier, allow_tf32)
