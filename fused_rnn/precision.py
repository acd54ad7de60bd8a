"""The one place that reads PyTorch's fp32-matmul (TF32) setting.

fp32 runs as IEEE unless the user enabled TF32 for matmuls. torch 2.11-2.14 have two APIs: the legacy
``torch.backends.cuda.matmul.allow_tf32`` / ``torch.set_float32_matmul_precision`` and the newer
``torch.backends.cuda.matmul.fp32_precision``; once the new one has been used, reading the legacy one raises
(measured on torch 2.14.1). This helper tries the new API first and never raises.
"""

from __future__ import annotations

import torch


def allow_tf32() -> bool:
    """True when fp32 matmuls may run as TF32 on CUDA (the setting cuBLAS would obey)."""
    m = torch.backends.cuda.matmul
    for getter in (lambda: m.fp32_precision, lambda: torch.backends.fp32_precision):
        try:
            p = getter()
        except Exception:  # attribute missing on this torch, or mixed-API RuntimeError
            continue
        if p == "tf32":
            return True
        if p == "ieee":
            return False
        # "none": inherit from the next level / the legacy flags
    try:
        return bool(m.allow_tf32)
    except Exception:
        pass
    try:
        return torch.get_float32_matmul_precision() != "highest"
    except Exception:
        return False


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype for a storage dtype: fp64 stays fp64, everything else accumulates in fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32
