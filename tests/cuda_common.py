"""Shared by the CUDA test files: tolerance floors and skip marks (imported by tests/test_cuda*.py)."""

from __future__ import annotations

import pytest
import torch

from fused_rnn import _ext

# Floors of the tolerance rule, relative to max(1, max |oracle|): a few units of the dtype's rounding of h_t.
FLOOR = {torch.float64: 1e-11, torch.float32: 2e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}

needs_cuda_build = pytest.mark.skipif(not _ext.built_with_cuda(), reason="extension built without CUDA kernels")
needs_gpu = pytest.mark.skipif(
    not (_ext.built_with_cuda() and torch.cuda.is_available()), reason="needs a CUDA device and the CUDA build")
