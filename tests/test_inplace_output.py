"""An in-place edit of fused_rnn.RNN's output before backward works as with nn.RNN (found by the differential bug hunt,
2026-12-02: ``out.mul_(2); out.sum().backward()`` ran with nn.RNN and raised "modified by an inplace operation" here).

nn.RNN's output is a fresh tensor its backward never reads. Ours is the Y the recurrence's backward needs (saved, not
copied: a copy cost ~10% of a training step at T2800 B16 H256), so ElmanRecurrence notices an edited Y by its version
counter and recomputes it from the layer's input projection (fused_rnn/recurrence.py). Checked here: the gradients
equal nn.RNN's under the same edit (fp64, tight), equal bit for bit those of the same computation written without
the in-place edit (so the recomputed Y is the forward's own), and what must still fail does: parameters edited in
place before backward, and edits under saved-tensor hooks (a checkpoint / offload hook must see every saved tensor).
Shapes: T time, B batch, I input, H hidden.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

import fused_rnn

BACKENDS = ["reference"] + (["cpu"] if "cpu" in fused_rnn.available_backends() else [])
T, B, I, H = 7, 3, 4, 6  # noqa: E741

# (name, in-place edit, the same edit written out of place): the patterns seen in user code
EDITS: list[tuple[str, Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]] = [
    ("mul_", lambda y: y.mul_(2.0), lambda y: y * 2.0),
    ("residual_add_", lambda y: y.add_(torch.linspace(-1, 1, y.shape[-1], dtype=y.dtype)),
     lambda y: y + torch.linspace(-1, 1, y.shape[-1], dtype=y.dtype)),
    ("relu_", lambda y: y.relu_(), lambda y: y.relu()),
    ("masked_fill_", lambda y: y.masked_fill_(y > 0.5, 0.0), lambda y: y.masked_fill(y > 0.5, 0.0)),
]


def _grads(m: nn.Module, x: Tensor, h0: Tensor, edit: Callable[[Tensor], Tensor], **kw) -> list[Tensor]:
    x, h0 = x.clone().requires_grad_(True), h0.clone().requires_grad_(True)
    out, h_n = m(x, h0, **kw)
    out = edit(out)
    (out * torch.arange(out.numel(), dtype=out.dtype).view_as(out).sin()).sum().add(h_n.sum()).backward()
    return [x.grad, h0.grad] + [p.grad.clone() for p in m.parameters()]


@pytest.mark.parametrize("layers", [1, 2], ids=["l1", "l2"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("edit", EDITS, ids=[e[0] for e in EDITS])
def test_edited_output_gives_nn_rnn_gradients(edit: tuple, backend: str, layers: int) -> None:
    name, inplace, outofplace = edit
    torch.manual_seed(0)
    theirs = nn.RNN(I, H, num_layers=layers, dtype=torch.float64)
    ours = fused_rnn.RNN(I, H, num_layers=layers, dtype=torch.float64, backend=backend)
    ours.load_state_dict(theirs.state_dict())
    x, h0 = torch.randn(T, B, I, dtype=torch.float64), torch.randn(layers, B, H, dtype=torch.float64)
    want = _grads(theirs, x, h0, inplace)
    got = _grads(ours, x, h0, inplace)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # the recomputed Y is the forward's own: the same bits as the out-of-place twin of the edit
    ours.zero_grad()
    plain = _grads(ours, x, h0, outofplace)
    for a, b in zip(got, plain, strict=True):
        assert torch.equal(a, b), f"{name}: the edited-output backward differs from the out-of-place one"


@pytest.mark.parametrize("backend", BACKENDS)
def test_edited_output_with_lengths_and_autocast(backend: str) -> None:
    """lengths= (padded steps) and CPU autocast to bf16 (the projection recomputed in the autocast state of the
    forward): the same bits as the out-of-place edit."""
    torch.manual_seed(1)
    m = fused_rnn.RNN(I, H, num_layers=2, backend=backend)
    x, h0 = torch.randn(T, B, I), torch.randn(2, B, H)
    L = torch.tensor([T, 3, 1])
    got = _grads(m, x, h0, EDITS[0][1], lengths=L)
    m.zero_grad()
    assert all(torch.equal(a, b) for a, b in zip(got, _grads(m, x, h0, EDITS[0][2], lengths=L), strict=True))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m.zero_grad()
        got = _grads(m, x, h0, EDITS[1][1])
        m.zero_grad()
        plain = _grads(m, x, h0, EDITS[1][2])
    assert all(torch.equal(a, b) for a, b in zip(got, plain, strict=True))


@pytest.mark.parametrize("edit_output", [False, True], ids=["output-kept", "output-edited"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_parameter_edited_before_backward_still_raises(backend: str, edit_output: bool) -> None:
    """A weight edited in place between forward and backward is an error for nn.RNN, and stays one here -- with the
    output edited too (the recompute path checks the versions of what it reads)."""
    for make in (lambda: nn.RNN(I, H), lambda: fused_rnn.RNN(I, H, backend=backend)):
        m = make()
        out, _ = m(torch.randn(T, B, I, requires_grad=True))
        if edit_output:
            out.mul_(2.0)
        with torch.no_grad():
            m.weight_hh_l0.mul_(0.5)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            out.sum().backward()


@pytest.mark.parametrize("backend", BACKENDS)
def test_edit_under_checkpoint(backend: str) -> None:
    """Under saved-tensor hooks the hooks own Y (no recompute is armed); torch.utils.checkpoint's recomputes the
    forward at backward time, so the gradients are the out-of-place edit's, bit for bit. (A hook that hands back the
    very tensor it was given -- save_on_cpu on CPU tensors -- skips autograd's version check; ElmanRecurrence then
    raises autograd's in-place error itself: tests/test_autograd_interplay.py.)"""
    torch.manual_seed(2)
    m = fused_rnn.RNN(I, H, backend=backend)
    x, h0 = torch.randn(T, B, I), torch.randn(1, B, H)

    class Ckpt(nn.Module):
        def forward(self, x: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
            return torch.utils.checkpoint.checkpoint(m, x, h0, use_reentrant=False)

    got = _grads(Ckpt(), x, h0, EDITS[0][1])
    got_p = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    plain = _grads(m, x, h0, EDITS[0][2])
    assert all(torch.equal(a, b) for a, b in zip(got[:2] + got_p, plain, strict=True))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("edit", EDITS, ids=[e[0] for e in EDITS])
def test_edited_batch_first_output(edit: tuple, backend: str) -> None:
    """batch_first: the output is a transposed view of Y (nn.RNN's layout, no copy), so its edits reach Y's version
    counter through the view; the gradients are nn.RNN's under the same edit."""
    _, inplace, _ = edit
    torch.manual_seed(3)
    theirs = nn.RNN(I, H, num_layers=2, batch_first=True, dtype=torch.float64)
    ours = fused_rnn.RNN(I, H, num_layers=2, batch_first=True, dtype=torch.float64, backend=backend)
    ours.load_state_dict(theirs.state_dict())
    x, h0 = torch.randn(B, T, I, dtype=torch.float64), torch.randn(2, B, H, dtype=torch.float64)
    for a, b in zip(_grads(ours, x, h0, inplace), _grads(theirs, x, h0, inplace), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
