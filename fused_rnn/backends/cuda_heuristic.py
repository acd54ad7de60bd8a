"""Which CUDA tier to run for a shape, when none is forced. Owned by the CUDA kernels' authors (csrc/cuda/NOTES.md).

The rule (H hidden, B batch, s = bytes per element of the dtype):
  1. ``batch_tiled`` when w_hh [H, H] fits in one CTA's opt-in shared memory:
     H · roundup(H, 16 / s) · s + 2 · H · acc_bytes <= the device's limit (227 KB on H100/H200: fp32 H <= 240,
     fp16/bf16 H <= 336, fp64 H <= 168 -- the same bound the C++ launcher applies, csrc/cuda/elman_kernels.cuh).
     Batch rows are independent, so any B runs; at B <= #SMs every CTA takes one row and the per-step latency is
     one on-chip matvec + one barrier (floor ≈ 0.9 µs at fp32 H = 224 on an H100, estimated from shared-memory
     bandwidth in NOTES.md, not yet measured).
  2. ``fallback`` otherwise (per-step cuBLAS GEMM + one pointwise kernel; any H, any B, any GPU).
The persistent / cluster tiers are picked only once their author gives measured thresholds; a forced tier always
works (the C++ side falls back to ``fallback`` when it cannot run).
"""

from __future__ import annotations

import torch

# H100/H200 opt-in shared memory per block; used when no device can be queried (CPU-only machines, tests).
DEFAULT_SMEM_OPTIN = 227 * 1024


def _smem_optin(device: torch.device) -> int:
    """Opt-in shared memory per block of ``device`` in bytes (the H100 value when it cannot be queried)."""
    try:
        if device.type == "cuda" and torch.cuda.is_available():
            props = torch.cuda.get_device_properties(device)
            v = getattr(props, "shared_memory_per_block_optin", 0)
            if v:
                return int(v)
    except Exception:  # no driver, or a torch without the attribute
        pass
    return DEFAULT_SMEM_OPTIN


def batch_tiled_smem_bytes(H: int, dtype: torch.dtype) -> int:
    """Shared memory the batch_tiled tier needs at its smallest tile (one batch row), without bank padding."""
    s = torch.empty((), dtype=dtype).element_size()
    acc = 8 if dtype == torch.float64 else 4
    jv = 16 // s
    cols = (H + jv - 1) // jv * jv
    return H * cols * s + 2 * H * acc


def pick_tier(H: int, B: int, dtype: torch.dtype, device: torch.device, compiled: tuple[str, ...]) -> str:
    """Return a tier name from ``compiled`` for hidden size H, batch B and ``dtype``; 'fallback' always works."""
    if "batch_tiled" in compiled and batch_tiled_smem_bytes(H, dtype) <= _smem_optin(device):
        return "batch_tiled"
    return "fallback"
