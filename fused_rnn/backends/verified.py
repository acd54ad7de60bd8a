"""The GPU-verified list, read from the one place it is written: ``csrc/cuda/gpu_verified.h``, compiled into the
extension and returned by ``torch.ops.fused_rnn.gpu_verified()``. The CUDA op reads the same list when its tier
argument is ``""`` (a direct ``torch.ops.fused_rnn.elman_fwd(..., tier="")`` call), so the op and ``select.py``'s
``auto`` cannot disagree about what has passed on a real GPU.

Entries: ``"<backend>:<tier>"``, ``"capability:<major>.<minor>"``, ``"report:<path>"``. Without the compiled
extension nothing counts as verified (``auto`` then never picks a GPU tier).
"""

from __future__ import annotations

import torch

from .. import _ext


def entries() -> list[str]:
    """The raw entries of this build's list ([] when the extension is not loaded)."""
    if not _ext.LOADED:
        return []
    try:
        return [str(e) for e in torch.ops.fused_rnn.gpu_verified()]
    except (AttributeError, RuntimeError):  # an extension built before the list existed
        return []


def parse(items: list[str]) -> tuple[dict[str, tuple[str, ...]], tuple[tuple[int, int], ...], str]:
    """(tiers per backend, verified compute capabilities, report path) from the raw entries."""
    tiers: dict[str, list[str]] = {"cuda": [], "triton": []}
    caps: list[tuple[int, int]] = []
    report = ""
    for e in items:
        key, _, value = e.partition(":")
        if key == "capability":
            major, _, minor = value.partition(".")
            caps.append((int(major), int(minor or 0)))
        elif key == "report":
            report = value
        else:
            tiers.setdefault(key, []).append(value)
    return {k: tuple(v) for k, v in tiers.items()}, tuple(caps), report


GPU_VERIFIED, GPU_VERIFIED_CAPABILITY, GPU_VERIFIED_REPORT = parse(entries())


def is_verified(backend: str, tier: str, capability: tuple[int, int] | None = None) -> bool:
    """Whether ``backend``'s ``tier`` passed on a real GPU (on ``capability``, when given)."""
    if tier not in GPU_VERIFIED.get(backend, ()):
        return False
    return capability is None or tuple(capability) in GPU_VERIFIED_CAPABILITY
