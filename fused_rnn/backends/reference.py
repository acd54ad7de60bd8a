"""The reference backend: plain PyTorch, written to be read. It is the oracle every kernel is tested against.

It mirrors the Elman equations (h_t = f(x_t W_ihᵀ + b_ih + h_{t-1} W_hhᵀ + b_hh), with the input part already in
P) and implements backpropagation through time explicitly -- not through autograd -- so it checks every kernel's
backward. Shapes: T time, B batch, H hidden. Every dtype: fp16/bf16 compute in fp32 and round h_t to the storage
dtype at every step, exactly as the fused kernels do; fp64 computes in fp64.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..precision import compute_dtype

NAME = "reference"
TIERS: tuple[str, ...] = ("",)


def available() -> tuple[bool, str]:
    return True, ""


def supports_device(device: torch.device) -> bool:
    return True


def pick_tier(H: int, B: int, dtype: torch.dtype, device: torch.device) -> str:
    return ""


def activation(a: Tensor, nonlinearity: str) -> Tensor:
    """f(a): tanh or relu."""
    return torch.tanh(a) if nonlinearity == "tanh" else torch.relu(a)


def activation_backward(h: Tensor, g: Tensor, nonlinearity: str) -> Tensor:
    """f'(a) · g expressed through h = f(a) [*]: (1 - h²) · g for tanh; for relu torch's own relu backward
    (threshold_backward, and so nn.RNN's), the select ``h <= 0 ? 0 : g``.

    relu is a select, not g times a 0/1 factor: a dead unit (h = 0) gets 0 even where g is inf or NaN, as in nn.RNN
    (0 · inf = NaN would poison every gradient, e.g. under ``output.sqrt()``, whose derivative at 0 is inf). And it
    tests ``h <= 0`` rather than ``h > 0``, so that a NaN state passes the gradient through, as torch does.
    """
    if nonlinearity == "tanh":
        return (1.0 - h * h) * g
    return torch.where(h <= 0, torch.zeros((), dtype=g.dtype, device=g.device), g)


def _order(T: int, reverse: bool) -> range:
    return range(T - 1, -1, -1) if reverse else range(T)


def forward(
    P: Tensor,
    h0: Tensor,
    w_hh: Tensor,
    lengths: Tensor | None,
    reverse: bool,
    nonlinearity: str,
    tier: str = "",
    allow_tf32: bool = False,
) -> tuple[Tensor, Tensor]:
    """One direction of one layer, forward.

    Args:
        P: [T, B, H] pre-activations x_t W_ihᵀ + b_ih + b_hh.
        h0: [B, H] initial state.
        w_hh: [H, H] recurrent weight (nn.RNN layout: a_t = P_t + h_prev @ w_hhᵀ).
        lengths: [B] int64 on P's device, values in [1, T], or None (every element runs all T steps).
        reverse: run t = L_b-1 .. 0 instead of 0 .. L_b-1.
        nonlinearity: "tanh" or "relu".
    Returns:
        Y: [T, B, H] h_t at valid steps, exactly 0 at padded steps.
        h_n: [B, H] the state after the last step in order.
    """
    T, B, H = P.shape
    acc = compute_dtype(P.dtype)
    w = w_hh.to(acc)
    h = h0.to(acc)  # the state carried to the next step, already rounded to P.dtype (it came from Y or h0)
    Y = torch.zeros_like(P)
    for t in _order(T, reverse):
        a = P[t].to(acc) + h @ w.T
        h_new = activation(a, nonlinearity).to(P.dtype)  # rounded to the storage dtype every step
        if lengths is None:
            Y[t] = h_new
            h = h_new.to(acc)
        else:
            valid = (t < lengths).unsqueeze(1)  # [B, 1]
            Y[t] = torch.where(valid, h_new, torch.zeros_like(h_new))
            h = torch.where(valid, h_new.to(acc), h)
    return Y, h.to(P.dtype)


def forward_into(P: Tensor, h0: Tensor, w_hh: Tensor, lengths: Tensor | None, reverse: bool,
                 nonlinearity: str) -> Tensor:
    """``forward`` with Y written over P [T,B,H] (contiguous) -> h_n [B,H]. The twin of the C++ backend's in-place
    forward: the same values as ``forward``, P then holds Y."""
    Y, h_n = forward(P, h0, w_hh, lengths, reverse, nonlinearity)
    P.copy_(Y)
    return h_n


def backward(
    dY: Tensor,
    dh_n: Tensor,
    Y: Tensor,
    w_hh: Tensor,
    lengths: Tensor | None,
    reverse: bool,
    nonlinearity: str,
    tier: str = "",
    allow_tf32: bool = False,
) -> tuple[Tensor, Tensor]:
    """Backpropagation through time for one direction of one layer.

    g_t = dY_t + (dh_n at the last step in order, else dA_{next(t)} @ w_hh);  dA_t = f'(h_t) ⊙ g_t.

    Args:
        dY: [T, B, H] gradient of the loss w.r.t. Y (ignored at padded steps).
        dh_n: [B, H] gradient w.r.t. h_n.
        Y: [T, B, H] the forward's output (f' is computed from it; nothing is recomputed).
        w_hh, lengths, reverse, nonlinearity: as in forward.
    Returns:
        dA: [T, B, H] gradient w.r.t. the pre-activations (= dP), 0 at padded steps.
        dh0: [B, H] gradient w.r.t. h0.
    """
    T, B, H = Y.shape
    acc = compute_dtype(Y.dtype)
    w = w_hh.to(acc)
    carry = dh_n.to(acc)  # gradient flowing into the state that the next step (in order) consumed; fp32 throughout
    dA = torch.zeros_like(Y)
    for t in reversed(_order(T, reverse)):  # walk the order backwards
        g = dY[t].to(acc) + carry
        da = activation_backward(Y[t].to(acc), g, nonlinearity)
        if lengths is None:
            dA[t] = da.to(Y.dtype)
            carry = da @ w
        else:
            valid = (t < lengths).unsqueeze(1)
            dA[t] = torch.where(valid, da, torch.zeros_like(da)).to(Y.dtype)
            carry = torch.where(valid, da @ w, carry)
    return dA, carry.to(Y.dtype)
