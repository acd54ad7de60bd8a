"""Shared by the GPU test files: tolerance floors, skip marks, the tier each test must see run, and the marks that
send tests of code not yet run on a GPU to the last part of `make gpu-check`."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import pytest
import torch

from fused_rnn import _ext
from fused_rnn.backends import tier_log, verified

# Floors of the tolerance rule, relative to max(1, max |oracle|): a few units of the dtype's rounding of h_t.
FLOOR = {torch.float64: 1e-11, torch.float32: 2e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}

needs_cuda_build = pytest.mark.skipif(not _ext.built_with_cuda(), reason="extension built without CUDA kernels")
needs_gpu = pytest.mark.skipif(
    not (_ext.built_with_cuda() and torch.cuda.is_available()), reason="needs a CUDA device and the CUDA build")


def unverified_mark(backend: str, tier: str, new_code: bool = False) -> list[pytest.MarkDecorator]:
    """[gpu_unverified] when `tier` is not on the GPU-verified list (csrc/cuda/gpu_verified.h) or the test covers new
    code inside a verified tier (`new_code`); `make gpu-check` runs those in its last part, so a failure there cannot
    use up the run that re-verifies the proven tiers. Follows the list: a tier added to it moves to the first part."""
    if new_code or not verified.is_verified(backend, tier):
        return [pytest.mark.gpu_unverified]
    return []


@functools.cache
def h200_class() -> bool:
    """The device the expected tiers were worked out for: cc 9.0, >= 132 SMs, >= 227 KB opt-in shared memory (H100
    SXM, H200). Elsewhere a tier may refuse a shape for its resources (fewer SMs, less shared memory, no clusters),
    and check_ran accepts `fallback` instead -- with the reason the op gave."""
    if not torch.cuda.is_available():
        return False
    p = torch.cuda.get_device_properties(0)
    optin = getattr(p, "shared_memory_per_block_optin", 0)
    return (p.major, p.minor) == (9, 0) and p.multi_processor_count >= 132 and optin >= 227 * 1024


def check_ran(runs: list[tier_log.TierRun], expected: str, backend: str = "cuda") -> None:
    """Every recorded `backend` launch ran `expected` (a "verified" tier is one that ran, not one whose fallback
    passed). Off the H200 class, `fallback` is also accepted for an expected non-fallback tier (with its reason)."""
    mine = [r for r in runs if r.backend == backend]
    assert mine, f"no {backend} launch was recorded (is the tier log reaching the op?)"
    ran = {r.ran for r in mine}
    detail = "\n".join(f"  {r.op} asked {r.requested!r} ran {r.ran!r} {r.shape} {r.detail} {r.why}" for r in mine)
    if expected == "fallback" or h200_class() or backend != "cuda":
        assert ran == {expected}, f"expected every launch to run {expected!r}, got:\n{detail}"
    else:
        assert ran <= {expected, "fallback"}, f"expected {expected!r} (or fallback off the H200 class):\n{detail}"
        if "fallback" in ran:
            print(f"note: {expected} fell back on this device:\n{detail}")


@contextlib.contextmanager
def expect_ran(expected: str, backend: str = "cuda") -> Iterator[list[tier_log.TierRun]]:
    """`with expect_ran("cluster"): ...` -- record the block's launches and check_ran them at its end."""
    with tier_log.record() as runs:
        yield runs
    check_ran(runs, expected, backend)
