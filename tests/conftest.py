"""Shared test setup: seeding, GPU skipping, the list of backends that run on CPU tensors, and torch.compile's caches
keyed by ATEN_CPU_CAPABILITY.

Markers (gpu, gpu_quick, slow) are registered in pyproject.toml; nothing is registered here.
"""

from __future__ import annotations

import pytest
import torch
from compile_cache import key_compile_caches_by_cpu_capability  # tests/compile_cache.py

import fused_rnn
from fused_rnn.backends.select import backend_module

# The suite runs under several ATEN_CPU_CAPABILITY settings sharing one inductor cache; torch 2.14.1 leaves the vector
# ISA out of its cache key, so a compiled graph cached by a default run gave garbage under avx2 (compile_cache.py).
key_compile_caches_by_cpu_capability()


def cpu_backends() -> list[str]:
    """Backends usable here that accept CPU tensors: ["reference"], plus "cpu" once the C++ backend is built."""
    cpu = torch.device("cpu")
    return [name for name in fused_rnn.available_backends() if backend_module(name).supports_device(cpu)]


CPU_BACKENDS: list[str] = cpu_backends()


@pytest.fixture(params=CPU_BACKENDS)
def cpu_backend(request: pytest.FixtureRequest) -> str:
    """Each available backend that runs on CPU tensors, as a parametrized fixture (ids are the backend names)."""
    return request.param


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    """Every test starts from the same RNG state, so a failure reproduces alone and in the suite."""
    torch.manual_seed(0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked gpu (or gpu_quick, a subset of gpu) when no CUDA device is visible."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "gpu" in item.keywords or "gpu_quick" in item.keywords:
            item.add_marker(skip)
