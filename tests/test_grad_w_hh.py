"""dW_hh's summation error at small H (fused_rnn/recurrence.grad_w_hh): torch's CPU GEMM sums the T·B rows in one
running chain when H < ~15, so one addmm over all rows had 15-37 eps (relative to max |dW_hh|) where nn.RNN, which
sums per step, has ~5; found by the differential hunt (fp32, H=5, B=1753, T=6: grad_weight_hh error 1.24e-4 against
the tolerance rule's 1.11e-4). grad_w_hh now sums such rows in chunks of 1024. Shapes: T time, B batch, H hidden."""

from __future__ import annotations

import sys

import pytest
import torch

import fused_rnn.recurrence  # noqa: F401  (the module; the package exports a function of the same name)

R = sys.modules["fused_rnn.recurrence"]
EPS32 = torch.finfo(torch.float32).eps


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("H,B,T", [(5, 1753, 6), (10, 1698, 6), (4, 2, 3000), (7, 300, 9)],
                         ids=["H5-B1753-T6", "H10-B1698-T6", "H4-B2-T3000", "H7-B300-T9"])
def test_small_h_error_stays_near_blocked_sums(H: int, B: int, T: int, reverse: bool) -> None:
    """fp32 error vs the fp64 sum <= 10 eps · max|dW_hh| (measured 5.6-8.1 with the chunks, 15-36 without)."""
    g = torch.Generator().manual_seed(H * 1000 + B)
    dA = torch.randn(T, B, H, generator=g)
    Y = torch.randn(T, B, H, generator=g).tanh()
    h0 = torch.randn(B, H, generator=g)
    exact = R.grad_w_hh(dA.double(), Y.double(), h0.double(), None, reverse)
    got = R.grad_w_hh(dA, Y, h0, None, reverse)
    err = float((got.double() - exact).abs().max() / exact.abs().max())
    assert err <= 10 * EPS32, f"dW_hh error {err / EPS32:.1f} eps"


def test_chunked_sum_is_the_same_sum() -> None:
    """The chunks cover every row once, with lengths and reverse too (dA and Y zero at padded steps, as the backend
    contract gives them): fp64 results equal Σ_t dA_tᵀ S_t built the readable way."""
    g = torch.Generator().manual_seed(5)
    T, B, H = 40, 60, 6  # (T-1)·B = 2340 rows: three chunks, the last partial
    dA = torch.randn(T, B, H, generator=g, dtype=torch.float64)
    Y = torch.randn(T, B, H, generator=g, dtype=torch.float64)
    h0 = torch.randn(B, H, generator=g, dtype=torch.float64)
    L = torch.randint(1, T + 1, (B,), generator=g)
    pad = (torch.arange(T).unsqueeze(1) >= L.unsqueeze(0)).unsqueeze(2)  # [T, B, 1]: the contract's zeros
    dA, Y = dA.masked_fill(pad, 0.0), Y.masked_fill(pad, 0.0)
    for reverse in (False, True):
        S = R.predecessor_states(Y, h0, L, reverse)
        want = torch.einsum("tbi,tbj->ij", dA, S)
        torch.testing.assert_close(R.grad_w_hh(dA, Y, h0, L, reverse), want, rtol=1e-12, atol=1e-12)
