"""Which CUDA tier to run for a shape, when none is forced. Owned by the CUDA kernels' authors (csrc/cuda/NOTES.md)."""

from __future__ import annotations

import torch


def pick_tier(H: int, B: int, dtype: torch.dtype, device: torch.device, compiled: tuple[str, ...]) -> str:
    """Return a tier name from ``compiled``; 'fallback' always works."""
    if "batch_tiled" in compiled and H <= 256:
        return "batch_tiled"
    return "fallback"
