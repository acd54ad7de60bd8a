"""The autograd layer: ``ElmanRecurrence``, a ``torch.autograd.Function`` around a backend's forward/backward.

It saves Y, h0, w_hh and lengths, calls the selected backend's BPTT for dA and dh0, and computes dW_hh with one
GEMM over T·B against the predecessor states S (docs/design.md):  dW_hh = Σ_t dA_tᵀ S_t, without building S.
It is once-differentiable: double backward raises a clear error instead of silently dropping a gradient.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from . import diagnostics as _diag
from . import gemm as _gemm
from .backends.select import backend_module


def predecessor_states(Y: Tensor, h0: Tensor, lengths: Tensor | None, reverse: bool) -> Tensor:
    """S [T, B, H]: S_t[b] = the state that step t of element b consumed (h0 at its first step).

    Forward: S = cat(h0, Y[:-1]).  Reverse: S = cat(Y[1:], h0), then S[L_b-1, b] = h0[b] for every b with L_b < T --
    a shifted Y alone is wrong whenever h0 != 0 and lengths vary. The readable definition of dW_hh = Σ_t dA_tᵀ S_t;
    ``grad_w_hh`` computes the same sum without building S.
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


def grad_w_hh(dA: Tensor, Y: Tensor, h0: Tensor, lengths: Tensor | None, reverse: bool) -> Tensor:
    """dA [T, B, H], Y [T, B, H], h0 [B, H] -> dW_hh [H, H] = Σ_t dA_tᵀ S_t (S: ``predecessor_states``).

    Two GEMMs on views instead of one on S: the h0 term, dA_firstᵀ h0, where dA_first[b] is dA at element b's first
    step (t = 0 forward, t = L_b − 1 reverse), plus the shifted term over T−1 steps, dA[1:]ᵀ Y[:-1] (forward) or
    dA[:-1]ᵀ Y[1:] (reverse). Exact in the contract's terms: dA is 0 at padded steps, and Y is 0 there, so the
    shifted term pairs no padded state with a valid dA. Building S cost a [T, B, H] allocation and copy: 15 ms of a
    334 ms fwd+bwd at T2800 B16 H256 fp32 (2-core AMD EPYC Zen 5, 2 threads, 2026-12-01).
    """
    T, B, H = Y.shape
    if T == 0:
        return h0.new_zeros(H, H)
    if reverse:
        if lengths is None:
            first = dA[T - 1]
        else:
            idx = (lengths - 1).clamp(0, T - 1).view(1, B, 1).expand(1, B, H)
            first = dA.gather(0, idx)[0]
    else:
        first = dA[0]
    if _gemm.use_fp32(dA, H, H) and dA.dtype == Y.dtype == h0.dtype:
        # fp32 GEMMs where this CPU's half GEMM is the slower (fused_rnn/gemm.py), rounded once
        dw32 = first.t().float().mm(h0.float())
        if T > 1:
            prev, cur = (Y[:-1], dA[1:]) if not reverse else (Y[1:], dA[:-1])
            _gemm.accumulate_tn(dw32, cur, prev)
        return dw32.to(dA.dtype)
    dw = first.t().mm(h0)
    if T > 1:
        prev, cur = (Y[:-1], dA[1:]) if not reverse else (Y[1:], dA[:-1])
        K = (T - 1) * B
        a, b = cur.reshape(K, H).t(), prev.reshape(K, H)
        if H < _SMALL_H and K > _K_CHUNK and not torch.compiler.is_compiling():
            # torch's CPU GEMM sums K in one running chain when H is this small: 6x the error of blocked sums
            # (fp32, K=12000, relative to Σ|a||b|: 0.87 eps at H=5, 0.83 at H=8, vs 0.15 / 0.19 in chunks of 1024;
            # H=2 and H >= 15 are blocked already: ~0.1). Found as dW_hh errors of 20-37 eps against nn.RNN's 5 at
            # H=5 B=1753 T=6 (differential hunt, 2026-12-02). Chunks of 1024 rows, each a fresh product, then added.
            for k0 in range(0, K, _K_CHUNK):
                dw += a[:, k0:k0 + _K_CHUNK].mm(b[k0:k0 + _K_CHUNK])
        else:
            dw.addmm_(a, b)
    return dw


_SMALL_H = 16  # below this, grad_w_hh sums its T·B rows in chunks (see there)
_K_CHUNK = 1024


class ElmanRecurrence(torch.autograd.Function):
    """(P [T,B,H], h0 [B,H], w_hh [H,H], lengths [B] | None, ..., consume_p, recompute_p) -> (Y [T,B,H], h_n [B,H]).

    Y is both an output and what the backward needs (saved, not copied: a copy of [T, B, H] cost ~10% of a training
    step at T2800 B16 H256). nn.RNN's output is a fresh tensor its backward does not read, so code written for it may
    edit the output in place before backward (``out += residual``, ``relu_``). Given ``recompute_p`` (the layer's
    input projection, as a closure), an edited Y is detected in the backward by its version counter and recomputed
    from P (the same backend and tier: the same values), so such code runs as with nn.RNN; without it, autograd's
    in-place error is raised. Eager mode with no saved-tensor hooks active; under hooks (a checkpoint or offload hook
    must see every saved tensor) the hooks own Y -- checkpoint recomputes it, a copying hook keeps the forward's --
    and one that hands back the edited output itself is caught by a weak reference (``y_watch``) and raises.
    """

    @staticmethod
    def forward(ctx, P: Tensor, h0: Tensor, w_hh: Tensor, lengths: Tensor | None, reverse: bool,
                nonlinearity: str, backend: str, tier: str, allow_tf32: bool,
                consume_p: bool = False, recompute_p: Callable[..., Tensor] | None = None) -> tuple[Tensor, Tensor]:
        h0 = h0.contiguous()
        # A detached alias of w_hh (same storage and version counter) is what is saved and computed with: a module
        # .to(dtype / device) between forward and backward rebinds the Parameter's data, which would change a saved
        # Parameter under the backward (nn.RNN's backward keeps the forward's weights). The input itself is kept
        # for the double-backward guard's edges.
        ctx.w_link = w_hh if w_hh.requires_grad else None
        w_hh = w_hh.contiguous().detach()
        T, B, H = P.shape
        mod = backend_module(backend)
        into = getattr(mod, "forward_into", None) if consume_p else None
        if B == 0:  # never reaches a backend: a zero-size CUDA grid is an invalid launch
            Y, h_n = P.new_zeros(T, 0, H), h0.clone()
        elif (into is not None and P.is_contiguous() and not torch.compiler.is_compiling()
              and not torch.jit.is_tracing()):
            # The caller owns P (its own input projection, which nothing else reads or saves: the projection's
            # backward keeps x and W_ih, not its output): Y is written over it, which saves a [T, B, H] allocation
            # (the C++ op's comment has the figure). Y is returned as a detached alias, not as P marked dirty: P is
            # usually a view of the projection's 2-D result, and autograd refuses a dirty view input on a Function
            # with two outputs. Eager only: traced graphs keep the functional op.
            h_n = into(P, h0, w_hh, lengths, reverse, nonlinearity)
            Y = P.detach()
        else:
            Y, h_n = mod.forward(P.contiguous(), h0, w_hh, lengths, reverse, nonlinearity, tier, allow_tf32)
        ctx.save_for_backward(Y, h0, w_hh, lengths)
        ctx.recovery = ctx.y_watch = None
        # an eager graph is being recorded (the tracing checks first: Dynamo must not see the rest)
        if (not torch.compiler.is_compiling() and not torch.jit.is_tracing() and any(ctx.needs_input_grad)
                and not Y.is_inference()):
            if _no_saved_tensor_hooks():
                if recompute_p is not None:
                    arm = getattr(recompute_p, "arm", None)
                    if arm is not None:
                        arm()
                    ctx.recovery = _Recovery(recompute_p, Y, h0, w_hh, lengths)
            else:
                # Saved-tensor hooks own Y. One that hands back the very tensor it was given (save_on_cpu on CPU
                # tensors, an identity pack) skips autograd's version check, and an in-place edit of the output
                # would reach the backward's Y unnoticed: wrong gradients, where nn.RNN's are right. A weak
                # reference and the version let the backward see that case and raise (_check_unpacked_y).
                ctx.y_watch = (weakref.ref(Y), Y._version)
        ctx.reverse = reverse
        ctx.nonlinearity = nonlinearity
        ctx.backend = backend
        ctx.tier = tier
        ctx.allow_tf32 = allow_tf32
        # BPTT diagnostics hook (fused_rnn.diagnostics.record_bptt): a flag check when off, a tag when recording.
        ctx.bptt = None if _diag._ACTIVE is None else _diag.capture(reverse)
        if torch.compiler.is_compiling():
            # torch 2.11's Dynamo mis-traces this Function's backward when h_n is returned as produced by the
            # reference backend's loop: the gradient through h_n came out wrong (dP off by 5.3, fp64, T=5 B=3 H=4;
            # torch 2.14.1 correct; 2026-11-27). A fresh copy [B, H] per layer-direction fixes it; eager skips it.
            h_n = h_n.clone()
        return Y, h_n

    @staticmethod
    def backward(ctx, dY: Tensor, dh_n: Tensor):
        """dY [T,B,H], dh_n [B,H] -> (dP = dA [T,B,H], dh0 [B,H], dW_hh [H,H], None × 8)."""
        grads, sources = _backward(ctx, dY, dh_n)
        if torch.is_grad_enabled():
            # create_graph=True: no second derivative exists here. once_differentiable would only guard the
            # gradients when dY or dh_n require grad; for a loss linear in Y they do not, and the input GEMM's
            # autograd would then silently drop this Function's second-order terms (measured: a gradient penalty
            # ran without error). Tie every gradient to a node whose backward raises instead, with edges to
            # everything the true gradients depend on (dY, dh_n, and this node's inputs through Y, h0, w_hh):
            # autograd.grad(..., inputs=[x]) runs only the nodes on a path to x, so a guard reachable only from
            # its own leaf was skipped there and hvp / jvp / gradgradcheck came back silently wrong.
            grads = _guard_double_backward(grads, (dY, dh_n, *sources))
        return grads


def inplace_error(what: str, version: int, expected: int, hint: str = "") -> RuntimeError:
    """Autograd's in-place error (its wording, so code matching it still does) for ``what`` edited since the
    forward."""
    return RuntimeError(f"one of the variables needed for gradient computation has been modified by an inplace "
                        f"operation: {what} is at version {version}; expected version {expected} instead.{hint}")


def check_unedited(items: Iterable[tuple[Tensor | None, int, str]]) -> None:
    """(tensor, its version at the forward, what it is) for each: raise ``inplace_error`` for the first one edited in
    place since."""
    for t, v, what in items:
        if t is not None and t._version != v:
            raise inplace_error(what, t._version, v)


def _no_saved_tensor_hooks() -> bool:
    """True when no saved-tensor hooks (torch.utils.checkpoint, autograd.graph.save_on_cpu, ...) are active."""
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    return top is not None and top(False) is None


class _Recovery:
    """What ElmanRecurrence's backward needs when its output Y was edited in place after the forward: the layer's
    input projection (``recompute_p(device type, autocast on, autocast dtype) -> P [T, B, H]``, e.g.
    functional.ProjectionRecompute), a detached alias of Y (it shares Y's version counter; the output itself would
    make a reference cycle through this node), h0 and w_hh, their versions, and the forward's autocast state (the
    reference backend's matmuls and the projection ran under it). ~2 µs per layer-direction, training only."""

    __slots__ = ("recompute_p", "y", "versions", "h0", "w_hh", "lengths", "dev", "amp", "amp_dtype")

    def __init__(self, recompute_p: Callable[..., Tensor], Y: Tensor, h0: Tensor, w_hh: Tensor,
                 lengths: Tensor | None) -> None:
        self.recompute_p = recompute_p
        self.y = Y.detach()
        self.versions = (Y._version, h0._version, w_hh._version)
        self.h0, self.w_hh, self.lengths = h0, w_hh, lengths
        self.dev = Y.device.type
        self.amp = torch.is_autocast_enabled(self.dev)
        self.amp_dtype = torch.get_autocast_dtype(self.dev) if self.amp else None

    def y_edited(self) -> bool:
        return self.y._version != self.versions[0]

    def recompute(self, ctx) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """(Y [T,B,H] as the forward computed it, h0, w_hh, lengths). h0 and w_hh edited in place since the forward
        raise autograd's error, as they would have from the saved tensors."""
        check_unedited(((self.h0, self.versions[1], "h0 of fused_rnn's ElmanRecurrence"),
                        (self.w_hh, self.versions[2], "w_hh of fused_rnn's ElmanRecurrence")))
        with torch.no_grad(), torch.autocast(self.dev, dtype=self.amp_dtype, enabled=self.amp):
            P = self.recompute_p(self.dev, self.amp, self.amp_dtype)
            if P.shape[1] == 0:
                Y = P.new_zeros(P.shape)
            else:
                Y, _ = backend_module(ctx.backend).forward(P, self.h0, self.w_hh, self.lengths, ctx.reverse,
                                                           ctx.nonlinearity, ctx.tier, ctx.allow_tf32)
        return Y, self.h0, self.w_hh, self.lengths


class _NoDoubleBackward(torch.autograd.Function):
    """Identity on the gradients [*] of ElmanRecurrence; differentiating through it raises a clear error.

    Inputs: an anchor (a fresh leaf, so the outputs require grad even when nothing else does), n, n link tensors
    (what the gradients depend on: only edges, so that every path from a gradient to what it depends on passes
    here), then the gradients."""

    @staticmethod
    def forward(ctx, anchor: Tensor, n_links: int, *args: Tensor) -> tuple[Tensor, ...]:
        return tuple(g.clone() for g in args[n_links:])

    @staticmethod
    def backward(ctx, *unused: Tensor):
        raise RuntimeError(
            "fused_rnn: double backward through ElmanRecurrence is not supported (the recurrence is "
            "once-differentiable); second derivatives of fused_rnn.RNN are not implemented")


def _guard_double_backward(grads: tuple, links: tuple = ()) -> tuple:
    """Route the non-None gradients through _NoDoubleBackward, so a graph built on them fails when differentiated
    towards the anchor or any of ``links`` (tensors the gradients depend on; those that require grad are kept)."""
    idx = [i for i, g in enumerate(grads) if g is not None]
    links = tuple(t for t in links if isinstance(t, Tensor) and t.requires_grad)
    anchor = torch.zeros((), requires_grad=True)  # makes the outputs require grad even when no input does
    guarded = _NoDoubleBackward.apply(anchor, len(links), *links, *(grads[i] for i in idx))
    out = list(grads)
    for i, g in zip(idx, guarded):
        out[i] = g
    return tuple(out)


@torch.no_grad()
def _backward(ctx, dY: Tensor, dh_n: Tensor) -> tuple:
    """The backward proper: backend BPTT for (dA, dh0), then dW_hh in one GEMM. Shapes as in ElmanRecurrence."""
    rec = ctx.recovery
    if rec is not None and not _keep_graph():
        # Released with the saved tensors. Kept while autograd keeps the graph (retain_graph / create_graph): a
        # later backward may find Y edited (before the first, or between the two) and needs the recompute again,
        # as nn.RNN's second backward works after such an edit.
        ctx.recovery = None
    if rec is not None and rec.y_edited():
        Y, h0, w_hh, lengths = rec.recompute(ctx)  # the output was edited in place (see ElmanRecurrence)
        sources = (h0, ctx.w_link, *getattr(rec.recompute_p, "inputs", ()))
    else:
        Y, h0, w_hh, lengths = ctx.saved_tensors
        sources = (Y, h0, ctx.w_link)  # Y unpacked from the saved output: its grad_fn is this node (P and beyond)
        if getattr(ctx, "y_watch", None) is not None:
            _check_unpacked_y(Y, *ctx.y_watch)
    T, B, H = Y.shape
    if B == 0:
        dA, dh0 = torch.zeros_like(Y), torch.zeros_like(h0)
    else:
        dA, dh0 = backend_module(ctx.backend).backward(
            dY.contiguous(), dh_n.contiguous(), Y, w_hh, lengths, ctx.reverse, ctx.nonlinearity, ctx.tier,
            ctx.allow_tf32)
    dw_hh = None
    if ctx.needs_input_grad[2]:
        dw_hh = grad_w_hh(dA, Y, h0, lengths, ctx.reverse) if B > 0 else torch.zeros_like(w_hh)
    if getattr(ctx, "bptt", None) is not None:  # BPTT diagnostics hook: per-step norms of dA and of g = ∂L/∂h_t
        ctx.bptt.record(dA, dY, dh_n, w_hh, lengths, ctx.reverse)
    return (dA, dh0, dw_hh, None, None, None, None, None, None, None, None), sources


def _check_unpacked_y(Y: Tensor, ref: weakref.ref, version: int) -> None:
    """Y, as a saved-tensor hook handed it back, must not be the output edited in place since the forward."""
    live = ref()
    if (live is not None and live._version != version and Y.numel() > 0
            and Y.untyped_storage().data_ptr() == live.untyped_storage().data_ptr()):
        raise inplace_error(
            "output 0 of fused_rnn's ElmanRecurrence", live._version, version,
            " A saved-tensor hook (e.g. torch.autograd.graph.save_on_cpu on CPU tensors) handed back the output "
            "itself, so the edit reached what the backward reads: edit a copy of the output (out = out * 2) under "
            "such hooks.")


def _keep_graph() -> bool:
    """True when the running backward keeps the graph (retain_graph=True, or create_graph=True's default)."""
    fn = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    return bool(fn()) if fn is not None else False


def recurrence(P: Tensor, h0: Tensor, w_hh: Tensor, lengths: Tensor | None = None, reverse: bool = False,
               nonlinearity: str = "tanh", backend: str = "reference", tier: str = "",
               allow_tf32: bool = False, consume_p: bool = False,
               recompute_p: Callable[..., Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Differentiable sequential part: P [T,B,H], h0 [B,H], w_hh [H,H], lengths [B] | None -> (Y, h_n).

    ``consume_p=True``: P is a temporary of the caller's that nothing else reads; a backend with ``forward_into``
    may then write Y over it (eager mode), and the returned Y is P. ``recompute_p``: a closure that computes P again
    (``functional.ProjectionRecompute``), so the backward survives an in-place edit of Y (ElmanRecurrence).
    """
    if not torch.is_grad_enabled():
        # No graph is recorded (no_grad, inference_mode), so no backward can need the recompute. (Decided here:
        # Function.forward always runs with grad off, and its needs_input_grad follows requires_grad alone.) Under
        # inference_mode, arming it read the version counters of inference tensors, which have none: every fused
        # forward raised "Inference tensors do not track version counter".
        recompute_p = None
    return ElmanRecurrence.apply(P, h0, w_hh, lengths, reverse, nonlinearity, backend, tier, allow_tf32, consume_p,
                                 recompute_p)
