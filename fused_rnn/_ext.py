"""Loads the compiled extension ``fused_rnn._C`` (C++ CPU kernels, and CUDA kernels when built).

Importing it registers the ``torch.ops.fused_rnn`` ops. ``import torch`` must come first (libc10.so).
Nothing here touches a GPU.

A compiled PyTorch extension only works with the torch it was compiled against (the C++ ABI changes between
releases; loading it into another one fails with an undefined symbol, or worse). setup.py records that torch in
``_build_info.json`` beside ``_C``; when another torch is imported, ``_C`` is not loaded at all, a warning names both
versions, and asking for a compiled backend raises the same message. The reference backend keeps working.
"""

from __future__ import annotations

import json
import os
import warnings

import torch

_LOAD_ERROR: str | None = None
BUILD_INFO_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_build_info.json")


class BuildMismatchWarning(UserWarning):
    """The extension was built for another torch, or was built but failed to load."""


def _read_build_info() -> dict | None:
    """setup.py's record of the build (torch version, CUDA archs, ...), or None when there is none (not built)."""
    try:
        with open(BUILD_INFO_FILE, encoding="utf-8") as f:
            info = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        return {"error": f"unreadable {BUILD_INFO_FILE}: {type(e).__name__}: {e}"}
    return info if isinstance(info, dict) else {"error": f"unexpected content in {BUILD_INFO_FILE}"}


def torch_mismatch(info: dict | None, running: str) -> str | None:
    """The error message when ``info`` (a build record) names a torch other than ``running``, else None."""
    built = (info or {}).get("torch_version")
    if not built or built == running:
        return None
    return (
        f"fused_rnn's compiled extension was built against torch {built}, but torch {running} is imported: a "
        f"compiled PyTorch extension only works with the torch it was built with. Rebuild fused_rnn for torch "
        f"{running} (from its source: pip install --no-build-isolation --no-deps --force-reinstall <sdist or "
        f"folder>; in a checkout: pip install --no-build-isolation -e .). Until then only the 'reference' backend "
        f"is available."
    )


BUILD_INFO: dict | None = _read_build_info()

_mismatch = torch_mismatch(BUILD_INFO, torch.__version__)
if _mismatch is not None:
    LOADED = False
    _LOAD_ERROR = _mismatch
    warnings.warn(_mismatch, BuildMismatchWarning, stacklevel=1)
else:
    try:
        import importlib

        importlib.import_module("fused_rnn._C")  # says "No module named 'fused_rnn._C'" when not built

        LOADED = True
    except ImportError as e:  # not built, or built against another torch
        LOADED = False
        _LOAD_ERROR = f"{type(e).__name__}: {e}"
        if BUILD_INFO is not None:  # it was built, so failing to load is news (a source checkout just isn't built)
            warnings.warn(f"fused_rnn: the compiled extension failed to load ({_LOAD_ERROR}); only the 'reference' "
                          f"backend is available", BuildMismatchWarning, stacklevel=1)


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
