"""Persistence and Python-object behaviour of fused_rnn.RNN: torch.save/torch.load of the module and of the
state_dict (both ways between fused_rnn.RNN and nn.RNN), copy.deepcopy, pickling, flatten_parameters, repr."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn

import fused_rnn

I, H = 3, 5  # noqa: E741 (the shape letters of DESIGN.md: I input size, H hidden size)
CFGS = {
    "default": dict(),
    "L2-bi-relu-bfirst": dict(num_layers=2, bidirectional=True, nonlinearity="relu", batch_first=True),
    "L3-nobias-dropout": dict(num_layers=3, bias=False, dropout=0.25),
}


def _roundtrip(obj: object, weights_only: bool) -> object:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=weights_only)


def _same_outputs(a: nn.Module, b: nn.Module, batch_first: bool = False) -> None:
    a.eval()
    b.eval()
    x = torch.randn(4, 6, I) if batch_first else torch.randn(6, 4, I)
    for ya, yb in zip(a(x), b(x)):
        torch.testing.assert_close(ya, yb, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("cfg", list(CFGS.values()), ids=list(CFGS))
def test_save_load_module(cpu_backend: str, cfg: dict) -> None:
    ours = fused_rnn.RNN(I, H, backend=cpu_backend, **cfg)
    loaded = _roundtrip(ours, weights_only=False)
    assert type(loaded) is fused_rnn.RNN and loaded.backend == cpu_backend
    assert loaded.nonlinearity == ours.nonlinearity and loaded.dropout == ours.dropout
    for (n, p), (m, q) in zip(ours.named_parameters(), loaded.named_parameters()):
        assert n == m and torch.equal(p, q)
    _same_outputs(ours, loaded, cfg.get("batch_first", False))


@pytest.mark.parametrize("cfg", list(CFGS.values()), ids=list(CFGS))
def test_state_dict_ours_to_nn_rnn(cpu_backend: str, cfg: dict) -> None:
    ours = fused_rnn.RNN(I, H, backend=cpu_backend, **cfg)
    theirs = nn.RNN(I, H, **cfg)
    theirs.load_state_dict(_roundtrip(ours.state_dict(), weights_only=True))  # strict: same keys and shapes
    _same_outputs(ours, theirs, cfg.get("batch_first", False))


@pytest.mark.parametrize("cfg", list(CFGS.values()), ids=list(CFGS))
def test_state_dict_nn_rnn_to_ours(cpu_backend: str, cfg: dict) -> None:
    theirs = nn.RNN(I, H, **cfg)
    ours = fused_rnn.RNN(I, H, backend=cpu_backend, **cfg)
    ours.load_state_dict(_roundtrip(theirs.state_dict(), weights_only=True))
    _same_outputs(ours, theirs, cfg.get("batch_first", False))


def test_saved_nn_rnn_module_weights_load_into_ours(cpu_backend: str) -> None:
    """A whole nn.RNN saved with torch.save: its state_dict loads into fused_rnn.RNN."""
    theirs = _roundtrip(nn.RNN(I, H, num_layers=2), weights_only=False)
    ours = fused_rnn.RNN(I, H, num_layers=2, backend=cpu_backend)
    ours.load_state_dict(theirs.state_dict())
    _same_outputs(ours, theirs)


def test_state_dict_mismatch_is_rejected() -> None:
    """A state_dict of another configuration is refused, as by nn.RNN (strict loading)."""
    ours = fused_rnn.RNN(I, H, num_layers=2)
    with pytest.raises(RuntimeError, match="weight_ih_l1"):
        ours.load_state_dict(nn.RNN(I, H, num_layers=1).state_dict())


def test_deepcopy(cpu_backend: str) -> None:
    ours = fused_rnn.RNN(I, H, num_layers=2, bidirectional=True, backend=cpu_backend)
    dup = copy.deepcopy(ours)
    assert type(dup) is fused_rnn.RNN and dup.backend == cpu_backend
    _same_outputs(ours, dup)
    with torch.no_grad():
        dup.weight_hh_l0.add_(1.0)
    assert not torch.equal(dup.weight_hh_l0, ours.weight_hh_l0), "deepcopy must not share parameters"
    x = torch.randn(6, 4, I)
    assert not torch.allclose(dup(x)[0], ours(x)[0]), "the copy must run on its own (changed) parameters"


def test_pickle_without_backend_attribute_defaults_to_auto() -> None:
    """Objects pickled before ``backend`` existed (or by a subclass that drops it) load with backend="auto"."""
    ours = fused_rnn.RNN(I, H, backend="reference")
    state = ours.__getstate__()
    state = {k: v for k, v in state.items() if k != "backend"}
    fresh = fused_rnn.RNN.__new__(fused_rnn.RNN)
    fresh.__setstate__(state)
    assert fresh.backend == "auto"
    again = pickle.loads(pickle.dumps(ours))
    assert again.backend == "reference"
    _same_outputs(ours, again)


def test_flatten_parameters(cpu_backend: str) -> None:
    """Exists for drop-in compatibility (code calls it after .to()/DataParallel); it must not change anything."""
    ours = fused_rnn.RNN(I, H, num_layers=2, backend=cpu_backend)
    x = torch.randn(6, 4, I)
    before = ours(x)
    params = [p.clone() for p in ours.parameters()]
    assert ours.flatten_parameters() is None
    for p, q in zip(ours.parameters(), params):
        assert torch.equal(p, q)
    for a, b in zip(before, ours(x)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cfg", list(CFGS.values()), ids=list(CFGS))
def test_repr(cfg: dict) -> None:
    """With the defaults, repr is nn.RNN's exactly (drop-in); otherwise nn.RNN's plus what it leaves out."""
    theirs = repr(nn.RNN(I, H, **cfg))
    ours = repr(fused_rnn.RNN(I, H, **cfg))
    if cfg.get("nonlinearity", "tanh") == "tanh":
        assert ours == theirs
    else:
        assert ours == theirs[:-1] + ", nonlinearity='relu')"
    named = repr(fused_rnn.RNN(I, H, backend="reference", **cfg))
    assert named == ours[:-1] + ", backend='reference')"


def test_repr_nested_in_a_model() -> None:
    model = nn.Sequential(fused_rnn.RNN(I, H, num_layers=2, backend="reference"))
    assert "RNN(3, 5, num_layers=2, backend='reference')" in repr(model)
