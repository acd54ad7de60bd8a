"""torch.compile's on-disk caches keyed by ATEN_CPU_CAPABILITY for this suite: a workaround for a PyTorch bug.

Inductor's C++ codegen tiles CPU loops for the vector ISA that ATEN_CPU_CAPABILITY selects (cpu_vec_isa.pick_vec_isa;
AVX-512: 16 floats or 2 x 8 doubles per step, avx2: 8 floats or 2 x 4 doubles), but the FX graph cache key
(codecache.FxGraphHashDetails, torch 2.14.1) leaves that ISA out. A run with ATEN_CPU_CAPABILITY=avx2 on an AVX-512
CPU loads the code an earlier default run cached (AVX-512 tiling) and compiles its kernels with AVX2 flags:
``VectorizedN<double, 2>`` is 8 doubles there, the loop steps by 16, and elements 8..15 of every 16 are never
written. test_compile.py::test_inductor_matches_eager failed so under the AVX2 settings (h_n and grad hx, from the
inductor kernels that stack the layers' [B, H] results, held uninitialised memory; the fused ops' outputs were
right) whenever the shared cache (/tmp/torchinductor_$USER) held a default run's entry for the graph's key -- so it
came and went with the cache's history and the tests run before it. Pure-PyTorch repro: compile
``lambda a, b: torch.stack([a, b])`` for two [5, 5] fp64 tensors and run it without, then with
ATEN_CPU_CAPABILITY=avx2 on one TORCHINDUCTOR_CACHE_DIR: flat indices 8-15, 24, 33-40 and 49 of the second run are
wrong (Intel Xeon Emerald Rapids, torch 2.14.1, 2026-12-07). The suite runs under several capability settings on
one cache, so conftest.py adds the setting to torch.compiler.config.cache_key_tag, part of every compile cache key.
"""

from __future__ import annotations

import os

import torch


def key_compile_caches_by_cpu_capability() -> str:
    """Add ``ATEN_CPU_CAPABILITY=<its value, "" when unset>`` to torch.compiler.config.cache_key_tag (once) and return
    the tag: cache entries written under one capability setting are never read under another."""
    part = f"ATEN_CPU_CAPABILITY={os.environ.get('ATEN_CPU_CAPABILITY', '')}"
    tag = torch.compiler.config.cache_key_tag
    if part not in tag.split(";"):
        torch.compiler.config.cache_key_tag = f"{tag};{part}" if tag else part
    return torch.compiler.config.cache_key_tag
