"""Every Triton kernel variant of the triton backend compiles for sm_90 (H100/H200) -- on CI, without a GPU.

The compile runs in a separate process (tests/triton_compile_cases.py) with TRITON_INTERPRET unset: ``@triton.jit``
fixes interpreter mode when it is applied, so this must not share a process with the interpreter tests. A kernel
that only a GPU compile rejects (layouts, dot shapes, atomics, the cooperative barrier) fails CI here.

Resident tier, `ptxas -arch=sm_90a -v` of these kernels (triton 3.8, BLOCK_B=16, 8 warps for H >= 64;
measured 2026-11-27 on the 2-core CI machine with `python tests/triton_compile_cases.py --ptxas --only resident`);
registers per thread fwd / bwd, spill bytes, triton's shared memory fwd / bwd:

  dtype / dot  H=64                          H=128                               H=256
  fp32 IEEE    172/48 regs, 0 spill, 20/36 KB  fwd spills 5.0 KB, bwd 106 regs,     fwd spills 17 KB, bwd 3.5 KB,
                                               72/104 KB                           272/336 KB: cannot launch
  fp32 TF32    66/64 regs, 20/36 KB            128/98 regs (fwd 4 B spill),        255 regs, ~200 B spill,
                                               72/104 KB                           272/336 KB: cannot launch
  fp16         62/79 regs, 10/12 KB            124/170 regs, 0 spill, 36/40 KB     255/255 regs, 148/136 B spill,
                                                                                   136/144 KB
  bf16         57/64 regs, 10/12 KB            104/160 regs, 0 spill, 36/40 KB     255/255 regs, 200/192 B spill,
                                                                                   136/144 KB
  fp64         64/64 regs, 40/72 KB            171/188 regs, 0 spill, 144/208 KB   spills 2.2/1.1 KB,
                                                                                   544/672 KB: cannot launch

(With 4 warps the fp32 IEEE forward at H=64 used 255 registers and spilled 224 B, hence 8 warps from H=64.)
These figures set ``fused_rnn.backends.triton.RESIDENT_MAX_H``; ``test_resident_limit_fits_shared_memory`` re-checks
the shared-memory half of that on every CI run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SM90_SHARED_LIMIT = 227 * 1024  # bytes of shared memory one block may use on sm_90


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> tuple[subprocess.CompletedProcess, list[dict]]:
    pytest.importorskip("triton")
    out = tmp_path_factory.mktemp("triton_compile") / "variants.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "triton_compile_cases.py"), "--json",
                           str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=540)
    results = json.loads(out.read_text()) if out.exists() else []
    return proc, results


@pytest.mark.slow  # 67 variants: ~40 s of CPU (1m40 wall on the shared 2-core CI machine, cold triton cache)
@pytest.mark.timeout(600)
def test_every_variant_compiles_for_sm90(compiled) -> None:
    proc, results = compiled
    assert proc.returncode == 0, f"compile for sm_90 failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-4000:]}"
    assert results and all(r["ok"] for r in results)
    names = " ".join(r["name"] for r in results)
    # coverage: every kernel, storage dtype, both dot precisions, both values of each boolean constexpr
    for kernel in ("elman_fwd_resident_kernel", "elman_bwd_resident_kernel", "elman_fwd_step_kernel",
                   "elman_bwd_step_kernel", "elman_fwd_coop_kernel", "elman_bwd_coop_kernel"):
        for dtype in ("float32", "float16", "bfloat16", "float64"):
            assert f"{kernel}[{dtype}," in names, f"{kernel} not compiled for {dtype}"
        for flag in ("HAS_LEN=True", "HAS_LEN=False", "NONLIN=0", "NONLIN=1"):
            assert any(r["name"].startswith(kernel + "[") and flag in r["name"] for r in results), (kernel, flag)
        if "step" not in kernel:
            for flag in ("REVERSE=True", "REVERSE=False"):
                assert any(r["name"].startswith(kernel + "[") and flag in r["name"] for r in results), (kernel, flag)
    assert "DOT_PREC=tf32" in names and "INTERP=True" in names


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_resident_limit_fits_shared_memory(compiled) -> None:
    """At RESIDENT_MAX_H (compiled by the script for every dtype) both resident kernels fit one SM's shared memory."""
    proc, results = compiled
    assert proc.returncode == 0
    resident = [r for r in results if "resident" in r["name"] and "INTERP=True" not in r["name"]]
    assert resident
    for r in resident:
        assert r["shared"] <= SM90_SHARED_LIMIT, f"{r['name']} needs {r['shared']} B of shared memory"
