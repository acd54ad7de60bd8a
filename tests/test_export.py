"""torch.export and AOTInductor of fused_rnn.RNN, and the README's Deploy snippets for them (## Deploy).

torch.export keeps the fused ops opaque (torch.ops.fused_rnn.elman_fwd), so one exported graph with dynamic T and B
serves every sequence length and batch size; checked in eval mode against eager fused_rnn.RNN and nn.RNN. The
AOTInductor package (a C++ compile, the slow part of this file: ~22 s of CPU time, 2026-12-01) is built from the
README's snippet and run in a fresh process, first without fused_rnn imported (it must fail: the package calls
fused_rnn's ops), then after the README's serving snippet imports it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fused_rnn
from fused_rnn import policy
from fused_rnn.backends import select

ROOT = Path(__file__).resolve().parents[1]


def readme_snippet(name: str) -> str:
    """The ```python block after `<!-- snippet: NAME -->` in README.md (tests run the README's own text)."""
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"<!-- snippet: {re.escape(name)} -->\s*```python\n(.*?)```", text, re.S)
    assert m, f"README.md has no snippet {name!r}"
    return m.group(1)


def _nn_rnn(model: fused_rnn.RNN) -> torch.nn.RNN:
    ref = torch.nn.RNN(model.input_size, model.hidden_size, num_layers=model.num_layers,
                       nonlinearity=model.nonlinearity, bias=model.bias, batch_first=model.batch_first,
                       bidirectional=model.bidirectional).eval()
    ref.load_state_dict(model.state_dict())
    return ref


@pytest.mark.parametrize("case", [
    dict(nonlinearity="relu", num_layers=2, bidirectional=True, batch_first=True, hx=True, lengths=True),
    dict(nonlinearity="tanh", num_layers=1, bidirectional=False, batch_first=False, hx=False, lengths=False,
         bias=False),
], ids=["relu-L2-bi-batch_first-hx-lengths", "tanh-L1-nobias"])
def test_torch_export_dynamic_T_and_B(case: dict):
    case = dict(case)
    use_hx, use_lengths = case.pop("hx"), case.pop("lengths")
    IN, H = 5, 6
    model = fused_rnn.RNN(IN, H, **case).eval()
    D = 2 if model.bidirectional else 1
    bf = model.batch_first

    def inputs(T: int, B: int) -> tuple[tuple, dict]:
        x = torch.randn((B, T, IN) if bf else (T, B, IN))
        args = (x, torch.randn(model.num_layers * D, B, H)) if use_hx else (x,)
        kwargs = {}
        if use_lengths:
            lengths = torch.randint(1, T + 1, (B,))
            lengths[0] = T
            kwargs["lengths"] = lengths
        return args, kwargs

    Bd, Td = torch.export.Dim("B"), torch.export.Dim("T")
    spec: dict = {"input": {0: Bd, 1: Td} if bf else {0: Td, 1: Bd}}
    if use_hx:
        spec["hx"] = {1: Bd}
    if use_lengths:
        spec["lengths"] = {0: Bd}
    args, kwargs = inputs(4, 3)
    ep = torch.export.export(model, args, kwargs, dynamic_shapes=spec)
    fused = [n for n in ep.graph.nodes if n.op == "call_function" and n.target == torch.ops.fused_rnn.elman_fwd.default]
    if "cpu" in fused_rnn.available_backends():  # the C++ ops: opaque, one per layer and direction, T not unrolled
        assert len(fused) == model.num_layers * D
    runner = ep.module()
    ref = _nn_rnn(model)
    for T, B in [(11, 6), (2, 1), (7, 2)]:
        args, kwargs = inputs(T, B)
        with torch.no_grad():
            y, h_n = runner(*args, **kwargs)
            y_eager, h_eager = model(*args, **kwargs)
            if use_lengths:
                packed = pack_padded_sequence(args[0], kwargs["lengths"], batch_first=bf, enforce_sorted=False)
                y_nn, h_nn = ref(packed, *args[1:])
                y_nn = pad_packed_sequence(y_nn, batch_first=bf, total_length=T)[0]
            else:
                y_nn, h_nn = ref(*args)
        torch.testing.assert_close(y, y_eager, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(h_n, h_eager, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(y, y_nn, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(h_n, h_nn, rtol=1e-5, atol=1e-5)


# Runs in a fresh process from the package's folder: the package without fused_rnn's ops (must fail), then the
# README's serving snippet (imports fused_rnn), then the same runner on the parent's inputs.
_SERVE = textwrap.dedent("""
    import sys, torch
    x = torch.load("x.pt")
    try:
        torch._inductor.aoti_load_package("rnn.pt2")(x)
        print("ran without fused_rnn", file=sys.stderr)
        sys.exit(3)
    except Exception as e:
        without = f"{type(e).__name__}: {e}"
    assert "fused_rnn" not in sys.modules
    exec(compile(open("serve_snippet.py").read(), "README.md:deploy-aoti-serve", "exec"))
    # `import fused_rnn` (in the snippet) registers the ONNX export op but imports no ONNX package
    onnx_mods = sorted(m for m in sys.modules if m.split(".")[0] in ("onnx", "onnxscript", "onnxruntime"))
    assert not onnx_mods and hasattr(torch.ops.fused_rnn, "onnx_rnn_layer"), onnx_mods
    assert out.shape == (3, 50, 32) and h_n.shape == (2, 3, 32), (out.shape, h_n.shape)
    y, h = runner(x)
    torch.save({"y": y, "h_n": h, "without": without}, "served.pt")
""")


def test_aoti_package_runs_in_a_fresh_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    if "cpu" not in fused_rnn.available_backends():
        pytest.skip("the C++ extension is not built: the package would call the reference backend's Python loop")
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(readme_snippet("deploy-aoti-build"), "README.md:deploy-aoti-build", "exec"), ns)
    model = ns["model"]
    assert (tmp_path / "rnn.pt2").is_file()
    x = torch.randn(5, 13, 16)  # another batch size and sequence length than the example's
    torch.save(x, tmp_path / "x.pt")
    (tmp_path / "serve_snippet.py").write_text(readme_snippet("deploy-aoti-serve"))
    # the fused_rnn under test, installed or not (an in-place build is found through the repository root)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(fused_rnn.__file__).parents[1]),
                                                         os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _SERVE], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = torch.load(tmp_path / "served.pt")
    assert "fused_rnn::elman_fwd" in served["without"], served["without"]
    with torch.no_grad():
        y, h_n = model(x)
    torch.testing.assert_close(served["y"], y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(served["h_n"], h_n, rtol=1e-5, atol=1e-5)


def test_readme_python_snippet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(readme_snippet("deploy-python"), "README.md:deploy-python", "exec"), ns)
    model, server, out, h_n = ns["model"], ns["server"], ns["out"], ns["h_n"]
    assert out.shape == (3, 50, 32) and h_n.shape == (2, 3, 32)
    for (name, p), (name2, q) in zip(model.state_dict().items(), server.state_dict().items()):
        assert name == name2 and torch.equal(p, q)
    ref = _nn_rnn(server)
    ref.load_state_dict(torch.load(tmp_path / "rnn.pt"))  # the file loads into torch.nn.RNN as well
    x = torch.randn(2, 9, 16)
    with torch.inference_mode():
        torch.testing.assert_close(server(x), model(x), rtol=0, atol=0)
        torch.testing.assert_close(server(x), ref(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("backend", ["auto", "native", "reference", "cpu"])
@pytest.mark.parametrize("shape", [(5, 2), (64, 4)], ids=["H5-B2", "H64-B4"])
def test_jit_trace_matches_nn_rnn(backend: str, shape: tuple[int, int], grad: bool, warm: bool) -> None:
    """torch.jit.trace, which nn.RNN supports: the traced module replays at another T with nn.RNN's results.

    `auto` failed the trace when the policy's first decision was taken inside it: on an AVX-512 CPU the policy's
    ISA query (a custom op) was recorded -- "ArrayRef: invalid index Index = 0; Length = 0". Under jit.trace `auto`
    records PyTorch's own op, as nn.RNN's trace does, without asking the policy.
    """
    if backend not in fused_rnn.available_backends() + ["auto", "native"]:
        pytest.skip(f"backend {backend!r} is not available here")
    H, B = shape
    model = fused_rnn.RNN(H, H, backend=backend)
    model.requires_grad_(grad)
    if warm:  # eager calls first, as in a real program
        with torch.no_grad():
            model(torch.randn(12, B, H))
        model(torch.randn(12, B, H))
    else:  # the policy's first decision (and its first ISA query) is taken while tracing
        policy.cpu_isa.cache_clear()
        select.clear_caches()
    traced = torch.jit.trace(model, torch.randn(12, B, H))
    if backend in ("auto", "native"):
        assert "aten::rnn_tanh" in {n.kind() for n in traced.graph.nodes()}
    x = torch.randn(7, B, H)
    for got, want in zip(traced(x), _nn_rnn(model)(x)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
