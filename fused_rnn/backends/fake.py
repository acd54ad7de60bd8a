"""Fake (meta) implementations of the C++ ops, so torch.compile / FakeTensor can trace them as opaque ops."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _ext

if _ext.LOADED:

    @torch.library.register_fake("fused_rnn::elman_fwd")
    def _elman_fwd_fake(P: Tensor, h0: Tensor, w_hh: Tensor, lengths: Tensor | None, reverse: bool,
                        nonlinearity: str, tier: str, allow_tf32: bool) -> tuple[Tensor, Tensor]:
        torch._check(P.dim() == 3, lambda: "fused_rnn.elman_fwd: P must be [T, B, H]")
        return torch.empty_like(P, memory_format=torch.contiguous_format), torch.empty_like(
            h0, memory_format=torch.contiguous_format)

    @torch.library.register_fake("fused_rnn::elman_bwd")
    def _elman_bwd_fake(dY: Tensor, dh_n: Tensor, Y: Tensor, w_hh: Tensor, lengths: Tensor | None, reverse: bool,
                        nonlinearity: str, tier: str, allow_tf32: bool) -> tuple[Tensor, Tensor]:
        torch._check(Y.dim() == 3, lambda: "fused_rnn.elman_bwd: Y must be [T, B, H]")
        return torch.empty_like(Y, memory_format=torch.contiguous_format), torch.empty_like(
            dh_n, memory_format=torch.contiguous_format)
