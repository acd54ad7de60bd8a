"""Which CUDA tier to run for a shape, when none is forced. Owned by the CUDA kernels' authors (csrc/cuda/NOTES.md).

The rule (H hidden, B batch, s = bytes per element of the dtype):
  1. ``batch_tiled`` when w_hh [H, H] fits in one CTA's opt-in shared memory:
     H · roundup(H, 16 / s) · s + 2 · H · acc_bytes <= the device's limit (227 KB on H100/H200: fp32 H <= 240,
     fp16/bf16 H <= 336, fp64 H <= 168 -- the same bound the C++ launcher applies, csrc/cuda/elman_kernels.cuh).
     Batch rows are independent, so any B runs; at B <= #SMs every CTA takes one row and the per-step latency is
     one on-chip matvec + one barrier (floor ≈ 0.9 µs at fp32 H = 224 on an H100, estimated from shared-memory
     bandwidth in NOTES.md, not yet measured).
  2. ``fallback`` otherwise (per-step cuBLAS GEMM + one pointwise kernel; any H, any B, any GPU).
That was the first rule; ``pick_tier`` below now uses the measured persistent/cluster tiers and leaves
``batch_tiled`` to forced runs until it has run on a GPU. A forced tier always works (the C++ side falls back to
``fallback`` when it cannot run).
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


def _cc_major(device: torch.device) -> int:
    try:
        if device.type == "cuda" and torch.cuda.is_available():
            return torch.cuda.get_device_capability(device)[0]
    except Exception:
        pass
    return 0


def pick_tier(H: int, B: int, dtype: torch.dtype, device: torch.device, compiled: tuple[str, ...]) -> str:
    """Return a tier name from ``compiled`` for hidden size H, batch B and ``dtype``; 'fallback' always works.

    Thresholds from the H200 measurements in csrc/cuda/NOTES_persistent.md (2026-11-27, T=1024, µs per step):
    cluster 1.3-3.6 at B=1 and 1.8-6.5 at B=16 for H <= 1024 (bf16; fp32 up to its shared-memory limit, ~830);
    persistent 2.1-2.9 at B=1 and 5.6-12.4 at B=16 up to H=2048 fp32, but linear in B (133 µs at B=256, H=512),
    so only for B <= 16; everything else runs the per-step cuBLAS `fallback`. `batch_tiled` has not run on a GPU
    yet, so it is chosen only when forced (FUSED_RNN_CUDA_TIER=batch_tiled). The C++ side re-checks resources and
    runs `fallback` when the chosen tier cannot take the shape, so a wrong guess here costs speed, never results.
    """
    half = dtype in (torch.float16, torch.bfloat16)
    if dtype == torch.float64:
        return "fallback"
    if "cluster" in compiled and _cc_major(device) >= 9 and B <= 256 and H <= (1024 if half else 768):
        return "cluster"
    if "persistent" in compiled and B <= 16 and H <= (2880 if half else 2112):
        return "persistent"
    return "fallback"


def batch_tiled_fits(H: int, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether the batch_tiled tier can hold w_hh [H, H] in one CTA's shared memory on ``device``."""
    return batch_tiled_smem_bytes(H, dtype) <= _smem_optin(device)
