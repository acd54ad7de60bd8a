"""`auto` under torch.compile and torch.export: always the fused opaque ops, never native (PyTorch's RNN op
decomposes into per-step ops, unrolled over T), and no policy lookup while tracing -- so a new sequence length or
batch size does not recompile. Also: cuDNN-style flattened weights (parameters that are views of one buffer, as
RNNBase.flatten_parameters makes them on CUDA), emulated on the CPU, still compile with fullgraph=True; and a forced
``native`` compiles (recompiling per T, as documented)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

import fused_rnn
from fused_rnn import _ext
from fused_rnn.backends import select

I, H = 3, 5  # noqa: E741

pytestmark = pytest.mark.skipif(not _ext.has_kernel("CPU"), reason="the C++ extension is not built with its CPU "
                                "kernels (auto's fused path on the CPU)")


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


@pytest.fixture
def no_policy_while_tracing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail loudly if anything asks the policy (it must not be traced: its comparisons on B would be guards)."""
    def refuse(*a, **k):
        raise AssertionError("the policy was consulted under torch.compile / torch.export")

    monkeypatch.setattr(select, "_policy_decision", refuse)


def _graph_recorder(graphs: list[str]):
    def backend(gm: torch.fx.GraphModule, example_inputs):
        graphs.append(gm.print_readable(print_output=False))  # submodules (the autograd.Function) included
        return gm.forward
    return backend


def _auto_and_cpu_twin(**kw) -> tuple[fused_rnn.RNN, fused_rnn.RNN]:
    auto = fused_rnn.RNN(I, H, **kw)
    twin = fused_rnn.RNN(I, H, backend="cpu", **kw)
    twin.load_state_dict(auto.state_dict())
    return auto, twin


def test_auto_with_dynamic_T_compiles_once(no_policy_while_tracing: None) -> None:
    """mark_dynamic over three sequence lengths: one graph, holding the fused op; results equal the eager fused."""
    auto, twin = _auto_and_cpu_twin(num_layers=2, bidirectional=True)
    graphs: list[str] = []
    compiled = torch.compile(auto, fullgraph=True, backend=_graph_recorder(graphs))
    for T in (5, 9, 17):
        x = torch.randn(T, 4, I)
        torch._dynamo.mark_dynamic(x, 0)
        out, h_n = compiled(x)
        want, want_h = twin(x)
        torch.testing.assert_close(out, want)
        torch.testing.assert_close(h_n, want_h)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert len(graphs) == 1 and "torch.ops.fused_rnn.elman_fwd" in graphs[0]
    assert "rnn_tanh" not in graphs[0]


def test_auto_with_dynamic_batch_compiles_once(no_policy_while_tracing: None) -> None:
    """The policy's key holds B, but nothing of it is traced: three batch sizes, one graph (forward + backward)."""
    auto, twin = _auto_and_cpu_twin(nonlinearity="relu")
    compiled = torch.compile(auto, fullgraph=True, backend="aot_eager")
    for B in (2, 3, 7):
        x = torch.randn(6, B, I, requires_grad=True)
        torch._dynamo.mark_dynamic(x, 1)
        out, h_n = compiled(x)
        (out.sum() + h_n.sum()).backward()
        x2 = x.detach().clone().requires_grad_(True)
        want, want_h = twin(x2)
        (want.sum() + want_h.sum()).backward()
        torch.testing.assert_close(out, want)
        torch.testing.assert_close(x.grad, x2.grad)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


def test_export_auto_with_dynamic_T(no_policy_while_tracing: None) -> None:
    """torch.export of auto with a dynamic sequence length: the exported program runs other lengths correctly."""
    auto, twin = _auto_and_cpu_twin(num_layers=2)
    T = torch.export.Dim("T", min=2, max=4096)
    ep = torch.export.export(auto, (torch.randn(8, 3, I),), dynamic_shapes={"input": {0: T}})
    assert any("fused_rnn.elman_fwd" in str(n.target) for n in ep.graph.nodes)
    for t in (3, 8, 31):
        x = torch.randn(t, 3, I)
        out, h_n = ep.module()(x)
        want, want_h = twin(x)
        torch.testing.assert_close(out, want)
        torch.testing.assert_close(h_n, want_h)


def _flatten_like_cudnn(m: nn.RNNBase) -> None:
    """Make every parameter a view into one flat buffer, in nn.RNN's order -- what cuDNN's flatten_parameters does
    on CUDA (torch._cudnn_rnn_flatten_weight), done by hand on the CPU."""
    params = [getattr(m, n) for n in m._flat_weights_names]
    flat = torch.empty(sum(p.numel() for p in params), dtype=params[0].dtype)
    off = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            flat[off:off + n].copy_(p.reshape(-1))
            p.set_(flat.untyped_storage(), off, p.shape, p.stride())
            off += n
    assert len({p.untyped_storage().data_ptr() for p in m.parameters()}) == 1


@pytest.mark.parametrize("backend", ["auto", "cpu"])
def test_flattened_weights_compile_fullgraph(backend: str) -> None:
    """Parameters aliasing one buffer (as on CUDA after flatten_parameters) compile with fullgraph=True, one graph,
    and give the eager results, gradients included."""
    m = fused_rnn.RNN(I, H, num_layers=2, bidirectional=True, backend=backend).double()
    twin = fused_rnn.RNN(I, H, num_layers=2, bidirectional=True, backend="cpu").double()
    twin.load_state_dict(m.state_dict())
    _flatten_like_cudnn(m)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    x = torch.randn(7, 3, I, dtype=torch.float64)
    out, h_n = compiled(x, lengths=torch.tensor([7, 2, 5]))
    (out.sum() + h_n.sum()).backward()
    want, want_h = twin(x, lengths=torch.tensor([7, 2, 5]))
    (want.sum() + want_h.sum()).backward()
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(h_n, want_h)
    for (name, p), q in zip(m.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


def test_forced_native_compiles_fullgraph_and_matches_nn_rnn() -> None:
    """backend="native" is allowed under torch.compile (PyTorch's op, unrolled over T: it recompiles per T)."""
    theirs = nn.RNN(I, H, num_layers=2, bidirectional=True).double()
    ours = fused_rnn.RNN(I, H, num_layers=2, bidirectional=True, backend="native").double()
    ours.load_state_dict(theirs.state_dict())
    graphs: list[str] = []
    compiled = torch.compile(ours, fullgraph=True, backend=_graph_recorder(graphs))
    x = torch.randn(4, 2, I, dtype=torch.float64)
    out, h_n = compiled(x)
    want, want_h = theirs(x)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(h_n, want_h)
    assert graphs and "torch.ops.fused_rnn" not in graphs[0] and "rnn_tanh" in graphs[0]
