"""The `native` path: PyTorch's own RNN kernels, exactly what ``torch.nn.RNN`` runs, over the whole stack.

``torch._VF.rnn_tanh`` / ``rnn_relu`` (the same functions as ``torch.rnn_tanh`` / ``rnn_relu``; cuDNN on CUDA,
ATen's CPU kernels on the CPU) take x and the weights, not the pre-activations P, so this path sits beside the fused
stack (fused_rnn/stack.py) at the module level, not inside the backend contract. Same arguments, same weights list
(nn.RNN's ``_flat_weights_names`` order), same dropout (ATen's, from the global RNG), same autocast behaviour (the
op is on autocast's lower-precision list; it is called with autocast as the caller left it), so outputs and
gradients equal nn.RNN's bit for bit on the same device.

Input forms, as nn.RNN takes them:
  - padded [T, B, I] / [B, T, I] (batch_first) / unbatched (already unsqueezed by the module): the dense op;
  - PackedSequence: the packed op on (data, batch_sizes), hx permuted by the module as nn.RNN does;
  - ``lengths=`` (fused_rnn's extension): pack_padded_sequence(enforce_sorted=False) -> the packed op ->
    pad_packed_sequence(total_length=T): the results of nn.RNN on the packed batch, re-padded (0 at padded steps,
    h_n at each sequence's last valid step -- the fused path's semantics).

CUDA: cuDNN wants one flat weight buffer; ``fused_rnn.RNN`` keeps RNNBase's ``flatten_parameters`` (re-run on
``_apply``, i.e. ``.to()`` / ``.cuda()`` / ``.half()``) so the parameters are views into it and cuDNN uses it
without re-packing per call. cuDNN refuses backward in eval mode; when grad is required in eval mode on CUDA this
path calls the op with ``train=True, dropout=0`` (eval semantics: no dropout), so backward works.

torch.compile: ``aten::rnn_tanh`` is CompositeImplicitAutograd and decomposes into per-step ops, so a compiled
graph is unrolled over T and recompiles for every new T. `auto` never takes this path under torch.compile or
torch.export (select.choose_path); ``backend="native"`` runs it there when forced.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .functional import check_lengths


def native_weights(module: torch.nn.RNNBase) -> list[Tensor]:
    """The parameters in nn.RNN's flat order (w_ih, w_hh[, b_ih, b_hh] per layer and direction), read by name."""
    return [getattr(module, name) for name in module._flat_weights_names]


def run_native_stack(module: torch.nn.RNNBase, x: Tensor, hx: Tensor, batch_sizes: Tensor | None,
                     lengths: Tensor | None, grad_needed: bool, eager: bool | None = None) -> tuple[Tensor, Tensor]:
    """One call of PyTorch's RNN op over every layer and direction.

    Args:
        module: the fused_rnn.RNN (its options and parameters).
        x: packed data [N, I] when ``batch_sizes`` is given, else batched input [T, B, I] ([B, T, I] batch_first).
        hx: [L·D, B, H], already permuted to the packed order for PackedSequence input (as nn.RNN does).
        batch_sizes: the PackedSequence's batch_sizes [T] (CPU int64), or None.
        lengths: [B] per-sequence lengths for padded input (fused_rnn's ``lengths=``), or None.
        grad_needed: grad is enabled and something requires grad (decides the eval-mode CUDA workaround).
        eager: no torch.compile / torch.export trace is running (None: ask torch.compiler.is_compiling()).
    Returns:
        (output, h_n): output like x (packed data [N, D·H], or [T, B, D·H] / [B, T, D·H]); h_n [L·D, B, H].
    """
    if eager is None:
        eager = not torch.compiler.is_compiling()
    if not eager:
        # Skipped while tracing (weakrefs): the graph reads the parameters by name.
        weights = native_weights(module)
    else:
        # nn.RNN.forward's own two steps (its _update_flat_weights, without the is_scripting() frame): re-read (on
        # CUDA re-flatten) the parameters if one was replaced since the last call, then pass the refreshed list.
        # (Read by name instead, 4 getattr per layer and direction cost 2 µs for one layer, 12 µs for three
        # bidirectional ones, on a call nn.RNN makes in 35 µs: T1 B8 H16, 2-core Intel Emerald Rapids VM, 2026-12-07.)
        if module._weights_have_changed():
            module._init_flat_weights()
        weights = module._flat_weights
    training, dropout = module.training, float(module.dropout)
    if not training and grad_needed and x.is_cuda:
        # cuDNN: "cudnn RNN backward can only be called in training mode". Training mode without dropout computes
        # the eval-mode function and keeps what backward needs.
        training, dropout = True, 0.0
    # torch.rnn_tanh is torch._VF.rnn_tanh without _VF's __getattr__ frame (~1 µs of a 30 µs T1 call right after
    # the op, 2-core Intel Emerald Rapids VM, 2026-12-08)
    op = torch.rnn_tanh if module.nonlinearity == "tanh" else torch.rnn_relu
    args = (weights, module.bias, module.num_layers, dropout, training, module.bidirectional)
    if batch_sizes is not None:
        out, h_n = op(x, batch_sizes, hx, *args)
        return out, h_n
    if lengths is None:
        out, h_n = op(x, hx, *args, module.batch_first)
        return out, h_n
    T = x.shape[1] if module.batch_first else x.shape[0]
    B = x.shape[0] if module.batch_first else x.shape[1]
    lengths = check_lengths(lengths, T, B)
    packed = pack_padded_sequence(x, lengths.cpu(), batch_first=module.batch_first, enforce_sorted=False)
    h_sorted = hx.index_select(1, packed.sorted_indices.to(hx.device))
    data, h_n = op(packed.data, packed.batch_sizes, h_sorted, *args)
    out, _ = pad_packed_sequence(PackedSequence(data, packed.batch_sizes, packed.sorted_indices,
                                                packed.unsorted_indices),
                                 batch_first=module.batch_first, total_length=T)
    return out, h_n.index_select(1, packed.unsorted_indices.to(h_n.device))
