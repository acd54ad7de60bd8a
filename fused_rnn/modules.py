"""``fused_rnn.RNN``: a drop-in for ``torch.nn.RNN`` whose recurrence runs on a fused backend.

It subclasses ``torch.nn.RNN``, so constructor checks, error messages, parameter names/shapes/registration order,
initialisation, ``state_dict``, pickling and ``extra_repr`` are the installed torch's own, for every torch version.
Only ``forward`` differs: it reduces every input form (PackedSequence, unbatched, batch_first) to a time-major
``(T, B, I)`` tensor plus ``lengths``, runs layers × directions through ``elman_layer``, and assembles
``(output, h_n)`` exactly as nn.RNN does. No math here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .backends.select import BACKEND_NAMES
from .functional import check_lengths, elman_layer


class RNN(nn.RNN):
    r"""Elman RNN, ``h_t = f(x_t W_ihᵀ + b_ih + h_{t-1} W_hhᵀ + b_hh)`` with f = tanh or relu.

    Same arguments as :class:`torch.nn.RNN` plus ``backend`` ("auto", "reference", "cpu", "cuda", "triton").

    Inputs: ``input`` [T, B, I] ([B, T, I] with batch_first; [T, I] unbatched; or a PackedSequence),
    ``hx`` [num_layers·D, B, H] ([num_layers·D, H] unbatched), and optionally -- beyond nn.RNN -- ``lengths`` [B]
    for padded batched input (steps t >= lengths[b] are padding: output 0 there, h_n taken at the last valid step,
    the same results as packing the batch).
    Outputs: ``output`` [T, B, D·H] (or a PackedSequence), ``h_n`` [num_layers·D, B, H]; D = 2 if bidirectional.
    """

    def __init__(self, *args, backend: str = "auto", **kwargs) -> None:
        if backend != "auto" and backend not in BACKEND_NAMES:
            raise ValueError(f"fused_rnn: unknown backend {backend!r}; choose one of {('auto',) + BACKEND_NAMES}")
        super().__init__(*args, **kwargs)
        self.backend = backend

    def flatten_parameters(self) -> None:
        """No-op: fused_rnn reads the parameters directly (kept for drop-in compatibility with nn.RNN)."""

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.nonlinearity != "tanh":
            s += f", nonlinearity={self.nonlinearity!r}"
        if getattr(self, "backend", "auto") != "auto":
            s += f", backend={self.backend!r}"
        return s

    def __setstate__(self, d):
        super().__setstate__(d)
        if "backend" not in self.__dict__:
            self.backend = "auto"

    def forward(self, input, hx: Tensor | None = None, lengths: Tensor | None = None):  # noqa: A002 (nn.RNN's name)
        self._update_flat_weights()
        num_directions = 2 if self.bidirectional else 1
        orig_input = input
        batch_sizes = None
        sorted_indices = unsorted_indices = None
        is_batched = True
        batch_dim = 0 if self.batch_first else 1
        if isinstance(orig_input, PackedSequence):
            if lengths is not None:
                raise ValueError("fused_rnn: lengths= is for padded input; a PackedSequence carries its own")
            input, batch_sizes, sorted_indices, unsorted_indices = input
            max_batch_size = int(batch_sizes[0])
            if hx is not None:
                hx = self.permute_hidden(hx, sorted_indices)
        else:
            if not isinstance(input, Tensor):
                raise TypeError(f"RNN: expected input to be a Tensor or PackedSequence, got {type(input).__name__}")
            if input.dim() not in (2, 3):
                raise ValueError(f"RNN: Expected input to be 2D or 3D, got {input.dim()}D tensor instead")
            is_batched = input.dim() == 3
            if not is_batched:
                if lengths is not None:
                    raise ValueError("fused_rnn: lengths= needs batched (3-D) input")
                input = input.unsqueeze(batch_dim)
                if hx is not None:
                    if hx.dim() != 2:
                        raise RuntimeError(
                            f"For unbatched 2-D input, hx should also be 2-D but got {hx.dim()}-D tensor")
                    hx = hx.unsqueeze(1)
            elif hx is not None and hx.dim() != 3:
                raise RuntimeError(f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor")
            max_batch_size = input.size(0) if self.batch_first else input.size(1)
        if hx is None:
            hx = torch.zeros(self.num_layers * num_directions, max_batch_size, self.hidden_size,
                             dtype=input.dtype, device=input.device)
        self.check_forward_args(input, hx, batch_sizes)
        # RuntimeError, the type nn.RNN raises for these (from its kernels, with less clear messages).
        if hx.dtype != input.dtype and not torch.is_autocast_enabled(input.device.type):
            raise RuntimeError(f"fused_rnn: hx dtype ({hx.dtype}) does not match input dtype ({input.dtype})")
        if hx.device != input.device:
            raise RuntimeError(
                f"fused_rnn: hx is on {hx.device} but input is on {input.device}; move both to one device")

        # -> canonical time-major x [T, B, I] and lengths [B] (or None)
        if batch_sizes is not None:
            x, seq_lengths = pad_packed_sequence(
                PackedSequence(input, batch_sizes, None, None), batch_first=False)
        else:
            x = input.transpose(0, 1) if self.batch_first else input
            seq_lengths = None
            if lengths is not None:
                seq_lengths = check_lengths(lengths, x.shape[0], x.shape[1])
        if x.shape[0] == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")

        output, h_n = self._run_layers(x, hx, seq_lengths)

        if batch_sizes is not None:
            packed = pack_padded_sequence(output, seq_lengths, batch_first=False, enforce_sorted=True)
            out = PackedSequence(packed.data, batch_sizes, sorted_indices, unsorted_indices)
            return out, self.permute_hidden(h_n, unsorted_indices)
        if self.batch_first:
            output = output.transpose(0, 1).contiguous()
        if not is_batched:
            output = output.squeeze(batch_dim)
            h_n = h_n.squeeze(1)
        return output, self.permute_hidden(h_n, unsorted_indices)

    def _layer_weights(self, layer: int, direction: int) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        sfx = f"_l{layer}{'_reverse' if direction == 1 else ''}"
        w_ih = getattr(self, "weight_ih" + sfx)
        w_hh = getattr(self, "weight_hh" + sfx)
        b_ih = getattr(self, "bias_ih" + sfx) if self.bias else None
        b_hh = getattr(self, "bias_hh" + sfx) if self.bias else None
        return w_ih, w_hh, b_ih, b_hh

    def _run_layers(self, x: Tensor, hx: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
        """x [T, B, I], hx [L·D, B, H], lengths [B] | None -> (output [T, B, D·H], h_n [L·D, B, H])."""
        num_directions = 2 if self.bidirectional else 1
        if lengths is not None and lengths.device != x.device:
            lengths = lengths.to(x.device, non_blocking=True)  # moved once for all layers
        h_n = []
        layer_input = x
        for layer in range(self.num_layers):
            outs = []
            for direction in range(num_directions):
                w_ih, w_hh, b_ih, b_hh = self._layer_weights(layer, direction)
                y, h = elman_layer(layer_input, hx[layer * num_directions + direction], w_ih, w_hh, b_ih, b_hh,
                                   lengths, direction == 1, self.nonlinearity, self.backend)
                outs.append(y)
                h_n.append(h)
            layer_input = outs[0] if num_directions == 1 else torch.cat(outs, dim=2)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        return layer_input, torch.stack(h_n, 0)
