"""The autograd layer: ``ElmanRecurrence``, a ``torch.autograd.Function`` around a backend's forward/backward.

It saves Y, h0, w_hh and lengths, calls the selected backend's BPTT for dA and dh0, and computes dW_hh with one
GEMM over T·B from the predecessor-state tensor S (docs/design.md):  dW_hh = Σ_t dA_tᵀ S_t.
It is once-differentiable: double backward raises a clear error instead of silently dropping a gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .backends.select import backend_module


def predecessor_states(Y: Tensor, h0: Tensor, lengths: Tensor | None, reverse: bool) -> Tensor:
    """S [T, B, H]: S_t[b] = the state that step t of element b consumed (h0 at its first step).

    Forward: S = cat(h0, Y[:-1]).  Reverse: S = cat(Y[1:], h0), then S[L_b-1, b] = h0[b] for every b with L_b < T --
    a shifted Y alone is wrong whenever h0 != 0 and lengths vary.
    """
    h0u = h0.unsqueeze(0)
    if not reverse:
        return torch.cat([h0u, Y[:-1]], dim=0)
    S = torch.cat([Y[1:], h0u], dim=0)
    if lengths is not None:
        T, B = Y.shape[0], Y.shape[1]
        idx = (lengths - 1).clamp(0, T - 1).view(1, B, 1).expand(1, B, Y.shape[2])
        S = S.scatter(0, idx, h0u)  # one scatter; for L_b == T it rewrites the h0 already there
    return S


class ElmanRecurrence(torch.autograd.Function):
    """(P [T,B,H], h0 [B,H], w_hh [H,H], lengths [B] | None, ...) -> (Y [T,B,H], h_n [B,H])."""

    @staticmethod
    def forward(ctx, P: Tensor, h0: Tensor, w_hh: Tensor, lengths: Tensor | None, reverse: bool,
                nonlinearity: str, backend: str, tier: str, allow_tf32: bool) -> tuple[Tensor, Tensor]:
        P = P.contiguous()
        h0 = h0.contiguous()
        w_hh = w_hh.contiguous()
        T, B, H = P.shape
        if B == 0:  # never reaches a backend: a zero-size CUDA grid is an invalid launch
            Y, h_n = P.new_zeros(T, 0, H), h0.clone()
        else:
            Y, h_n = backend_module(backend).forward(P, h0, w_hh, lengths, reverse, nonlinearity, tier, allow_tf32)
        ctx.save_for_backward(Y, h0, w_hh, lengths)
        ctx.reverse = reverse
        ctx.nonlinearity = nonlinearity
        ctx.backend = backend
        ctx.tier = tier
        ctx.allow_tf32 = allow_tf32
        return Y, h_n

    @staticmethod
    @once_differentiable
    def backward(ctx, dY: Tensor, dh_n: Tensor):
        Y, h0, w_hh, lengths = ctx.saved_tensors
        T, B, H = Y.shape
        if B == 0:
            dA, dh0 = torch.zeros_like(Y), torch.zeros_like(h0)
        else:
            dA, dh0 = backend_module(ctx.backend).backward(
                dY.contiguous(), dh_n.contiguous(), Y, w_hh, lengths, ctx.reverse, ctx.nonlinearity, ctx.tier,
                ctx.allow_tf32)
        dw_hh = None
        if ctx.needs_input_grad[2]:
            S = predecessor_states(Y, h0, lengths, ctx.reverse)
            dw_hh = dA.reshape(T * B, H).t().mm(S.reshape(T * B, H)) if B > 0 else torch.zeros_like(w_hh)
        return dA, dh0, dw_hh, None, None, None, None, None, None


def recurrence(P: Tensor, h0: Tensor, w_hh: Tensor, lengths: Tensor | None = None, reverse: bool = False,
               nonlinearity: str = "tanh", backend: str = "reference", tier: str = "",
               allow_tf32: bool = False) -> tuple[Tensor, Tensor]:
    """Differentiable sequential part: P [T,B,H], h0 [B,H], w_hh [H,H], lengths [B] | None -> (Y, h_n)."""
    return ElmanRecurrence.apply(P, h0, w_hh, lengths, reverse, nonlinearity, backend, tier, allow_tf32)
