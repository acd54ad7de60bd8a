"""The fused stack: layers × directions of ``elman_layer`` (input GEMM + the selected backend's recurrence).

The sibling of fused_rnn/native.py (PyTorch's own kernel over the whole stack); fused_rnn/modules.py reduces every
input form to the canonical time-major ``(T, B, I)`` tensor plus ``lengths`` and calls one of the two.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import concurrency as _conc
from . import diagnostics as _diag
from .functional import _tf32_setting, elman_layer, input_projection, projection_recompute
from .recurrence import recurrence


def run_fused_stack(module: torch.nn.RNNBase, x: Tensor, hx: Tensor, lengths: Tensor | None,
                    amp_dtype: torch.dtype | None, backend: str, tier: str = "") -> tuple[Tensor, Tensor]:
    """x [T, B, I], hx [L·D, B, H], lengths [B] | None -> (output [T, B, D·H], h_n [L·D, B, H]).

    ``backend``: the module's backend ("auto" or a fused name); every layer-direction resolves its backend and tier
    in ``elman_layer`` (select.resolve). ``tier``: a tier the module-level policy chose (select.choose_path, e.g.
    "cluster" on a verified GPU); when given, ``backend`` must be a concrete fused backend and every layer-direction
    runs that backend and tier directly.
    """
    num_directions = 2 if module.bidirectional else 1
    if lengths is not None and lengths.device != x.device:
        lengths = lengths.to(x.device, non_blocking=True)  # moved once for all layers
    # Bidirectional on CUDA: the reverse direction may run on a second stream beside the forward one
    # (fused_rnn/concurrency.py: why, the fork/join, and when it is on).
    concurrent = _conc.enabled(x.device, num_directions)
    h_n = []
    layer_input = x
    for layer in range(module.num_layers):

        def run(direction: int, layer: int = layer, layer_input: Tensor = layer_input) -> tuple[Tensor, Tensor]:
            w_ih, w_hh, b_ih, b_hh = module._layer_weights(layer, direction, amp_dtype)
            if _diag._ACTIVE is not None:  # BPTT diagnostics hook: names this recurrence (layer, direction)
                _diag.set_site(layer, direction)
            h0 = hx[layer * num_directions + direction]
            if not tier:
                return elman_layer(layer_input, h0, w_ih, w_hh, b_ih, b_hh, lengths, direction == 1,
                                   module.nonlinearity, backend)
            P = input_projection(layer_input, w_ih, b_ih, b_hh).contiguous()
            return recurrence(P, h0, w_hh, lengths, direction == 1, module.nonlinearity, backend, tier,
                              _tf32_setting(), consume_p=True,
                              recompute_p=projection_recompute(layer_input, w_ih, b_ih, b_hh))

        if num_directions == 1:
            y, h = run(0)
            h_n.append(h)
            layer_input = y
        else:
            (y, h), (y_rev, h_rev) = _conc.run_pair(x.device, concurrent, lambda: run(0), lambda: run(1),
                                                    (layer_input, hx, lengths))
            h_n += [h, h_rev]
            layer_input = torch.cat((y, y_rev), dim=2)
        if module.dropout > 0 and module.training and layer < module.num_layers - 1:
            layer_input = F.dropout(layer_input, module.dropout, training=True)
    return layer_input, torch.stack(h_n, 0)
