"""``fused_rnn.RNN``: a drop-in for ``torch.nn.RNN`` that runs the fastest verified path for each call.

It subclasses ``torch.nn.RNNBase`` (as nn.RNN does, with nn.RNN's argument handling), so constructor checks, error
messages, parameter names/shapes/registration order, initialisation, ``flatten_parameters`` (cuDNN's flat weight
buffer on CUDA, re-flattened on ``.to()``), ``state_dict``, pickling and ``extra_repr`` are the installed torch's
own, for every torch version. Not ``nn.RNN`` itself: Dynamo refuses to trace any nn.RNN instance ("Attempted to wrap
RNN, GRU, or LSTM"), and fused_rnn.RNN must compile with ``fullgraph=True``.

``forward`` parses the input as nn.RNN does (PackedSequence, unbatched, batch_first, hx), asks
``select.choose_path`` which path runs this call, and runs one of two sibling stacks:
  - **native** (fused_rnn/native.py): PyTorch's own RNN op over the whole stack -- exactly what nn.RNN runs, bit
    for bit; ``backend="native"``, or `auto` where the measured policy (fused_rnn/policy.py) says the fused path
    would not be faster;
  - **fused** (fused_rnn/stack.py): every input form reduced to a time-major ``(T, B, I)`` tensor plus ``lengths``,
    layers × directions through ``elman_layer`` (input GEMM + the backend's recurrence), ``(output, h_n)``
    assembled exactly as nn.RNN does; under torch.autocast it casts as nn.RNN's op does.
``step`` advances a unidirectional module by one time step (autoregressive decoding; never native).

torch.compile: ``torch.compile(rnn, fullgraph=True)`` traces padded input (with or without ``lengths=``); a
PackedSequence compiles with the graph breaks Dynamo forces around (un)packing. Under torch.compile and
torch.export `auto` always runs the fused stack (its C++/CUDA ops are opaque, so a new sequence length reuses the
graph once T is dynamic: ``torch._dynamo.mark_dynamic(x, 0)`` (1 with batch_first), or let Dynamo's automatic
dynamic shapes recompile once), and the policy is not consulted, so no batch-size comparison becomes a guard.
``backend="native"`` compiles too but PyTorch's op decomposes into per-step ops: it recompiles for every T. The
reference backend's Python time loop is unrolled, so it recompiles per T as well. Backend choice, tier and TF32
setting are fixed when the graph is traced (select.resolve).
"""

from __future__ import annotations

import functools
import os
import sys
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import _env, _lazy_compile
from . import autotune as _autotune
from . import diagnostics as _diag
from . import onnx as _onnx
from . import policy as _policy
from .backends import select as _select
from .backends.select import MODULE_BACKENDS, NATIVE, _is_exporting, _resolve_name, choose_path, record_instead, tracing
from .functional import check_lengths
from .native import run_native_stack
from .policy import Decision
from .precision import compute_dtype
from .stack import run_fused_stack


class RNN(nn.RNNBase):
    r"""Elman RNN, ``h_t = f(x_t W_ihᵀ + b_ih + h_{t-1} W_hhᵀ + b_hh)`` with f = tanh or relu.

    Same arguments as :class:`torch.nn.RNN` plus ``backend``: "auto" (default: per call, the fastest verified path
    by the measured policy -- fused_rnn/policy.py), "native" (PyTorch's own kernel, exactly nn.RNN's), or a fused
    backend: "reference", "cpu", "cuda", "triton".

    Inputs: ``input`` [T, B, I] ([B, T, I] with batch_first; [T, I] unbatched; or a PackedSequence),
    ``hx`` [num_layers·D, B, H] ([num_layers·D, H] unbatched), and optionally -- beyond nn.RNN -- ``lengths`` [B]
    for padded batched input (steps t >= lengths[b] are padding: output 0 there, h_n taken at the last valid step,
    the same results as packing the batch).
    Outputs: ``output`` [T, B, D·H] (or a PackedSequence), ``h_n`` [num_layers·D, B, H]; D = 2 if bidirectional.

    ``step(x_t [B, I], hx [num_layers, B, H] | None) -> (y_t [B, H], h_next [num_layers, B, H])``: one time step.

    A subclass of ``nn.RNNBase`` (like nn.RNN), not of ``nn.RNN``: ``isinstance(m, nn.RNN)`` is False.
    """

    def __init__(self, *args, backend: str = "auto", **kwargs) -> None:
        if backend not in MODULE_BACKENDS:
            raise ValueError(f"fused_rnn: unknown backend {backend!r}; choose one of {MODULE_BACKENDS}")
        # nn.RNN's own argument handling (nonlinearity as 4th positional or keyword; proj_size refused), kept word
        # for word so the errors equal the installed nn.RNN's (test_errors.py compares them at run time; identical
        # in torch 2.11 and 2.14). We subclass nn.RNNBase, not nn.RNN: Dynamo refuses every nn.RNN instance.
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if len(args) > 3:
            self.nonlinearity = args[3]
            args = args[:3] + args[4:]
        else:
            self.nonlinearity = kwargs.pop("nonlinearity", "tanh")
        if self.nonlinearity == "tanh":
            mode = "RNN_TANH"
        elif self.nonlinearity == "relu":
            mode = "RNN_RELU"
        else:
            raise ValueError(f"Unknown nonlinearity '{self.nonlinearity}'. Select from 'tanh' or 'relu'.")
        super().__init__(mode, *args, **kwargs)
        self.backend = backend

    # flatten_parameters: RNNBase's own (not overridden). On CUDA with cuDNN it makes the parameters views into one
    # flat buffer, as nn.RNN's are -- at construction and on every _apply (.to(), .cuda(), .half()) -- so the native
    # path's cuDNN call uses them without re-packing; elsewhere it is a no-op. The fused stack reads the parameters
    # by name and does not care whether they are views.

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.nonlinearity != "tanh":
            s += f", nonlinearity={self.nonlinearity!r}"
        if getattr(self, "backend", "auto") != "auto":
            s += f", backend={self.backend!r}"
        return s

    def _forward_args_pass(self, input: Tensor, hx: Tensor, batch_sizes: Tensor | None) -> bool:
        """True when ``check_forward_args`` (RNNBase's, not overridden) and ``_check_hx`` would pass, told from their
        own conditions in one frame: dense input, its dtype the weights', 3 dims, size(-1) = input_size, hx
        [L·D, B, H] of the input's dtype and device. False = ask them (they raise nn.RNN's error, or pass). Their five
        frames cost a T1 call ~3% in the native path (2-core Intel Emerald Rapids VM, 2026-12-07)."""
        if batch_sizes is not None or type(self).check_forward_args is not _RNNBASE_CHECK:
            return False
        w = self._flat_weights[0] if self._flat_weights else None
        if w is None or input.dtype != w.dtype or input.dim() != 3 or input.size(-1) != self.input_size:
            return False
        if hx.dtype != input.dtype or hx.device != input.device:
            return False
        B = input.size(0) if self.batch_first else input.size(1)
        return hx.size() == (self.num_layers * (2 if self.bidirectional else 1), B, self.hidden_size)

    def _weights_have_changed(self) -> bool:
        """RNNBase's test (a flat weight replaced since the flat list was made: torch.func.functional_call swaps
        ``_parameters`` entries behind ``__setattr__``), reading a registered parameter from ``_parameters``
        directly. RNNBase's hasattr + getattr per weight go through ``Module.__getattr__``: 5.4 µs of a 35 µs
        nn.RNN call for one layer (T1 B8 H16), ~0.5 µs here (2-core Intel Emerald Rapids VM, 2026-12-07). A name that
        is not a registered parameter (deleted, or replaced by a plain attribute) takes RNNBase's own lookup."""
        params = self._parameters
        for ref, name in zip(self._flat_weight_refs, self._flat_weights_names, strict=True):
            if name in params:
                weight = params[name]
            else:
                weight = getattr(self, name) if hasattr(self, name) else None
            if weight is not None and ref is not None and ref() is not weight:
                return True
        return False

    def __setstate__(self, d):
        super().__setstate__(d)
        if "backend" not in self.__dict__:
            self.backend = "auto"

    def forward(self, input, hx: Tensor | None = None, lengths: Tensor | None = None):  # noqa: A002 (nn.RNN's name)
        # No self._update_flat_weights() here: the fused stack reads the parameters by name (_layer_weights), never
        # through the weakref'd flat list, and skipping it keeps weakrefs out of what torch.compile traces; the
        # native stack calls it in eager mode, as nn.RNN does.
        d = memo_key = None
        if (not torch.compiler.is_compiling() and not _is_exporting()  # (first: Dynamo folds them, traces no more)
                and type(input) is Tensor and lengths is None and (hx is None or type(hx) is Tensor)
                and input.is_cpu and not torch._C._is_tracing() and _diag._ACTIVE is None
                and not torch.is_autocast_enabled("cpu")
                and (_sys_modules.get("torch.onnx") is None or not _onnx.exporting())):
            # The short way, for an eager dense CPU call: select's memo of decisions answers without select's
            # frames, and where it says native a 3-D call runs nn.RNN's op from here. Each Python frame on the way
            # costs ~1 µs right after the op (it leaves the interpreter's caches cold): the long way took 17 frames
            # to nn.RNN's 21 and ran a T1 B8 H64 inference call at x0.96 of nn.RNN, PyTorch's op called bare x1.62
            # (2-core Intel Emerald Rapids VM, 2026-12-08). Anything else (PackedSequence, lengths=, autocast,
            # a trace or export, diagnostics, autotuning, a memo miss, a check that fails) takes the long way below.
            memo_key = self._memo_key(input, hx)
            if memo_key is not None:
                d = _select._CPU_MEMO.get(memo_key)
                if d is not None:
                    if _select._PATH_LOG is not None:
                        _select._PATH_LOG.append(d)
                    if d.path == NATIVE and input.dim() == 3:
                        h0 = hx if hx is not None else torch.zeros(
                            self.num_layers * (2 if self.bidirectional else 1),
                            input.size(0 if self.batch_first else 1), self.hidden_size, dtype=input.dtype,
                            device=input.device)
                        if self._forward_args_pass(input, h0, None):
                            return run_native_stack(self, input, h0, None, None, False, eager=True)
        # torch.onnx.export is tracing this call: standard ONNX RNN nodes instead of the fused ops (fused_rnn/onnx.py)
        onnx_export = _onnx.exporting()
        if onnx_export:
            if torch.jit.is_tracing():  # the legacy exporter: PyTorch's own RNN op, which torch's symbolic exports
                return _onnx.legacy_forward(self, input, hx, lengths)
            _onnx.check_dynamo_export(self, input)
        call = self._parse(input, hx, lengths)
        amp_dtype = autocast_dtype(call.input.device.type)
        path = d if d is not None else self._choose_path(call, amp_dtype, memo_key=memo_key)
        return self._run(path, call, amp_dtype, onnx_export)

    def _memo_key(self, input: Tensor, hx: Tensor | None) -> tuple | None:
        """The key of select's memo for this eager CPU call (input [T, B, I] / [B, T, I] batch_first / [T, I]
        unbatched; hx or None), no autocast: what the decision reads -- the backend, FUSED_RNN_BACKEND, dtype, B, H,
        layers, directions, the mode, T only below rule 7's floor, threads, ISA class and core kind -- and the
        identities of the functions it calls, so a monkeypatched one or a changed variable misses. None when
        autotuning may be on (set_autotune, FUSED_RNN_AUTOTUNE): the long way, which parses the variable."""
        setting = _autotune._SETTING
        data = _env._DATA  # (os.environ's dict, or None: fused_rnn/_env.py)
        if setting is True or (setting is None and (
                data.get(_AUTOTUNE_KEY) if data is not None else os.environ.get(_autotune.ENV))):
            return None
        # training (_grad_needed, inline: one frame fewer)
        if not torch.is_grad_enabled():
            training = False
        elif input.requires_grad or (hx is not None and hx.requires_grad) or self._modules:
            training = _grad_needed(self, input, hx)
        else:
            training = False
            for p in self._parameters.values():
                if p is not None and p.requires_grad:
                    training = True
                    break
        if input.dim() == 3:
            T, B = (input.size(1), input.size(0)) if self.batch_first else (input.size(0), input.size(1))
        else:  # unbatched [T, I] (or a dimension count _parse rejects: the key then only misses)
            T, B = input.size(0) if input.dim() else 0, 1
        H = self.hidden_size
        floor = _FLOORS.get((H, training))
        if floor is None:
            floor = _FLOORS[(H, training)] = _policy.short_sequence_floor(H, training)
        return (self.backend, input.dtype, B, H, self.num_layers, 2 if self.bidirectional else 1, training,
                T if T < floor else None, torch.get_num_threads(),
                data.get(_BACKEND_KEY) if data is not None else os.environ.get("FUSED_RNN_BACKEND"),
                _policy.cpu_isa(), _policy.cpu_core(), _select._resolve_name, _select._policy_decision,
                _select._decide_cached)

    def explain(self, input, hx: Tensor | None = None, lengths: Tensor | None = None, *,  # noqa: A002
                compiled: bool = False):
        """What this module would run for ``self(input, hx, lengths=lengths)`` here and now, and why, without
        running it: ``fused_rnn.explain(self, input, hx, lengths=lengths)`` (see fused_rnn/_explain.py)."""
        from ._explain import explain

        return explain(self, input, hx, lengths=lengths, compiled=compiled)

    def _parse(self, input, hx: Tensor | None, lengths: Tensor | None) -> _Call:  # noqa: A002
        """nn.RNN's input handling: PackedSequence (hx permuted to the sorted order), unbatched (unsqueezed),
        batch_first; the dimension checks nn.RNN makes before its op. Returns the call in batched form."""
        batch_sizes = None
        sorted_indices = unsorted_indices = None
        is_batched = True
        batch_dim = 0 if self.batch_first else 1
        if isinstance(input, PackedSequence):
            if lengths is not None:
                raise ValueError("fused_rnn: lengths= is for padded input; a PackedSequence carries its own")
            input, batch_sizes, sorted_indices, unsorted_indices = input
            max_batch_size = int(batch_sizes[0])
            if hx is not None:
                hx = self.permute_hidden(hx, sorted_indices)
        else:
            if not isinstance(input, Tensor):
                raise InputTypeError(
                    f"RNN: expected input to be a Tensor or PackedSequence, got {type(input).__name__}")
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
        return _Call(input, hx, lengths, batch_sizes, sorted_indices, unsorted_indices, is_batched, max_batch_size)

    def _run(self, path, call: _Call, amp_dtype: torch.dtype | None, onnx_export: bool = False):
        """Run the parsed call on ``path`` (a policy.Decision, or the traced stand-ins below): native or fused;
        ``onnx_export``: torch.onnx.export (dynamo) is tracing it (the layer-level ops of fused_rnn/onnx.py)."""
        input, hx, lengths, batch_sizes = call.input, call.hx, call.lengths, call.batch_sizes
        sorted_indices, unsorted_indices = call.sorted_indices, call.unsorted_indices
        is_batched, max_batch_size = call.is_batched, call.B
        num_directions = 2 if self.bidirectional else 1
        batch_dim = 0 if self.batch_first else 1
        native = path.native
        if not native and not onnx_export and not tracing() and not _fused_can_run(self, call, amp_dtype):
            # What nn.RNN's op rejects with its own error (a parameter replaced by one of another shape, dtype or
            # device, or set to None; input on another device than the parameters; a malformed PackedSequence), or
            # handles where the fused backends cannot (complex dtypes, torch.func transforms): nn.RNN's op runs
            # instead, so the error, or the result, is nn.RNN's own. (Eager only: traced graphs keep the fused
            # stack and its errors.)
            path = _NATIVE_FALLBACK
            native = True
            record_instead(DROP_IN)

        if native and not onnx_export:  # (an ONNX export runs the layer-level op below, forced native too)
            # nn.RNN's order: zeros in the input's own dtype, the module's checks, then the op, which autocast
            # casts itself (autocast is left as the caller set it).
            if hx is None:
                hx = torch.zeros(self.num_layers * num_directions, max_batch_size, self.hidden_size,
                                 dtype=input.dtype, device=input.device)
            if not self._forward_args_pass(input, hx, batch_sizes):
                self.check_forward_args(input, hx, batch_sizes)
                _check_hx(input, hx, amp_dtype)
            # (grad_needed matters only to the eval-mode cuDNN workaround: not asked on the CPU)
            output, h_n = run_native_stack(self, input, hx, batch_sizes, lengths,
                                           input.is_cuda and _grad_needed(self, input, hx),
                                           eager=path is not _TRACED_NATIVE)
            if batch_sizes is not None:
                return PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices), \
                    self.permute_hidden(h_n, unsorted_indices)
            if not is_batched:
                output = output.squeeze(batch_dim)
                h_n = h_n.squeeze(1)
            return output, h_n

        # Under torch.autocast nn.RNN's op is on the lower-precision list on CPU and CUDA (torch 2.11 and 2.14: CPU
        # bf16 -> bf16 output, fp16 -> fp16): input, hx and weights are cast to the autocast dtype, the parameters
        # stay fp32 (their gradients too), and the dtype checks are skipped. Mirrored here by casting explicitly.
        if amp_dtype is not None:
            input = _amp_cast(input, amp_dtype)
        if hx is None:
            hx = torch.zeros(self.num_layers * num_directions, max_batch_size, self.hidden_size,
                             dtype=input.dtype, device=input.device)
        elif amp_dtype is not None:
            hx = _amp_cast(hx, amp_dtype)
        self.check_forward_args(input, hx, batch_sizes)
        _check_hx(input, hx, amp_dtype)

        # -> canonical time-major x [T, B, I] and lengths [B] (or None)
        if batch_sizes is not None:
            x, seq_lengths = _packed_to_padded(input, batch_sizes)
        else:
            x = input.transpose(0, 1) if self.batch_first else input
            seq_lengths = None
            if lengths is not None:
                seq_lengths = check_lengths(lengths, x.shape[0], x.shape[1])
        if x.shape[0] == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")

        if onnx_export:  # one layer-level op per layer, which onnx_translations() maps to an ONNX RNN node
            output, h_n = _onnx.run_layers(self, x, hx, seq_lengths, amp_dtype)
        elif amp_dtype is None:
            output, h_n = run_fused_stack(self, x, hx, seq_lengths, None, path.path, path.tier)
        else:
            # The casts are done; inside, every op runs in the compute dtype as written (no second cast).
            with torch.autocast(x.device.type, enabled=False):
                output, h_n = run_fused_stack(self, x, hx, seq_lengths, amp_dtype, path.path, path.tier)

        if batch_sizes is not None:
            out = PackedSequence(_padded_to_packed_data(output, seq_lengths), batch_sizes, sorted_indices,
                                 unsorted_indices)
            return out, self.permute_hidden(h_n, unsorted_indices)
        if self.batch_first:
            # nn.RNN's layout: a transposed view (strides (H·D, B·H·D, 1)), not a copy -- no [T, B, H·D] copy per
            # call, and code that relies on nn.RNN's strides sees the same. An in-place edit of it reaches the saved
            # Y's version counter through the view (ElmanRecurrence recomputes).
            output = output.transpose(0, 1)
        if not is_batched:
            output = output.squeeze(batch_dim)
            h_n = h_n.squeeze(1)
        return output, self.permute_hidden(h_n, unsorted_indices)

    def _choose_path(self, call: _Call, amp_dtype: torch.dtype | None, record: bool = True, tune: bool = True,
                     memo_key: tuple | None = None):
        """The policy.Decision for this call (select.choose_path): "native" or the fused backend (+ tier).

        The key: the compute dtype (autocast's for floating inputs other than fp64), B, H, layers × directions and
        the mode (training = grad enabled and the input, hx or a parameter requires grad). With autotuning on
        (fused_rnn/autotune.py) and ``tune``, the policy's decision goes through the autotune cache.
        """
        input, hx = call.input, call.hx
        backend = self.backend
        if torch.compiler.is_compiling() or _is_exporting():  # select.tracing(), one frame fewer per call
            # While tracing: no policy lookup (its comparisons on B would become guards, and native would unroll
            # over T). The backend name is a trace-time constant (select._resolve_name); auto -> the fused stack.
            if _resolve_name(backend, input.device.type)[0] == NATIVE:
                return _TRACED_NATIVE
            return _TracedFused(backend)
        jit_tracing = torch._C._is_tracing()  # (torch.jit.is_tracing() without its is_scripting() call)
        if jit_tracing and _resolve_name(backend, input.device.type)[2]:
            # torch.jit.trace records one path for every later call: `auto` records PyTorch's own op, as nn.RNN's
            # trace does. The policy is not asked there: its first ISA query, a custom op, was recorded and failed
            # the trace ("ArrayRef: invalid index Index = 0; Length = 0"), it saw traced sizes (tensors), and its
            # training/inference split differs between jit.trace's run and its check run (under no_grad).
            return _TRACED_NATIVE
        training = _grad_needed(self, input, hx)
        T = len(call.batch_sizes) if call.batch_sizes is not None else input.size(1 if self.batch_first else 0)
        autotuning = tune and _autotune.enabled()
        dtype = compute_dtype_of(input, amp_dtype)
        tuner = None
        if autotuning:
            def tuner(static):
                return _autotune.tuned(self, call, amp_dtype, dtype, training, static)
        return choose_path(backend, input.device, dtype, call.B, self.hidden_size, self.num_layers,
                           2 if self.bidirectional else 1, training, _diag._ACTIVE is not None, tune=tuner,
                           record=record, traced=None if jit_tracing else False, T=T,
                           memo_key=None if autotuning else memo_key)

    def _layer_weights(self, layer: int, direction: int, amp_dtype: torch.dtype | None = None
                       ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """(w_ih [H, I or D·H], w_hh [H, H], b_ih [H] | None, b_hh [H] | None), cast to amp_dtype when given."""
        sfx = f"_l{layer}{'_reverse' if direction == 1 else ''}"
        w_ih = getattr(self, "weight_ih" + sfx)
        w_hh = getattr(self, "weight_hh" + sfx)
        b_ih = getattr(self, "bias_ih" + sfx) if self.bias else None
        b_hh = getattr(self, "bias_hh" + sfx) if self.bias else None
        if amp_dtype is not None:
            w_ih, w_hh = _amp_cast(w_ih, amp_dtype), _amp_cast(w_hh, amp_dtype)
            b_ih = _amp_cast(b_ih, amp_dtype) if b_ih is not None else None
            b_hh = _amp_cast(b_hh, amp_dtype) if b_hh is not None else None
        return w_ih, w_hh, b_ih, b_hh

    def step(self, x_t: Tensor, hx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One time step through every layer, for autoregressive decoding.

        Args:
            x_t: [B, I] the input at this step ([I] unbatched; ``batch_first`` does not apply -- there is no time
                dimension).
            hx: [num_layers, B, H] the state after the previous step ([num_layers, H] unbatched), or None (zeros).
        Returns:
            y_t: [B, H] the last layer's new state ([H] unbatched) -- what ``forward`` outputs at this step.
            h_next: [num_layers, B, H] every layer's new state ([num_layers, H] unbatched); feed it back as ``hx``.

        Equal to ``forward`` on a length-1 sequence (dropout between layers in training mode included), without the
        sequence machinery: per layer ``h = f(x W_ihᵀ + b_ih + h W_hhᵀ + b_hh)`` as two ``addmm`` plus the
        activation, no backend call, no host synchronisation (the checks read shapes only), so a decoding loop can
        be captured in a CUDA graph. Under torch.autocast it casts like ``forward``. Unidirectional modules only: a
        reverse direction needs the whole sequence.
        """
        if self.bidirectional:
            raise RuntimeError(
                "fused_rnn: RNN.step needs a unidirectional module; a bidirectional RNN's reverse direction starts "
                "from the end of the sequence, so it cannot be advanced one step at a time -- call forward instead")
        if not isinstance(x_t, Tensor):
            raise TypeError(f"fused_rnn: RNN.step expects x_t to be a Tensor, got {type(x_t).__name__}")
        if x_t.dim() not in (1, 2):
            raise ValueError(f"fused_rnn: RNN.step expects x_t of shape [B, I] or [I], got {tuple(x_t.shape)}")
        if x_t.shape[-1] != self.input_size:
            raise RuntimeError(
                f"fused_rnn: RNN.step expects x_t.size(-1) == input_size ({self.input_size}), got {x_t.shape[-1]}")
        batched = x_t.dim() == 2
        x = x_t if batched else x_t.unsqueeze(0)
        B = x.shape[0]
        amp_dtype = autocast_dtype(x.device.type)
        if amp_dtype is not None:
            x = _amp_cast(x, amp_dtype)
        if hx is None:
            h = torch.zeros(self.num_layers, B, self.hidden_size, dtype=x.dtype, device=x.device)
        else:
            if not isinstance(hx, Tensor):
                raise TypeError(f"fused_rnn: RNN.step expects hx to be a Tensor or None, got {type(hx).__name__}")
            want = (self.num_layers, B, self.hidden_size) if batched else (self.num_layers, self.hidden_size)
            if tuple(hx.shape) != want:
                raise RuntimeError(f"fused_rnn: RNN.step expects hx of shape {list(want)} (num_layers, "
                                   f"{'batch, ' if batched else ''}hidden_size), got {list(hx.shape)}")
            h = hx if batched else hx.unsqueeze(1)
            if amp_dtype is not None:
                h = _amp_cast(h, amp_dtype)
            if h.device != x.device:
                raise RuntimeError(f"fused_rnn: hx is on {h.device} but x_t is on {x.device}; move both to one device")
            if h.dtype != x.dtype:
                raise RuntimeError(f"fused_rnn: hx dtype ({h.dtype}) does not match x_t dtype ({x.dtype})")
        w_dtype = self.weight_ih_l0.dtype
        if amp_dtype is None and x.dtype != w_dtype:
            raise ValueError(f"fused_rnn: RNN.step x_t dtype ({x.dtype}) does not match weight dtype ({w_dtype}); "
                             f"convert x_t.to({w_dtype}) or the model .to({x.dtype})")
        if amp_dtype is None:
            return self._step_layers(x, h, batched, None)
        with torch.autocast(x.device.type, enabled=False):
            return self._step_layers(x, h, batched, amp_dtype)

    def _step_layers(self, x: Tensor, h: Tensor, batched: bool, amp_dtype: torch.dtype | None
                     ) -> tuple[Tensor, Tensor]:
        """x [B, I], h [L, B, H] -> (y [B, H] or [H], h_next [L, B, H] or [L, H]); see ``step``."""
        # Accumulate in fp32 for fp16/bf16 storage (as every backend does) and round the new state to the storage
        # dtype, so a decoding loop computes the same function as forward.
        acc = compute_dtype(x.dtype)
        f = torch.tanh if self.nonlinearity == "tanh" else torch.relu
        layer_input = x
        states = []
        for layer in range(self.num_layers):
            w_ih, w_hh, b_ih, b_hh = self._layer_weights(layer, 0, amp_dtype)
            xin, h_prev = layer_input.to(acc), h[layer].to(acc)
            if b_ih is not None and b_hh is not None:
                a = torch.addmm((b_ih.to(acc) + b_hh.to(acc)).expand(xin.shape[0], -1), xin, w_ih.to(acc).t())
            else:
                a = torch.mm(xin, w_ih.to(acc).t())
            a = torch.addmm(a, h_prev, w_hh.to(acc).t())
            h_new = f(a).to(x.dtype)
            states.append(h_new)
            layer_input = h_new
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        h_next = torch.stack(states, 0)
        y = states[-1]
        if not batched:
            return y.squeeze(0), h_next.squeeze(1)
        return y, h_next


# (Un)packing reads batch_sizes on the host, so torch.compile cannot trace it: torch 2.14's Dynamo skips
# pad_packed_sequence (a graph break), torch 2.11's traces into it and fails on fake tensors. Running both
# conversions eagerly gives the same graph break on every version (fullgraph=False for PackedSequence input).
@_lazy_compile.disable
def _packed_to_padded(data: Tensor, batch_sizes: Tensor) -> tuple[Tensor, Tensor]:
    """PackedSequence data [N, I] + batch_sizes [T] (sorted order) -> (x [T, B, I] zero-padded, lengths [B] int64)."""
    return pad_packed_sequence(PackedSequence(data, batch_sizes, None, None), batch_first=False)


@_lazy_compile.disable
def _padded_to_packed_data(output: Tensor, lengths: Tensor) -> Tensor:
    """output [T, B, D·H] in sorted order, lengths [B] -> packed data [N, D·H] (the inverse of _packed_to_padded)."""
    return pack_padded_sequence(output, lengths, batch_first=False, enforce_sorted=True).data


class InputTypeError(TypeError, AttributeError):
    """``input`` is neither a Tensor nor a PackedSequence. A TypeError, which is what it is, and an AttributeError as
    well: nn.RNN fails on such input by accident with AttributeError ("'list' object has no attribute 'dim'"), so an
    ``except AttributeError`` written for nn.RNN still catches fused_rnn's clearer error."""


class _Call(NamedTuple):
    """One call after nn.RNN's input handling (RNN._parse): batched input [T, B, I] / [B, T, I] or packed data
    [N, I]; hx [L·D, B, H] (permuted to the packed order) or None; lengths [B] | None; PackedSequence fields;
    whether the user's input was batched; B (max batch size)."""

    input: Tensor
    hx: Tensor | None
    lengths: Tensor | None
    batch_sizes: Tensor | None
    sorted_indices: Tensor | None
    unsorted_indices: Tensor | None
    is_batched: bool
    B: int


def compute_dtype_of(input: Tensor, amp_dtype: torch.dtype | None) -> torch.dtype:
    """The dtype a call computes in: autocast's for floating inputs other than fp64, else the input's."""
    if amp_dtype is not None and input.is_floating_point() and input.dtype != torch.float64:
        return amp_dtype
    return input.dtype


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast compute dtype for tensors of ``device_type`` when autocast is on there, else None."""
    if device_type not in ("cpu", "cuda") or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def _amp_cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    """Autocast's own eligibility rule: floating-point tensors except fp64 go to ``dtype``; others unchanged. [*]"""
    if t.is_floating_point() and t.dtype != torch.float64 and t.dtype != dtype:
        return t.to(dtype)
    return t


class _TracedFused:
    """The path while torch.compile / torch.export traces a fused or auto module: the fused stack, per-layer resolve
    (a plain object: cheaper for Dynamo than the policy's dataclass)."""

    native = False
    tier = ""

    def __init__(self, backend: str) -> None:
        self.path = backend


class _TracedNative:
    native = True
    path = NATIVE
    tier = ""


_TRACED_NATIVE = _TracedNative()
_NATIVE_FALLBACK = _TracedNative()  # a fused path's call that only nn.RNN's op handles as nn.RNN does (_fused_can_run)
# What explain and record_paths report for it (a policy.Decision).
DROP_IN = Decision(
    "native", "", "drop-in", "the call is one only nn.RNN's op computes as nn.RNN does (a parameter replaced with "
    "another shape, dtype or device, or None; complex dtypes; a torch.func transform or forward-mode AD; a malformed "
    "PackedSequence): nn.RNN's op runs, with nn.RNN's result or error")
_FUSED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@functools.lru_cache(maxsize=64)
def _parameter_shapes(input_size: int, hidden_size: int, num_layers: int, directions: int, bias: bool
                      ) -> tuple[tuple[int, ...], ...]:
    """nn.RNN's parameter shapes in its flat order (``_flat_weights_names``): w_ih, w_hh[, b_ih, b_hh] per layer
    and direction."""
    shapes: list[tuple[int, ...]] = []
    for layer in range(num_layers):
        in_size = input_size if layer == 0 else directions * hidden_size
        for _ in range(directions):
            shapes += [(hidden_size, in_size), (hidden_size, hidden_size)]
            if bias:
                shapes += [(hidden_size,), (hidden_size,)]
    return tuple(shapes)


def _fused_can_run(module: RNN, call: _Call, amp_dtype: torch.dtype | None) -> bool:
    """Whether the fused stack computes this call as nn.RNN would: the parameters as nn.RNN lays them out (each a
    tensor of nn.RNN's shape, on the input's device, in its dtype -- any floating dtype under autocast, which casts
    them), a compute dtype the fused backends have (not complex), no torch.func transform or forward-mode AD level
    active, and for a PackedSequence, batch_sizes nn.RNN's op accepts for its data (int64, 1-D, on the CPU,
    non-increasing, not summing past the data); under autocast, an hx that autocast casts to the input's compute
    dtype. Reads metadata only, plus the batch_sizes (on the host). Eager mode only (RNN._run): not asked while
    torch.compile / torch.export trace."""
    input = call.input  # noqa: A001 (nn.RNN's name)
    dtype = compute_dtype_of(input, amp_dtype)
    if dtype not in _FUSED_DTYPES:
        return False
    if _functorch_active() or _forward_ad_active():
        # torch.func.grad / vjp / jacrev / vmap: ElmanRecurrence has no functorch support (no setup_context, no
        # vmap rule), so it raised where nn.RNN's op runs (grad, vjp, jacrev) or raises its own error (vmap).
        # Forward-mode AD (torch.autograd.forward_ad): it has no jvp, so it raised NotImplementedError.
        return False
    if amp_dtype is not None and call.hx is not None and compute_dtype_of(call.hx, amp_dtype) != dtype:
        return False  # e.g. an fp64 hx, which autocast leaves as it is (outside autocast _check_hx names it)
    names = module._flat_weights_names
    shapes = _parameter_shapes(module.input_size, module.hidden_size, module.num_layers,
                               2 if module.bidirectional else 1, bool(module.bias))
    if len(names) != len(shapes):
        return False
    device, in_dtype = input.device, input.dtype
    params = module._parameters
    for name, shape in zip(names, shapes):
        w = params.get(name)
        if w is None:  # not a registered parameter (a parametrization's property, a plain attribute) or None
            w = getattr(module, name, None)
            if not isinstance(w, Tensor):
                return False
        if w.shape != shape or w.device != device:
            return False
        if (w.dtype != in_dtype) if amp_dtype is None else not w.is_floating_point():
            return False
    bs = call.batch_sizes
    if bs is not None:
        if bs.dtype != torch.int64 or bs.dim() != 1 or bs.device.type != "cpu":
            return False
        if bs.numel() > 1 and bool((bs[1:] > bs[:-1]).any()):
            return False
        if int(bs.sum()) > input.size(0):
            return False
    return True


def _functorch_active() -> bool:
    """Whether a torch.func transform (grad, vjp, jacrev, jacfwd, vmap, ...) is running this call."""
    fn = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(fn()) if fn is not None else False


def _forward_ad_active() -> bool:
    """Whether a torch.autograd.forward_ad.dual_level block is open (dual tensors may reach this call)."""
    return getattr(torch.autograd.forward_ad, "_current_level", -1) >= 0


_RNNBASE_CHECK = nn.RNNBase.check_forward_args
_sys_modules = sys.modules
_BACKEND_KEY, _AUTOTUNE_KEY = os.fsencode("FUSED_RNN_BACKEND"), os.fsencode(_autotune.ENV)
_FLOORS: dict = {}  # (H, training) -> policy.short_sequence_floor (constants of the policy module)


def _grad_needed(module: nn.Module, input: Tensor, hx: Tensor | None) -> bool:
    """Training mode for the policy: grad enabled and the input, hx or a parameter requires grad."""
    if not torch.is_grad_enabled():
        return False
    if input.requires_grad or (hx is not None and hx.requires_grad):
        return True
    if module._modules:  # a subclass with submodules: all of them
        return any(p.requires_grad for p in module.parameters())
    # the module's own parameters, in a plain loop: parameters()'s generators cost 2.9 µs per call, an any() over a
    # generator expression one frame more than this
    for p in module._parameters.values():
        if p is not None and p.requires_grad:
            return True
    return False


def _check_hx(input: Tensor, hx: Tensor, amp_dtype: torch.dtype | None) -> None:
    """RuntimeError, the type nn.RNN raises for these (from its kernels, with less clear messages)."""
    if hx.dtype != input.dtype and amp_dtype is None:
        raise RuntimeError(f"fused_rnn: hx dtype ({hx.dtype}) does not match input dtype ({input.dtype})")
    if hx.device != input.device:
        raise RuntimeError(
            f"fused_rnn: hx is on {hx.device} but input is on {input.device}; move both to one device")
