"""torch.compile: fused_rnn.RNN traces with ``fullgraph=True`` and gives eager's results, forward and backward.

Dynamo refuses any ``nn.RNN`` instance; fused_rnn.RNN subclasses ``nn.RNNBase`` so it is traced like any module, and
the fast backends' compute is an opaque ``torch.library`` op with a fake implementation. Compiles are slow on a
2-core CPU (a 2-layer bidirectional module: ~2-5 s with ``aot_eager``, ~20 s with inductor, torch 2.14.1,
2026-11-27), so most tests use ``aot_eager`` (Dynamo + AOTAutograd + fake tensors: everything but code generation)
and one runs the default inductor backend end to end.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from cpu_common import AVX512_FLAGS, cpu_flags  # tests/cpu_common.py
from torch.nn.utils.rnn import pack_padded_sequence

import fused_rnn
from fused_rnn import _ext

I, H = 3, 5  # noqa: E741 (DESIGN.md's shape letters: I input size, H hidden size)


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    """Every test compiles from scratch and counts its own graphs."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


def _make(backend: str, dtype: torch.dtype = torch.float64, **kw) -> tuple[fused_rnn.RNN, fused_rnn.RNN]:
    """Two modules with one set of weights: one stays eager, the other is compiled."""
    eager = fused_rnn.RNN(I, H, backend=backend, **kw).to(dtype)
    twin = fused_rnn.RNN(I, H, backend=backend, **kw).to(dtype)
    twin.load_state_dict(eager.state_dict())
    return eager, twin


def _run(model, x: torch.Tensor, hx: torch.Tensor, dynamic_time: bool = False, **kw) -> tuple[torch.Tensor, ...]:
    """Forward + backward of a loss touching both outputs -> (output, h_n, d input, d hx, d every parameter).

    x [T, B, I], hx [L·D, B, H]; ``dynamic_time`` marks T (dim 0) dynamic for torch.compile.
    """
    x = x.detach().clone().requires_grad_(True)
    if dynamic_time:
        torch._dynamo.mark_dynamic(x, 0)  # on the tensor the model sees: the mark does not survive clone()
    hx = hx.detach().clone().requires_grad_(True)
    out, h_n = model(x, hx, **kw)
    gy, gh = torch.linspace(-1, 1, out.numel(), dtype=out.dtype), torch.linspace(1, 2, h_n.numel(), dtype=out.dtype)
    ((out * gy.view_as(out)).sum() + (h_n * gh.view_as(h_n)).sum()).backward()
    params = model._orig_mod.parameters() if hasattr(model, "_orig_mod") else model.parameters()
    return (out.detach(), h_n.detach(), x.grad, hx.grad, *(p.grad for p in params))


def _assert_all_close(got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...]) -> None:
    names = ["output", "h_n", "grad input", "grad hx"] + [f"grad param {i}" for i in range(len(want) - 4)]
    assert len(got) == len(want)
    for name, g, w in zip(names, got, want):
        assert g is not None and w is not None, name
        torch.testing.assert_close(g, w, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("with_lengths", [False, True], ids=["padded", "lengths"])
def test_fullgraph_matches_eager(cpu_backend: str, with_lengths: bool) -> None:
    """2 layers × bidirectional, T=7, B=3: output, h_n and every gradient equal eager's (fp64)."""
    eager, twin = _make(cpu_backend, num_layers=2, bidirectional=True)
    compiled = torch.compile(twin, fullgraph=True, backend="aot_eager")
    x = torch.randn(7, 3, I, dtype=torch.float64)
    hx = torch.randn(4, 3, H, dtype=torch.float64)
    kw = {"lengths": torch.tensor([7, 2, 5])} if with_lengths else {}
    _assert_all_close(_run(compiled, x, hx, **kw), _run(eager, x, hx, **kw))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert not torch._dynamo.config.allow_rnn, "must compile without Dynamo's experimental RNN switch"
    assert isinstance(twin, torch.nn.RNNBase) and not isinstance(twin, torch.nn.RNN)


def test_inductor_matches_eager() -> None:
    """The default torch.compile backend (inductor), fullgraph, on the auto backend, batch_first, relu, lengths."""
    eager, twin = _make("auto", num_layers=2, nonlinearity="relu", batch_first=True)
    compiled = torch.compile(twin, fullgraph=True)
    x = torch.randn(5, 6, I, dtype=torch.float64)  # [B, T, I]
    hx = torch.randn(2, 5, H, dtype=torch.float64)
    kw = {"lengths": torch.tensor([6, 1, 4, 6, 3])}
    _assert_all_close(_run(compiled, x, hx, **kw), _run(eager, x, hx, **kw))


# One process of test_inductor_cache_is_keyed_by_aten_cpu_capability: the suite's cache keying (conftest.py), then
# test_inductor_matches_eager itself (it raises where a result differs from eager); prints the capability it ran under.
_CACHE_CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
from compile_cache import key_compile_caches_by_cpu_capability
key_compile_caches_by_cpu_capability()
import torch
from test_compile import test_inductor_matches_eager
test_inductor_matches_eager()
print("RESULT", torch.backends.cpu.get_cpu_capability())
"""


def test_inductor_cache_is_keyed_by_aten_cpu_capability(tmp_path) -> None:
    """A default process, then one with ATEN_CPU_CAPABILITY=avx2, on one inductor cache: the second must not run what
    the first cached (torch 2.14.1 leaves the vector ISA out of the key, and AVX-512-tiled code compiled with AVX2
    flags left h_n and grad hx partly unwritten: tests/compile_cache.py); both match eager. (The other order was
    right without the keying: AVX2 tiling on AVX-512 vectors only leaves lanes unused.)"""
    flags = cpu_flags()
    if flags is None or not AVX512_FLAGS <= flags:
        pytest.skip("needs an AVX-512 CPU: elsewhere inductor's default vector ISA is avx2 already")
    tests = str(Path(__file__).resolve().parent)
    base = {k: v for k, v in os.environ.items()
            if k not in ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "TORCH_COMPILE_CACHE_KEY_TAG")
            and not k.startswith("TORCHINDUCTOR_")}
    base["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path / "inductor")
    runs = []
    for env in (base, {**base, "ATEN_CPU_CAPABILITY": "avx2"}):
        proc = subprocess.run([sys.executable, "-c", _CACHE_CHILD, tests], env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, f"under {env.get('ATEN_CPU_CAPABILITY', 'the default')}: {proc.stderr[-3000:]}"
        runs.append(proc.stdout.split("RESULT", 1)[1].strip())
        assert any((tmp_path / "inductor").rglob("*.py")), "the first run cached nothing: nothing would be tested"
    assert runs == ["AVX512", "AVX2"], f"the capability each run had: {runs}"


@pytest.mark.parametrize("reverse_only", [False, True], ids=["unidirectional", "bidirectional"])
def test_packed_sequence_matches_eager(cpu_backend: str, reverse_only: bool) -> None:
    """PackedSequence input compiles with the graph breaks Dynamo forces around (un)packing (not fullgraph)."""
    eager, twin = _make(cpu_backend, num_layers=2, bidirectional=reverse_only)
    compiled = torch.compile(twin, backend="aot_eager")
    D = 2 if reverse_only else 1
    x = torch.randn(6, 4, I, dtype=torch.float64)
    hx = torch.randn(2 * D, 4, H, dtype=torch.float64)
    lengths = torch.tensor([3, 6, 1, 5])  # unsorted: exercises sorted/unsorted indices
    results = []
    for model in (compiled, eager):
        xi = x.clone().requires_grad_(True)
        hi = hx.clone().requires_grad_(True)
        packed = pack_padded_sequence(xi, lengths, enforce_sorted=False)
        out, h_n = model(packed, hi)
        assert isinstance(out, type(packed))
        (out.data.pow(2).sum() + h_n.sin().sum()).backward()
        results.append((out.data.detach(), h_n.detach(), xi.grad, hi.grad))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)


def _cpu_op_built() -> bool:
    return _ext.has_kernel("CPU")


@pytest.mark.skipif(not _cpu_op_built(), reason="the C++ extension is not built with its CPU kernels")
def test_new_sequence_length_does_not_recompile() -> None:
    """With the opaque C++ op, T is a dynamic dimension: three lengths, one graph (T marked dynamic up front).

    Documented usage: ``torch._dynamo.mark_dynamic(x, 0)`` (``1`` with batch_first) on the first call; without it,
    Dynamo's automatic dynamic shapes compile a second, dynamic graph at the first new T and none after.
    """
    eager, twin = _make("cpu", num_layers=2, bidirectional=True)
    compiled = torch.compile(twin, fullgraph=True, backend="aot_eager")
    for T in (9, 13, 4):
        x = torch.randn(T, 3, I, dtype=torch.float64)
        hx = torch.randn(4, 3, H, dtype=torch.float64)
        kw = {"lengths": torch.tensor([T, 2, T - 1])}
        _assert_all_close(_run(compiled, x, hx, dynamic_time=True, **kw), _run(eager, x, hx, **kw))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


@pytest.mark.skipif(not _cpu_op_built(), reason="the C++ extension is not built with its CPU kernels")
def test_new_sequence_length_automatic_dynamic_compiles_once_more() -> None:
    """Without mark_dynamic: the first new T compiles one dynamic graph, later lengths reuse it (cpu backend)."""
    eager, twin = _make("cpu")
    compiled = torch.compile(twin, fullgraph=True, backend="aot_eager")
    for T in (9, 13, 4, 21):
        x = torch.randn(T, 2, I, dtype=torch.float64)
        hx = torch.randn(1, 2, H, dtype=torch.float64)
        _assert_all_close(_run(compiled, x, hx), _run(eager, x, hx))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2


def _graph_recorder(graphs: list[str]):
    """A torch.compile backend that keeps each Dynamo graph's code (submodules included) and runs it eagerly."""

    def backend(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        graphs.append(gm.print_readable(print_output=False))
        return gm.forward

    return backend


@pytest.mark.skipif(not _cpu_op_built(), reason="the C++ extension is not built with its CPU kernels")
def test_backend_resolution_inside_the_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    """backend="auto" resolves at trace time -- FUSED_RNN_BACKEND included -- and the graph holds that backend's
    compute: the opaque C++ op for cpu, plain aten ops for the reference. The choice is part of the compiled graph:
    changing the variable afterwards needs torch._dynamo.reset() (documented in select.resolve)."""
    x = torch.randn(4, 2, I, dtype=torch.float64)
    eager, twin = _make("auto")
    monkeypatch.delenv("FUSED_RNN_BACKEND", raising=False)
    graphs: list[str] = []
    torch.compile(twin, fullgraph=True, backend=_graph_recorder(graphs))(x)
    assert len(graphs) == 1 and "torch.ops.fused_rnn.elman_fwd" in graphs[0]

    torch._dynamo.reset()
    monkeypatch.setenv("FUSED_RNN_BACKEND", "reference")
    graphs.clear()
    out, h_n = torch.compile(twin, fullgraph=True, backend=_graph_recorder(graphs))(x)
    assert len(graphs) == 1 and "torch.ops.fused_rnn" not in graphs[0]
    want_out, want_h = eager(x)
    torch.testing.assert_close(out, want_out)
    torch.testing.assert_close(h_n, want_h)


def test_bad_lengths_in_compiled_graph_raise(cpu_backend: str) -> None:
    """The host check of eager mode becomes an in-graph assert on CPU: a clear RuntimeError, no crash."""
    _, twin = _make(cpu_backend)
    compiled = torch.compile(twin, fullgraph=True, backend="aot_eager")
    x = torch.randn(5, 2, I, dtype=torch.float64)
    compiled(x, lengths=torch.tensor([5, 1]))  # compiles with valid lengths first
    for bad in ([6, 1], [0, 5]):
        with pytest.raises(RuntimeError, match=r"lengths must lie in \[1, "):
            compiled(x, lengths=torch.tensor(bad))


def _op_args(reverse: bool, with_lengths: bool, nonlinearity: str) -> tuple[tuple, tuple]:
    T, B, Hh = 5, 3, 4
    P = torch.randn(T, B, Hh, dtype=torch.float64)
    h0 = torch.randn(B, Hh, dtype=torch.float64)
    w = torch.randn(Hh, Hh, dtype=torch.float64) * 0.5
    lengths = torch.tensor([5, 1, 3]) if with_lengths else None
    Y, _ = torch.ops.fused_rnn.elman_fwd(P, h0, w, lengths, reverse, nonlinearity, "", False)
    fwd = (P, h0, w, lengths, reverse, nonlinearity, "", False)
    bwd = (torch.randn_like(Y), torch.randn_like(h0), Y, w, lengths, reverse, nonlinearity, "", False)
    return fwd, bwd


@pytest.mark.skipif(not _cpu_op_built(), reason="the C++ extension is not built with its CPU kernels")
@pytest.mark.parametrize(
    "reverse,with_lengths,nonlinearity",
    [(False, False, "tanh"), (True, True, "relu"), (False, True, "tanh")],
    ids=["fwd-tanh", "rev-lengths-relu", "fwd-lengths-tanh"],
)
def test_opcheck(reverse: bool, with_lengths: bool, nonlinearity: str) -> None:
    """Schema, fake (meta) implementation, autograd registration and AOT dispatch of the C++ ops, non-grad inputs.

    (Their autograd lives in ElmanRecurrence, so requires_grad inputs would fail opcheck's autograd-registration
    test by design; gradients are checked through the Function by gradcheck in test_reference.py.)
    """
    fwd, bwd = _op_args(reverse, with_lengths, nonlinearity)
    torch.library.opcheck(torch.ops.fused_rnn.elman_fwd.default, fwd)
    torch.library.opcheck(torch.ops.fused_rnn.elman_bwd.default, bwd)


def test_tier_heuristic_runs_at_trace_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A backend with tiers (the GPU backends' path, simulated on the reference): fullgraph holds with static shapes
    (heuristic called once at trace time with plain ints), and after Dynamo's automatic dynamic shapes make B
    symbolic (the heuristic is traced; its B comparison becomes a guard), for batch sizes on both sides of it."""
    from fused_rnn.backends import reference

    calls: list[tuple] = []

    def pick_tier(H_: int, B_: int, dtype: torch.dtype, device: torch.device) -> str:
        calls.append((type(H_), type(B_), H_, B_, dtype, device.type))
        return "wide" if B_ > 2 else "narrow"

    monkeypatch.setattr(reference, "TIERS", ("narrow", "wide"))
    monkeypatch.setattr(reference, "pick_tier", pick_tier)
    eager, twin = _make("reference")
    compiled = torch.compile(twin, fullgraph=True, backend="aot_eager")
    for batch in (2, 3, 5, 1):
        x = torch.randn(4, batch, I, dtype=torch.float64)
        hx = torch.randn(1, batch, H, dtype=torch.float64)
        calls.clear()
        _assert_all_close(_run(compiled, x, hx), _run(eager, x, hx))
        if batch == 2:  # the first, static compile: one call per layer-direction at trace time, plain ints
            assert (int, int, H, 2, torch.float64, "cpu") in calls
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 2  # the static graph, then dynamic B


def test_unusable_backend_in_compiled_module_raises_clearly() -> None:
    """The resolution errors of eager mode surface from torch.compile too (as a RuntimeError with our message)."""
    model = fused_rnn.RNN(I, H, backend="cuda")  # CPU tensors: never usable, with or without a GPU
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with pytest.raises(RuntimeError, match=r"fused_rnn: backend 'cuda' (is not available here|cannot run on cpu)"):
        compiled(torch.randn(4, 2, I))
