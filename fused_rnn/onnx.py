"""ONNX export of ``fused_rnn.RNN`` to the standard ONNX ``RNN`` operator, under both of torch's exporters.

The exported model needs nothing of fused_rnn (nor torch) at inference time: each layer becomes one ONNX ``RNN``
node (both directions of a bidirectional layer in one node), as torch's own exporter writes ``torch.nn.RNN``.

    fused_rnn.onnx.export_onnx(model, (x,), "rnn.onnx")                  # dynamo exporter, dynamic T and B
    torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=...,       # the same by hand
                      custom_translation_table=fused_rnn.onnx_translations())

How each exporter sees the module (``RNN.forward`` asks ``exporting()`` / ``legacy_exporting()``):

* **dynamo exporter** (``torch.onnx.export(..., dynamo=True)``, torch's default). ``torch.export`` traces the module;
  during ONNX export each layer calls one layer-level op, ``fused_rnn::onnx_rnn_layer(x, hx, weights, lengths, ...)``
  (defined here, a ``torch.library.custom_op`` whose eager implementation is the ordinary fused layer and which has a
  fake implementation), instead of the fused ops, which take pre-activations P and cannot express an ``RNN`` node.
  ``onnx_translations()`` maps it to ``RNN`` with W = w_ih, R = w_hh, B = concat(b_ih, b_hh) (omitted for
  ``bias=False``: the ONNX default B is 0), ``sequence_lens`` = ``lengths=`` (int32), ``initial_h`` = the layer's slice
  of hx, ``activations`` Tanh/Relu, ``direction`` forward or bidirectional. ``fold_weights`` (which ``export_onnx``
  calls) turns the weights' Unsqueeze/Concat into stored initializers at any size. Outside ONNX export (eager,
  torch.compile, torch.export, AOTInductor) nothing changes: the fused ops run.
* **legacy exporter** (``dynamo=False``, TorchScript tracing). The module runs the ``native`` path -- PyTorch's own
  RNN op, what ``nn.RNN`` runs -- so torch's own ONNX symbolic emits ``RNN`` (``legacy_forward``).

Bidirectional layers are **one** node with ``direction="bidirectional"`` (not two): it is the form torch's exporter
gives ``nn.RNN``, so both exporters produce the same graph; a runtime may run the two directions of one node
together; and ``initial_h`` / ``Y_h`` are already the layer's [2, B, H] slice of hx / h_n. ``Y`` [T, 2, B, H] becomes
the layer output [T, B, 2·H] by one Transpose + Reshape (a Squeeze for one direction).

**Variable lengths** (``lengths=``, dynamo exporter): checked against onnxruntime 1.32 (tests/test_onnx.py), its
``RNN`` kernel follows fused_rnn's contract (docs/design.md): the reverse direction runs each sequence from its last
valid step L_b−1 down to 0, outputs are exactly 0 at padded steps, and ``Y_h`` holds the state after the last step
in that order (t = L_b−1 forward, t = 0 reverse) -- for one and two directions. So nothing is refused for lengths.
Outside the contract the two differ: fused_rnn raises for L_b ∉ [1, T]; onnxruntime raises for L_b ∉ [0, T] and
gives an all-zero output and h_n = 0 for L_b = 0. The exported graph has no check of its own (the exporter drops
assertions). PackedSequence input cannot be exported by the dynamo exporter (packing reads sizes on the host): pass
padded input and ``lengths=`` (under the legacy exporter PackedSequence goes to nn.RNN's own code; not tested here).

**What is refused at export, with the reason:** bfloat16 (ONNX ``RNN`` has no bfloat16 type), ``lengths=`` with the
legacy exporter (nn.RNN has no such argument; use the dynamo exporter), PackedSequence with the dynamo exporter.
float16 exports and runs in onnxruntime (tested); float64 exports (ONNX allows it) but onnxruntime's CPU provider has
no float64 ``RNN`` kernel (1.32: "Could not find an implementation for RNN(14)"): export float32 or float16 for it.

``import fused_rnn`` defines the op but imports neither onnx nor onnxscript; ``onnx_translations()`` imports
onnxscript when called. Shapes: T time, B batch, I input, H hidden, D directions, L layers.
"""

from __future__ import annotations

import inspect
import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["export_onnx", "onnx_translations", "fold_weights", "exporting", "legacy_exporting", "ONNX_DTYPES"]

# Element types of ONNX RNN's T constraint (RNN-14): float16, float, double.
ONNX_DTYPES: tuple[torch.dtype, ...] = (torch.float16, torch.float32, torch.float64)


def exporting() -> bool:
    """True while ``torch.onnx.export`` traces the caller (either exporter, either of the dynamo exporter's capture
    strategies). Called by every ``RNN.forward``, so it is cheap: 1.3 µs, where ``torch.onnx.is_in_onnx_export()``
    alone took 5.8 µs (it runs two imports per call; best of 7 × 100k calls, 2-core CPU under load ~7, 2026-12-01).

    - No ``torch.onnx`` imported yet: no export can be running (and a forward does not pull torch.onnx in).
    - The dynamo exporter sets a module flag for the whole export (torch 2.14 and 2.11:
      ``torch.onnx._internal.exporter._flags._is_onnx_exporting``), read directly. Besides being cheap, this works
      where ``is_in_onnx_export()`` does not: Dynamo folds that call to False, so when the exporter falls back to
      ``torch.export(strict=True)`` (after the default non-strict capture failed, e.g. on one of this module's clear
      errors) the fallback would trace the fused ops and fail later with "No ONNX function found for
      fused_rnn.elman_fwd" instead of raising the same clear error.
    - The legacy exporter traces with ``torch.jit``: the public ``is_in_onnx_export()`` is asked only then.
    - A torch without that flag: the public ``is_in_onnx_export()`` on every call.
    """
    onnx = sys.modules.get("torch.onnx")
    if onnx is None:
        return False
    flags = sys.modules.get("torch.onnx._internal.exporter._flags")
    if flags is not None and hasattr(flags, "_is_onnx_exporting"):
        if flags._is_onnx_exporting:
            return True
        return torch.jit.is_tracing() and bool(onnx.is_in_onnx_export())
    return bool(onnx.is_in_onnx_export())


def legacy_exporting() -> bool:
    """True while the legacy TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``) traces."""
    return exporting() and torch.jit.is_tracing()


# ---------------------------------------------------------------------------------------------------------------
# The layer-level op that the dynamo exporter sees and onnx_translations() maps to ONNX RNN.
# The schema is written out (not inferred from annotations): identical on torch 2.11 and 2.14, independent of
# `from __future__ import annotations`.
# ---------------------------------------------------------------------------------------------------------------

@torch.library.custom_op(
    "fused_rnn::onnx_rnn_layer", mutates_args=(),
    schema="(Tensor x, Tensor hx, Tensor[] weights, Tensor? lengths, str nonlinearity, bool bidirectional, "
           "bool has_bias, str backend) -> (Tensor, Tensor)")
def onnx_rnn_layer(x: Tensor, hx: Tensor, weights: list[Tensor], lengths: Tensor | None, nonlinearity: str,
                   bidirectional: bool, has_bias: bool, backend: str) -> tuple[Tensor, Tensor]:
    """One layer, all its directions, time-major: what one ONNX ``RNN`` node computes.

    Args:
        x: [T, B, I] layer input.
        hx: [D, B, H] initial states (forward direction first).
        weights: nn.RNN's flat order for this layer: [w_ih [H, I], w_hh [H, H], (b_ih [H], b_hh [H])] per direction,
            forward direction first; the biases only when ``has_bias``.
        lengths: [B] int64 in [1, T], or None (every sequence has T steps).
        nonlinearity: "tanh" or "relu".
        bidirectional: D = 2 when True, else 1.
        has_bias: whether ``weights`` holds the biases.
        backend: the fused backend that computes the eager result ("auto", "cpu", ...).
    Returns:
        Y: [T, B, D·H] (forward direction's H columns first; 0 at padded steps), h_n: [D, B, H].

    Eager implementation: the ordinary fused layer (``elman_layer``) per direction. No autograd formula: the op
    exists for export (inference); training runs the fused stack.
    """
    from .functional import elman_layer  # here, not at import: functional imports the backends

    ys, hs = [], []
    for d, (w_ih, w_hh, b_ih, b_hh) in enumerate(_split_weights(weights, bidirectional, has_bias)):
        y, h = elman_layer(x, hx[d], w_ih, w_hh, b_ih, b_hh, lengths, d == 1, nonlinearity, backend)
        ys.append(y)
        hs.append(h)
    return torch.cat(ys, 2) if len(ys) > 1 else ys[0], torch.stack(hs, 0)


@onnx_rnn_layer.register_fake
def _onnx_rnn_layer_fake(x, hx, weights, lengths, nonlinearity, bidirectional, has_bias, backend):
    D = 2 if bidirectional else 1
    H = weights[1].shape[0]
    return x.new_empty(x.shape[0], x.shape[1], D * H), hx.new_empty(D, x.shape[1], H)


def _split_weights(weights: Sequence[Any], bidirectional: bool, has_bias: bool) -> list[tuple]:
    """Per direction (w_ih, w_hh, b_ih | None, b_hh | None) from the layer's flat weight list."""
    D = 2 if bidirectional else 1
    k = 4 if has_bias else 2
    if len(weights) != D * k:
        raise ValueError(f"fused_rnn.onnx_rnn_layer: expected {D * k} weights for {D} direction(s) "
                         f"{'with' if has_bias else 'without'} bias, got {len(weights)}")
    out = []
    for d in range(D):
        w = list(weights[d * k:(d + 1) * k])
        out.append((w[0], w[1], w[2], w[3]) if has_bias else (w[0], w[1], None, None))
    return out


# ---------------------------------------------------------------------------------------------------------------
# What RNN.forward calls while an exporter traces it.
# ---------------------------------------------------------------------------------------------------------------

def check_dynamo_export(module: nn.RNNBase, input: Any) -> None:  # noqa: A002 (nn.RNN's name)
    """Refuse, with the reason, what the dynamo exporter cannot turn into ONNX RNN nodes (called first in forward)."""
    from torch.nn.utils.rnn import PackedSequence

    if isinstance(input, PackedSequence):
        raise NotImplementedError(
            "fused_rnn: ONNX export (dynamo exporter) of PackedSequence input is not supported -- packing reads the "
            "batch sizes on the host. Export padded input with lengths= (it becomes ONNX RNN's sequence_lens), or "
            "use the legacy exporter (dynamo=False), which exports PackedSequence as nn.RNN does")


def run_layers(module: nn.RNNBase, x: Tensor, hx: Tensor, lengths: Tensor | None,
               amp_dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    """The stack during dynamo ONNX export: one ``onnx_rnn_layer`` op (→ one ONNX RNN node) per layer.

    x [T, B, I] time-major, hx [L·D, B, H], lengths [B] | None -> (output [T, B, D·H], h_n [L·D, B, H]).
    """
    if x.dtype not in ONNX_DTYPES:
        raise TypeError(f"fused_rnn: ONNX RNN has no {x.dtype} type (it takes float16, float32 or float64); "
                        f"export the model in float32, e.g. model.float()")
    D = 2 if module.bidirectional else 1
    h_n = []
    layer_input = x
    for layer in range(module.num_layers):
        weights: list[Tensor] = []
        for d in range(D):
            w_ih, w_hh, b_ih, b_hh = module._layer_weights(layer, d, amp_dtype)
            weights += [w_ih, w_hh] + ([b_ih, b_hh] if module.bias else [])
        y, h = torch.ops.fused_rnn.onnx_rnn_layer(layer_input, hx[layer * D:(layer + 1) * D], weights, lengths,
                                                  module.nonlinearity, D == 2, bool(module.bias),
                                                  "auto" if module.backend == "native" else module.backend)
        h_n.append(h)
        layer_input = y
        if module.dropout > 0 and module.training and layer < module.num_layers - 1:
            layer_input = F.dropout(layer_input, module.dropout, training=True)
    return layer_input, torch.cat(h_n, 0)


def legacy_forward(module: nn.RNNBase, input: Any, hx: Tensor | None, lengths: Tensor | None):  # noqa: A002
    """The whole forward under the legacy exporter: PyTorch's own RNN op, so torch's symbolic emits ONNX RNN.

    The one place the legacy route is decided; it runs nn.RNN's own forward on this module (an RNNBase with the
    same mode, options and flat weights), i.e. ``torch._VF.rnn_tanh`` / ``rnn_relu`` -- the ``native`` path.
    """
    if lengths is not None:
        raise NotImplementedError(
            "fused_rnn: lengths= cannot be exported by the legacy ONNX exporter (dynamo=False), whose RNN export is "
            "nn.RNN's and nn.RNN has no lengths argument. Use the dynamo exporter: fused_rnn.onnx.export_onnx(...) "
            "or torch.onnx.export(..., dynamo=True, custom_translation_table=fused_rnn.onnx_translations())")
    return nn.RNN.forward(module, input, hx)


# ---------------------------------------------------------------------------------------------------------------
# The translation (onnxscript, imported on call) and the convenience wrapper.
# ---------------------------------------------------------------------------------------------------------------

def onnx_translations() -> dict[Callable, Callable]:
    """The dynamo exporter's translation table for fused_rnn: ``{torch.ops.fused_rnn.onnx_rnn_layer.default: fn}``.

    Pass it as ``torch.onnx.export(..., dynamo=True, custom_translation_table=fused_rnn.onnx_translations())``
    (merge it with your own entries if you have some). Needs onnxscript (imported here, not by ``import fused_rnn``).
    """
    return {torch.ops.fused_rnn.onnx_rnn_layer.default: _make_translation()}


def _make_translation() -> Callable:
    try:
        from onnxscript import opset18 as op
    except ImportError as e:
        raise ImportError("fused_rnn: ONNX export with the dynamo exporter needs onnxscript (and onnx): "
                          "pip install onnx onnxscript") from e

    def fused_rnn_onnx_rnn_layer(x, hx, weights, lengths=None, nonlinearity="tanh", bidirectional=False,
                                 has_bias=True, backend="auto"):
        """x [T, B, I], hx [D, B, H], weights, lengths [B] -> (Y [T, B, D·H], Y_h [D, B, H]) as one ONNX RNN node."""
        per_dir = _split_weights(weights, bidirectional, has_bias)
        D = len(per_dir)
        hidden = weights[1].shape[0]
        if not isinstance(hidden, int):
            raise ValueError("fused_rnn: the hidden size must be static for ONNX RNN's hidden_size attribute")
        axis0 = op.Constant(value_ints=[0])

        def stack(ts):  # D tensors [*] -> [D, *]
            ts = [op.Unsqueeze(t, axis0) for t in ts]
            return ts[0] if D == 1 else op.Concat(*ts, axis=0)

        W = stack([w[0] for w in per_dir])
        R = stack([w[1] for w in per_dir])
        B = stack([op.Concat(w[2], w[3], axis=0) for w in per_dir]) if has_bias else None
        seq_lens = op.Cast(lengths, to=6) if lengths is not None else None  # 6 = INT32, ONNX RNN's T1
        act = {"tanh": "Tanh", "relu": "Relu"}[nonlinearity]
        Y, Y_h = op.RNN(x, W, R, B, seq_lens, hx, hidden_size=hidden, activations=[act] * D,
                        direction="bidirectional" if D == 2 else "forward")
        # Y [T, D, B, H] -> [T, B, D·H] (forward direction's columns first, as nn.RNN concatenates)
        if D == 1:
            Y = op.Squeeze(Y, op.Constant(value_ints=[1]))
        else:
            Y = op.Reshape(op.Transpose(Y, perm=[0, 2, 1, 3]), op.Constant(value_ints=[0, 0, -1]))
        return Y, Y_h

    return fused_rnn_onnx_rnn_layer


def export_onnx(
    model: nn.Module,
    args: tuple[Any, ...],
    f: str | os.PathLike | None = None,
    *,
    kwargs: Mapping[str, Any] | None = None,
    dynamo: bool = True,
    dynamic_shapes: Any = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    **export_kwargs: Any,
):
    """Export ``model`` (a ``fused_rnn.RNN`` or any module using one) to ONNX with standard ``RNN`` nodes.

    A thin wrapper of ``torch.onnx.export`` that:
      - exports in eval mode (no dropout; the model's mode is restored afterwards), as the legacy exporter does;
      - dynamo exporter (default): adds ``onnx_translations()`` to ``custom_translation_table``;
      - when ``model`` is itself a ``fused_rnn.RNN`` and ``dynamic_shapes`` is None: makes the sequence length and
        the batch size dynamic -- for the input ([T, B, I], [B, T, I] with batch_first, [T, I] unbatched), ``hx``
        (dim 1) and ``lengths`` (dim 0), names them ``input`` / ``hx`` / ``lengths`` and the outputs ``output`` /
        ``h_n``. The example input then needs T >= 2 and B >= 2 (torch.export specialises sizes 0 and 1). For other
        models pass ``dynamic_shapes`` yourself (it is also turned into ``dynamic_axes`` for the legacy exporter);
      - legacy exporter (``dynamo=False``): ``f`` is required; the module runs PyTorch's own RNN op.

    Args:
        model: the module to export.
        args: the example positional inputs, e.g. ``(x,)`` or ``(x, hx)``.
        f: where to save the model (``.onnx``); None keeps it in the returned program (dynamo only).
        kwargs: example keyword inputs, e.g. ``{"lengths": lengths}`` (dynamo exporter).
        dynamo: which exporter.
        dynamic_shapes, input_names, output_names, **export_kwargs: as ``torch.onnx.export``.
    Returns:
        The ``torch.onnx.ONNXProgram`` (dynamo exporter; saved to ``f`` when given), or None (legacy exporter).
    """
    args = tuple(args)
    kwargs = dict(kwargs or {})
    auto = dynamic_shapes is None and _is_fused_rnn(model)
    if auto:
        dynamic_shapes, names = _rnn_dynamic_shapes(model, args, kwargs)
        input_names = list(input_names) if input_names is not None else names
        output_names = list(output_names) if output_names is not None else ["output", "h_n"]
    elif dynamic_shapes is None and export_kwargs.get("dynamic_axes") is None:
        warnings.warn("fused_rnn.onnx.export_onnx: no dynamic_shapes given for a model that is not a fused_rnn.RNN: "
                      "every input size is fixed to the example's. Pass dynamic_shapes to keep T and B dynamic.",
                      stacklevel=2)
    was_training = model.training
    model.eval()
    try:
        if dynamo:
            table = dict(onnx_translations())
            table.update(export_kwargs.pop("custom_translation_table", None) or {})
            external_data = export_kwargs.pop("external_data", True)
            with warnings.catch_warnings():
                # torch 2.14 warns once per input that shares the batch axis ("The axis name: B will not be used,
                # since it shares the same shape constraints with another axis: B"); the names come out right.
                warnings.filterwarnings("ignore", message=r".*The axis name: .* will not be used")
                program = torch.onnx.export(model, args, kwargs=kwargs or None, dynamo=True,
                                            dynamic_shapes=dynamic_shapes, input_names=input_names,
                                            output_names=output_names, custom_translation_table=table,
                                            **export_kwargs)
            if export_kwargs.get("optimize", True):
                fold_weights(program)
            if f is not None:
                program.save(f, external_data=external_data)
            return program
        if f is None:
            raise ValueError("fused_rnn: the legacy ONNX exporter (dynamo=False) needs a file name f")
        if kwargs:
            raise ValueError(f"fused_rnn: the legacy ONNX exporter takes positional inputs only, got kwargs "
                             f"{sorted(kwargs)} (lengths= needs the dynamo exporter)")
        dynamic_axes = export_kwargs.pop("dynamic_axes", None)
        if dynamic_axes is None and dynamic_shapes is not None:
            if input_names is None:
                raise ValueError("fused_rnn: give input_names with dynamic_shapes for the legacy exporter")
            dynamic_axes = _dynamic_axes(dynamic_shapes, list(input_names), list(output_names or []), auto)
        return torch.onnx.export(model, args, f, dynamo=False, input_names=input_names, output_names=output_names,
                                 dynamic_axes=dynamic_axes, **export_kwargs)
    finally:
        model.train(was_training)


def fold_weights(program: Any) -> None:
    """Fold the weight layout of every RNN node into initializers, in place: W, R, B [D, ...] as stored tensors.

    The translation builds W/R/B from the parameters with Unsqueeze/Concat; the exporter's optimizer folds those only
    up to 8192 input elements (onnxscript 0.7's limit), so larger layers would re-stack their weights on every
    inference. This folds every constant subexpression regardless of size (what the legacy exporter's
    ``do_constant_folding`` does) and drops the initializers left unused. ``export_onnx`` calls it; call it yourself
    on the program ``torch.onnx.export(..., custom_translation_table=onnx_translations())`` returns.
    """
    import onnxscript.optimizer as opt

    unlimited = 1 << 62
    opt.fold_constants(program.model, input_size_limit=unlimited, output_size_limit=unlimited)
    opt.remove_unused_nodes(program.model)


def _is_fused_rnn(model: nn.Module) -> bool:
    from .modules import RNN

    return isinstance(model, RNN)


def _rnn_dynamic_shapes(model: nn.RNNBase, args: tuple, kwargs: dict) -> tuple[dict, list[str]]:
    """dynamic_shapes for fused_rnn.RNN.forward(input, hx=None, lengths=None) with dynamic T and B, and input names."""
    params = list(inspect.signature(model.forward).parameters)  # ["input", "hx", "lengths"]
    given = {**dict(zip(params, args)), **kwargs}
    x = given.get("input")
    if not isinstance(x, Tensor):
        raise TypeError("fused_rnn.onnx.export_onnx: the example input must be a padded Tensor [T, B, I] "
                        "([B, T, I] with batch_first); pass dynamic_shapes yourself for anything else")
    if x.dim() == 2:
        dims = {0: "T"}
    else:
        t_dim, b_dim = (1, 0) if model.batch_first else (0, 1)
        dims = {t_dim: "T", b_dim: "B"}
    for d, name in dims.items():
        if x.shape[d] < 2:
            raise ValueError(f"fused_rnn.onnx.export_onnx: the example input's {name} dimension is {x.shape[d]}; "
                             f"use {name} >= 2 so that torch.export keeps it dynamic (sizes 0 and 1 are specialised)")
    spec: dict[str, Any] = {"input": dims}
    if given.get("hx") is not None:
        spec["hx"] = {1: "B"} if x.dim() == 3 else None
    if given.get("lengths") is not None:
        spec["lengths"] = {0: "B"}
    names = [p for p in params if given.get(p) is not None]
    return {k: spec[k] for k in names}, names


def _dynamic_axes(dynamic_shapes: Any, input_names: list[str], output_names: list[str], rnn: bool) -> dict:
    """The legacy exporter's dynamic_axes from dynamic_shapes (a tuple in input order, or a dict by name)."""
    if isinstance(dynamic_shapes, (tuple, list)):
        shapes = dict(zip(input_names, dynamic_shapes))
    else:
        shapes = dict(dynamic_shapes)
    axes = {name: dict(d) for name, d in shapes.items() if d}
    if rnn and output_names:  # fused_rnn.RNN: output has the input's T/B layout, h_n [L·D, B, H]
        axes[output_names[0]] = dict(shapes["input"])
        if len(output_names) > 1 and len(shapes["input"]) > 1:
            axes[output_names[1]] = {1: "B"}
    return axes
