"""relu backward is torch's threshold_backward, a select: dA = (h <= 0 ? 0 : g), not g times a 0/1 factor.

nn.RNN differentiates relu with threshold_backward, so a dead unit (h = 0) passes 0 even where the incoming gradient
g is inf or NaN. A factor makes it 0 · inf = NaN, which then spreads through dA @ W_hh into every gradient: e.g.
``output.sqrt().sum()`` (d sqrt / dy = inf at y = 0) gave finite gradients with nn.RNN and NaN with fused_rnn's cpu and
reference backends (found by the differential bug hunt, 2026-12-02). Every CPU kernel path is checked: each ISA's own
loops (fp32/fp64 kernels, the bf16 ones where the CPU has AVX512-BF16), the hidden and batch splits, the per-step BLAS
path, and the reference.
"""

from __future__ import annotations

import pytest
import torch
from cpu_common import BEST_ISA, ISAS, bf16_isa_missing, built, forced, num_threads
from torch import nn

import fused_rnn
from fused_rnn.backends import reference

DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# (backend, isa, path) -> the kernel loop that runs; the splits need two threads
CPU_PATHS = [("cpu", isa, "serial") for isa in ISAS] + [("cpu", BEST_ISA, p) for p in ("hidden", "batch", "blas")]
BF16_NATIVE = ("avx512bf16", "avx512bf16fma", "avx512amx_emu")  # bf16-only kernel sets (their fp32/fp64 are avx512's)
if bf16_isa_missing() is None:
    CPU_PATHS += [("cpu", isa, "serial") for isa in BF16_NATIVE]
CASES = ([("reference", None, None)] + CPU_PATHS) if built() else [("reference", None, None)]


def dead_unit_case(T: int, B: int, H: int, seed: int = 3) -> tuple[torch.Tensor, ...]:
    """fp32 backward inputs with relu dead units fed non-finite gradients: Y [T,B,H] = relu(randn) (about half dead),
    w [H,H], dY [T,B,H] with inf at half the dead units and NaN at every dead unit of step 0, dh_n [B,H]; and the
    mask `dead` [T,B,H]. For the GPU kernels' emulation and the Triton interpreter (tests/test_cuda.py,
    tests/triton_interp_cases.py)."""
    g = torch.Generator().manual_seed(seed)
    Y = torch.relu(torch.randn(T, B, H, generator=g))
    w = 0.3 * torch.randn(H, H, generator=g) / H**0.5
    dY = torch.randn(T, B, H, generator=g)
    dead = Y == 0
    dY[dead & (torch.rand(T, B, H, generator=g) < 0.5)] = float("inf")
    dY[0][dead[0]] = float("nan")
    return Y, w, dY, torch.randn(B, H, generator=g), dead


def _ctx(isa: str | None, path: str | None):
    return forced(isa=isa, path=path) if isa is not None else forced()


def _case_id(case: tuple) -> str:
    return "-".join(str(c) for c in case if c is not None)


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_sqrt_of_relu_output_gives_nn_rnn_finite_gradients(case: tuple, dtype: str) -> None:
    """The module-level symptom: loss = output.sqrt().sum(), relu; nn.RNN's gradients are finite, so must ours be,
    and equal to nn.RNN's (fp64: tightly; otherwise the same zero pattern and close values)."""
    backend, isa, path = case
    if isa in BF16_NATIVE and dtype != "bf16":
        pytest.skip(f"the {isa} kernels differ from avx512 for bf16 only")
    dt = DTYPES[dtype]
    torch.manual_seed(0)
    T, B, I, H = 6, 16, 5, 40  # noqa: E741  (B·H large enough that the forced splits really split)
    theirs = nn.RNN(I, H, nonlinearity="relu", num_layers=2, bidirectional=True, dtype=torch.float64).to(dt)
    ours = fused_rnn.RNN(I, H, nonlinearity="relu", num_layers=2, bidirectional=True, dtype=dt, backend=backend)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64).to(dt)
    grads = []
    with num_threads(2), _ctx(isa, path):
        for m in (theirs, ours):
            xx = x.clone().requires_grad_(True)
            y, h_n = m(xx)
            assert (y == 0).any(), "the case needs dead relu units"
            (y.double().sqrt().sum() + h_n.double().sum()).backward()
            grads.append({"input": xx.grad, **{n: p.grad for n, p in m.named_parameters()}})
    want, got = grads
    for k in want:
        assert torch.isfinite(want[k]).all(), f"{k}: nn.RNN's gradient is not finite (the case is wrong)"
        assert torch.isfinite(got[k]).all(), f"{k}: {int((~torch.isfinite(got[k])).sum())} non-finite values"
        if dt == torch.float64:
            torch.testing.assert_close(got[k], want[k], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_nonfinite_gradient_at_dead_unit_gives_zero(case: tuple, dtype: str) -> None:
    """The contract (docs/design.md): inf / NaN in dY where h <= 0 gives dA = 0 there (and so a finite dh0); where
    h > 0 it passes. Backend level, against nothing but the definition."""
    backend, isa, path = case
    if isa in BF16_NATIVE and dtype != "bf16":
        pytest.skip(f"the {isa} kernels differ from avx512 for bf16 only")
    dt = DTYPES[dtype]
    g = torch.Generator().manual_seed(3)
    T, B, H = 5, 16, 40
    Y = torch.relu(torch.randn(T, B, H, generator=g, dtype=torch.float64)).to(dt)
    w = (0.3 * torch.randn(H, H, generator=g, dtype=torch.float64) / H**0.5).to(dt)
    dY = torch.randn(T, B, H, generator=g, dtype=torch.float64)
    dead, live = Y == 0, Y > 0
    poison = torch.rand(T, B, H, generator=g) < 0.3
    dY[dead & poison] = float("inf")
    dY[0][dead[0] & ~poison[0]] = float("nan")
    dY = dY.to(dt)
    dh_n = torch.randn(B, H, generator=g, dtype=torch.float64).to(dt)
    mod = fused_rnn.backends.cpu if backend == "cpu" else reference
    with num_threads(2), _ctx(isa, path):
        dA, dh0 = mod.backward(dY, dh_n, Y, w, None, False, "relu")
    assert torch.equal(dA[dead], torch.zeros_like(dA[dead])), "a dead unit passed a non-finite gradient"
    assert torch.isfinite(dA).all() and torch.isfinite(dh0).all()
    assert (dA[live] != 0).any()
    if backend == "cpu" and dt in (torch.float32, torch.float64):
        rA, rh0 = reference.backward(dY, dh_n, Y, w, None, False, "relu")
        torch.testing.assert_close(dA, rA, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(dh0, rh0, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_nan_state_still_passes_gradient(case: tuple) -> None:
    """The other half of threshold_backward: a NaN state (NaN <= 0 is false) passes g, as nn.RNN does."""
    backend, isa, path = case
    if isa in BF16_NATIVE:
        pytest.skip("fp32 only")
    T, B, H = 3, 2, 8
    Y = torch.ones(T, B, H)
    Y[1, 0, 3] = float("nan")
    dY = torch.ones(T, B, H)
    mod = fused_rnn.backends.cpu if backend == "cpu" else reference
    with _ctx(isa, path):
        dA, _ = mod.backward(dY, torch.zeros(B, H), Y, torch.zeros(H, H), None, False, "relu")
    assert dA[1, 0, 3] == 1.0
