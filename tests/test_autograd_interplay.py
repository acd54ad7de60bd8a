"""fused_rnn.RNN with PyTorch's autograd features, against nn.RNN (found by the autograd hunt, 2026-12-02):

  - torch.inference_mode(): every fused forward raised "Inference tensors do not track version counter" (the
    in-place recompute of ElmanRecurrence was armed there and read the versions of inference tensors);
  - retain_graph=True with the output edited in place (before the first backward or between two): the second
    backward raised "modified by an inplace operation" where nn.RNN's runs (the recompute was dropped after the
    first backward);
  - second derivatives asked of autograd.grad for some inputs only (hvp, the double-backward jvp trick,
    gradgradcheck, grad of grad w.r.t. x): silently wrong results instead of the clear error (the guard node was
    reachable only from its own leaf, so autograd skipped it);
  - torch.func.grad / vjp / jacrev and forward-mode AD raised where nn.RNN works (the module now runs nn.RNN's op
    there, as it does for complex dtypes).
Shapes: T time, B batch, I input, H hidden; fp64 so that the comparisons with nn.RNN are tight.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn

import fused_rnn

BACKENDS = ["reference"] + (["cpu"] if "cpu" in fused_rnn.available_backends() else [])
T, B, I, H = 6, 3, 4, 5  # noqa: E741
D = torch.float64


def _pair(backend: str, **kw) -> tuple[nn.RNN, fused_rnn.RNN]:
    torch.manual_seed(0)
    theirs = nn.RNN(I, H, dtype=D, **kw)
    ours = fused_rnn.RNN(I, H, dtype=D, backend=backend, **kw)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def _x(layers: int = 1) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(T, B, I, dtype=D, generator=g), torch.randn(layers, B, H, dtype=D, generator=g)


def _close(got: list[Tensor], want: list[Tensor]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("hooks", [False, True], ids=["", "saved-tensor-hooks"])
@pytest.mark.parametrize("edit", [False, True], ids=["plain", "output-edited"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_inference_mode(backend: str, edit: bool, hooks: bool) -> None:
    """Inference tensors have no version counter: nothing may read one (the recompute and, under saved-tensor hooks,
    the output watch are for recorded graphs only)."""
    theirs, ours = _pair(backend, num_layers=2)
    x, h0 = _x(2)
    res = []
    for m in (theirs, ours):
        hk = torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t) if hooks else contextlib.nullcontext()
        with torch.inference_mode(), hk:
            out, h_n = m(x, h0)
            if edit:
                out.mul_(2.0)
        assert out.is_inference()
        res.append([out, h_n])
    _close(res[1], res[0])


def _retain_run(kind: str) -> Callable[[nn.Module, Tensor, Tensor], list[Tensor]]:
    def run(m: nn.Module, x: Tensor, h0: Tensor) -> list[Tensor]:
        x, h0 = x.clone().requires_grad_(True), h0.clone().requires_grad_(True)
        out, h_n = m(x, h0)
        got = []
        if kind == "edit-then-two-backwards":
            out.mul_(2.0)
            loss = out.square().sum() + h_n.sum()
            loss.backward(retain_graph=True)
            got.append(x.grad.clone())
            loss.backward()
        elif kind == "edit-between-backwards":
            out.sum().backward(retain_graph=True)
            got.append(x.grad.clone())
            out.relu_()
            out.square().sum().backward()
        elif kind == "autograd-grad-twice":
            out.add_(1.0)
            got.append(torch.autograd.grad(out, x, torch.ones_like(out), retain_graph=True)[0])
            got.append(torch.autograd.grad(out.square().sum(), h0)[0])
            return got
        got.append(x.grad)
        got.append(h0.grad)
        return got + [p.grad.clone() for p in m.parameters()]

    return run


@pytest.mark.parametrize("layers", [1, 2], ids=["l1", "l2"])
@pytest.mark.parametrize("kind", ["edit-then-two-backwards", "edit-between-backwards", "autograd-grad-twice"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_retain_graph_with_output_edit(backend: str, kind: str, layers: int) -> None:
    theirs, ours = _pair(backend, num_layers=layers)
    x, h0 = _x(layers)
    _close(_retain_run(kind)(ours, x, h0), _retain_run(kind)(theirs, x, h0))


@pytest.mark.parametrize("retain", [False, True], ids=["released", "retained"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_recompute_released_after_last_backward(backend: str, retain: bool) -> None:
    """The recompute state (it holds the layer inputs) is dropped by a backward that frees the graph, and kept by
    one that retains it."""
    _, ours = _pair(backend)
    out, _ = ours(_x()[0].requires_grad_(True))
    node = out.grad_fn
    assert node.recovery is not None
    out.sum().backward(retain_graph=retain)
    assert (node.recovery is not None) == retain


def _second_order(kind: str) -> Callable[[nn.Module, Tensor], list[Tensor]]:
    def run(m: nn.Module, x: Tensor) -> list[Tensor]:
        if kind == "hvp":
            return list(torch.autograd.functional.hvp(lambda v: m(v)[0].square().sum(), x, torch.ones_like(x))[1:])
        if kind == "jvp-double-backward":
            return [torch.autograd.functional.jvp(lambda v: m(v)[0], x, torch.ones_like(x))[1]]
        if kind == "grad-of-grad-x":  # a loss linear in the output: the incoming gradients do not require grad
            x = x.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(m(x)[0].sum(), x, create_graph=True)
            return list(torch.autograd.grad(g.square().sum(), x))
        if kind == "grad-of-grad-edited":  # the recompute path
            x = x.clone().requires_grad_(True)
            out, _ = m(x)
            out.mul_(2.0)
            (g,) = torch.autograd.grad(out.sum(), x, create_graph=True)
            return list(torch.autograd.grad(g.square().sum(), [m.weight_ih_l0]))
        assert kind == "gradgradcheck"
        xs = x[:3, :2].clone().requires_grad_(True)
        return [torch.tensor(torch.autograd.gradgradcheck(lambda v: m(v)[0], (xs,)))]

    return run


@pytest.mark.parametrize("kind", ["hvp", "jvp-double-backward", "grad-of-grad-x", "grad-of-grad-edited",
                                  "gradgradcheck"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_second_order_raises_instead_of_a_wrong_result(backend: str, kind: str) -> None:
    theirs, ours = _pair(backend)
    x, _ = _x()
    _second_order(kind)(theirs, x)  # nn.RNN supports it
    with pytest.raises(RuntimeError, match="double backward"):
        _second_order(kind)(ours, x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_create_graph_first_order_still_works_with_edit(backend: str) -> None:
    """The guard only fires when a second derivative is asked for: first-order results under create_graph=True
    (here with an edited output, the recompute path) equal nn.RNN's."""
    theirs, ours = _pair(backend)
    x, _ = _x()
    res = []
    for m in (theirs, ours):
        xx = x.clone().requires_grad_(True)
        out, _ = m(xx)
        out.mul_(3.0)
        res.append([g.detach() for g in torch.autograd.grad(out.square().sum(), [xx, *m.parameters()],
                                                             create_graph=True)])
    _close(res[1], res[0])


def _func(kind: str) -> Callable[[nn.Module, Tensor], list[Tensor]]:
    from torch.func import functional_call, grad, jacrev, vjp

    def run(m: nn.Module, x: Tensor) -> list[Tensor]:
        params = {k: v.detach() for k, v in m.named_parameters()}
        if kind == "grad":
            g = grad(lambda p: functional_call(m, p, (x,))[0].square().sum())(params)
            return [g[k] for k in sorted(g)]
        if kind == "vjp":
            out, f = vjp(lambda v: m(v)[0], x)
            return [out, *f(torch.ones_like(out))]
        if kind == "jacrev":
            return [jacrev(lambda v: m(v)[0].sum(0))(x[:, :1])]
        assert kind == "forward-ad"
        with fwAD.dual_level():
            out, h_n = m(fwAD.make_dual(x, torch.ones_like(x)))
            return [fwAD.unpack_dual(out).tangent, fwAD.unpack_dual(h_n).tangent]

    return run


@pytest.mark.parametrize("kind", ["grad", "vjp", "jacrev", "forward-ad"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_func_transforms_match_nn_rnn(backend: str, kind: str) -> None:
    theirs, ours = _pair(backend)
    x, _ = _x()
    _close(_func(kind)(ours, x), _func(kind)(theirs, x))


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_outside_transforms(backend: str) -> None:
    """The fallback is only for the transforms: a plain call (and functional_call) still runs the fused backend."""
    from torch.func import functional_call

    from fused_rnn.backends.select import record_paths

    _, ours = _pair(backend)
    x, _ = _x()
    with record_paths() as log:
        ours(x)
        functional_call(ours, dict(ours.named_parameters()), (x,))
    assert [d.path for d in log] == [backend, backend]
    with torch.no_grad():
        assert not fused_rnn.modules._functorch_active() and not fused_rnn.modules._forward_ad_active()


def _hooked(kind: str, edit: bool) -> Callable[[nn.Module, Tensor, Tensor], list[Tensor]]:
    from torch.autograd.graph import save_on_cpu, saved_tensors_hooks

    hooks = {"identity": lambda: saved_tensors_hooks(lambda t: t, lambda t: t),
             "copying": lambda: saved_tensors_hooks(lambda t: t.clone(), lambda t: t),
             "save_on_cpu": save_on_cpu}[kind]

    def run(m: nn.Module, x: Tensor, h0: Tensor) -> list[Tensor]:
        x, h0 = x.clone().requires_grad_(True), h0.clone().requires_grad_(True)
        with hooks():
            out, h_n = m(x, h0)
        if edit:
            out.mul_(2.0)
        (out.square().sum() + h_n.sum()).backward()
        return [x.grad, h0.grad] + [p.grad.clone() for p in m.parameters()]

    return run


@pytest.mark.parametrize("edit", [False, True], ids=["plain", "output-edited"])
@pytest.mark.parametrize("kind", ["identity", "copying", "save_on_cpu"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_saved_tensor_hooks(backend: str, kind: str, edit: bool) -> None:
    """Under saved-tensor hooks the recompute is not armed. A hook that hands back the output itself (identity,
    save_on_cpu on CPU tensors) skips autograd's version check: an edited output raises autograd's in-place error
    instead of giving silently wrong gradients (nn.RNN's would be right); every other case equals nn.RNN."""
    theirs, ours = _pair(backend, num_layers=2)
    x, h0 = _x(2)
    want = _hooked(kind, edit)(theirs, x, h0)
    if edit and kind != "copying":
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            _hooked(kind, edit)(ours, x, h0)
    else:
        _close(_hooked(kind, edit)(ours, x, h0), want)


@pytest.mark.parametrize("edit", [False, True], ids=["plain", "output-edited"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_module_cast_between_forward_and_backward(backend: str, edit: bool) -> None:
    """module.float() between forward and backward rebinds every Parameter's data; nn.RNN's backward keeps the
    forward's weights, and so does ours (w_hh is saved, and the recompute's inputs held, as detached aliases)."""
    res = []
    for m in _pair(backend, num_layers=2):
        x, h0 = _x(2)
        x.requires_grad_(True)
        out, h_n = m(x, h0)
        if edit:
            out.mul_(2.0)
        m.float()
        (out.sum() + h_n.sum()).backward()
        res.append([x.grad] + [p.grad for p in m.parameters()])
    assert [g.dtype for g in res[1]] == [g.dtype for g in res[0]]
    _close(res[1], res[0])
