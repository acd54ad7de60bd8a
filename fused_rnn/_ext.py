"""Loads the compiled extension ``fused_rnn._C`` (C++ CPU kernels, and CUDA kernels when built).

Importing it registers the ``torch.ops.fused_rnn`` ops. ``import torch`` must come first (libc10.so).
Nothing here touches a GPU.
"""

from __future__ import annotations

import torch  # noqa: F401  (must precede the extension import)

_LOAD_ERROR: str | None = None
try:
    import importlib

    importlib.import_module("fused_rnn._C")  # says "No module named 'fused_rnn._C'" when not built

    LOADED = True
except ImportError as e:  # not built, or built against another torch
    LOADED = False
    _LOAD_ERROR = f"{type(e).__name__}: {e}"


def load_error() -> str | None:
    """Why the extension could not be imported (None when it loaded)."""
    return _LOAD_ERROR


def built_with_cuda() -> bool:
    """True when the extension was compiled with its CUDA kernels."""
    return LOADED and bool(torch.ops.fused_rnn.built_with_cuda())


def cuda_tiers() -> list[str]:
    """CUDA tier names compiled into this build ([] without CUDA)."""
    return list(torch.ops.fused_rnn.cuda_tiers()) if LOADED else []


def has_kernel(dispatch_key: str) -> bool:
    """Whether both elman ops have a kernel for ``dispatch_key`` ("CPU" or "CUDA")."""
    if not LOADED:
        return False
    return all(
        torch._C._dispatch_has_kernel_for_dispatch_key(f"fused_rnn::{op}", dispatch_key)
        for op in ("elman_fwd", "elman_bwd")
    )
