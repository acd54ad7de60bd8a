"""The `auto` policy for CUDA tensors: only GPU-verified tiers, only on the compute capability they passed on."""

from __future__ import annotations

import os

import pytest
import torch

from fused_rnn.backends import cuda as cuda_backend
from fused_rnn.backends import select

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_verified_tiers_exist_and_have_a_report() -> None:
    """Every verified tier is a real tier, and the named report exists and mentions it."""
    assert set(select.GPU_VERIFIED["cuda"]) <= set(cuda_backend.TIERS)
    if any(select.GPU_VERIFIED.values()):
        path = os.path.join(ROOT, select.GPU_VERIFIED_REPORT)
        assert os.path.isfile(path), path
        text = open(path, encoding="utf-8").read()
        for tiers in select.GPU_VERIFIED.values():
            for t in tiers:
                assert f"`{t}`" in text, t


@pytest.mark.parametrize(("cap", "expected"), [((9, 0), "cuda"), ((8, 0), "reference"), ((10, 0), "reference")],
                         ids=["sm90", "sm80", "sm100"])
def test_auto_on_cuda_only_on_verified_capability(monkeypatch: pytest.MonkeyPatch, cap: tuple[int, int],
                                                  expected: str) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: cap)
    monkeypatch.setattr(cuda_backend, "available", lambda: (True, ""))
    assert select._auto(torch.device("cuda")) == expected


def test_auto_replaces_an_unverified_tier(monkeypatch: pytest.MonkeyPatch) -> None:
    """If the heuristic picks a tier not on the verified list, auto runs the verified fallback instead."""
    monkeypatch.setattr(select, "_resolve_name", lambda backend, device_type: ("cuda", "", True, True))
    monkeypatch.setattr(cuda_backend, "pick_tier", lambda H, B, dtype, device: "batch_tiled")
    choice = select.resolve("auto", torch.device("cuda"), 64, 1, torch.float32)
    assert choice.backend == "cuda" and choice.tier == "fallback"
    # an explicit backend="cuda" keeps the heuristic's choice
    monkeypatch.setattr(select, "_resolve_name", lambda backend, device_type: ("cuda", "", False, True))
    assert select.resolve("cuda", torch.device("cuda"), 64, 1, torch.float32).tier == "batch_tiled"
