"""ONNX export (fused_rnn/onnx.py), checked in onnxruntime against fused_rnn.RNN and torch.nn.RNN.

Every configuration is exported once (module-scoped fixture) at T=4, B=3 and then run by onnxruntime at other
sequence lengths and batch sizes (dynamic axes) in **one subprocess that cannot import torch or fused_rnn** (an
import hook refuses them): the model must need nothing of either at inference time. The features are combined so
that a handful of exports covers tanh/relu, 1-3 layers, both directions, batch_first, with and without hx,
bias=False and lengths= (dynamo exporter only: nn.RNN, whose export the legacy exporter reuses, has no lengths).

onnx, onnxscript and onnxruntime are test dependencies that `make test` installs (scripts/setup_env.sh); the tests
skip only where they cannot be imported -- the GPU machine, which has no registry.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fused_rnn

_missing = []
for _mod in ("onnx", "onnxscript", "onnxruntime"):
    try:
        __import__(_mod)
    except ImportError as e:  # the GPU machine: no registry to install them from
        _missing.append(f"{_mod} ({e})")
if _missing:
    pytest.skip(f"cannot import {', '.join(_missing)}: `make test` installs them (scripts/setup_env.sh); a machine "
                f"without a package registry cannot", allow_module_level=True)

import onnx  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# H·H > 8192: the exporter's optimizer alone would leave R as Unsqueeze/Concat of w_hh (fold_weights must fold it).
# An export costs seconds whatever the size; onnxruntime and eager runs at these sizes cost milliseconds.
IN, H = 5, 96
EXPORT_T, EXPORT_B = 4, 3
RUN_SIZES = [(9, 5), (2, 1)]  # (T, B) at inference: both differ from the export's; B = 1 too


@dataclasses.dataclass(frozen=True)
class Cfg:
    exporter: str  # "dynamo" | "legacy"
    nonlinearity: str
    num_layers: int
    bidirectional: bool
    batch_first: bool
    hx: bool       # the model takes hx (else zeros)
    lengths: bool  # the model takes lengths= (sequence_lens)
    bias: bool
    by_hand: bool = False  # torch.onnx.export + onnx_translations() + fold_weights instead of export_onnx

    @property
    def id(self) -> str:
        parts = [self.exporter, self.nonlinearity, f"L{self.num_layers}", "bi" if self.bidirectional else "uni"]
        parts += [name for name in ("batch_first", "hx", "lengths") if getattr(self, name)]
        parts += [] if self.bias else ["nobias"]
        parts += ["by_hand"] if self.by_hand else []
        return "-".join(parts)


CONFIGS = [
    Cfg("dynamo", "tanh", 2, True, True, hx=True, lengths=True, bias=True),
    Cfg("dynamo", "relu", 3, False, False, hx=False, lengths=True, bias=False),
    Cfg("dynamo", "relu", 1, True, False, hx=True, lengths=False, bias=False),
    Cfg("dynamo", "tanh", 1, False, True, hx=False, lengths=False, bias=True, by_hand=True),
    Cfg("legacy", "tanh", 2, True, False, hx=True, lengths=False, bias=False),
    Cfg("legacy", "relu", 3, False, True, hx=False, lengths=False, bias=True),
]


def _model(cfg: Cfg) -> fused_rnn.RNN:
    torch.manual_seed(zlib.crc32(cfg.id.encode()))
    return fused_rnn.RNN(IN, H, num_layers=cfg.num_layers, nonlinearity=cfg.nonlinearity, bias=cfg.bias,
                         batch_first=cfg.batch_first, bidirectional=cfg.bidirectional).eval()


def _inputs(cfg: Cfg, T: int, B: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """The model's inputs by ONNX input name: input [T, B, I] / [B, T, I], hx [L·D, B, H], lengths [B] in [1, T]."""
    D = 2 if cfg.bidirectional else 1
    x = torch.randn((B, T, IN) if cfg.batch_first else (T, B, IN), generator=gen)
    feed = {"input": x}
    if cfg.hx:
        feed["hx"] = torch.randn(cfg.num_layers * D, B, H, generator=gen)
    if cfg.lengths:
        lengths = torch.randint(1, T + 1, (B,), generator=gen)
        lengths[0] = T  # the full length and (for B > 1) shorter ones
        feed["lengths"] = lengths
    return feed


def _export(cfg: Cfg, path: Path) -> float:
    """Export cfg's model at (EXPORT_T, EXPORT_B) to path; returns the seconds it took."""
    model = _model(cfg)
    model.dropout = 0.5 if cfg.num_layers > 1 else 0.0  # export_onnx exports in eval mode: no dropout in the graph
    model.train()
    feed = _inputs(cfg, EXPORT_T, EXPORT_B, torch.Generator().manual_seed(1))
    args = (feed["input"], feed["hx"]) if cfg.hx else (feed["input"],)
    kwargs = {"lengths": feed["lengths"]} if cfg.lengths else None
    t0 = time.perf_counter()
    if cfg.by_hand:  # the low-level route the README documents
        assert cfg.exporter == "dynamo" and not cfg.hx and not cfg.lengths and cfg.num_layers == 1
        model.eval()
        t_dim, b_dim = (1, 0) if cfg.batch_first else (0, 1)
        prog = torch.onnx.export(model, args, dynamo=True, custom_translation_table=fused_rnn.onnx_translations(),
                                 dynamic_shapes=({t_dim: "T", b_dim: "B"},), input_names=["input"],
                                 output_names=["output", "h_n"])
        fused_rnn.onnx.fold_weights(prog)
        prog.save(path)
    else:
        fused_rnn.export_onnx(model, args, path, kwargs=kwargs, dynamo=cfg.exporter == "dynamo")
        assert model.training, "export_onnx must restore the model's mode"
    return time.perf_counter() - t0


# Runs every model in onnxruntime in a process where importing torch or fused_rnn raises.
_ORT_SCRIPT = textwrap.dedent("""
    import importlib.abc, json, sys

    class _Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "fused_rnn"):
                raise ImportError(f"{name} is not available at inference time (test_onnx)")
            return None

    sys.meta_path.insert(0, _Refuse())
    import numpy as np
    import onnxruntime as ort

    for job in json.loads(sys.argv[1]):
        sess = ort.InferenceSession(job["model"], providers=["CPUExecutionProvider"])
        feeds = np.load(job["inputs"])
        names = [i.name for i in sess.get_inputs()]
        outs = sess.run(None, {n: feeds[n] for n in names})
        np.savez(job["outputs"], **{o.name: v for o, v in zip(sess.get_outputs(), outs)})
    assert not any(m.split(".")[0] in ("torch", "fused_rnn") for m in sys.modules)
    print("ok", len(json.loads(sys.argv[1])))
""")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Per config id: the .onnx path, the inputs and the onnxruntime outputs at each RUN_SIZES entry."""
    d = tmp_path_factory.mktemp("onnx")
    out: dict = {}
    jobs = []
    for cfg in CONFIGS:
        path = d / f"{cfg.id}.onnx"
        seconds = _export(cfg, path)
        runs = []
        gen = torch.Generator().manual_seed(2)
        for k, (T, B) in enumerate(RUN_SIZES):
            feed = _inputs(cfg, T, B, gen)
            inp, res = d / f"{cfg.id}-{k}-in.npz", d / f"{cfg.id}-{k}-out.npz"
            np.savez(inp, **{n: t.numpy() for n, t in feed.items()})
            jobs.append({"model": str(path), "inputs": str(inp), "outputs": str(res)})
            runs.append((feed, res))
        out[cfg.id] = {"path": path, "runs": runs, "seconds": seconds}
    proc = subprocess.run([sys.executable, "-c", _ORT_SCRIPT, json.dumps(jobs)], capture_output=True, text=True,
                          timeout=120, cwd=d)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["ok", str(len(jobs))], proc.stdout
    return out


def _nn_rnn(model: fused_rnn.RNN) -> torch.nn.RNN:
    ref = torch.nn.RNN(IN, H, num_layers=model.num_layers, nonlinearity=model.nonlinearity, bias=model.bias,
                       batch_first=model.batch_first, bidirectional=model.bidirectional).eval()
    ref.load_state_dict(model.state_dict())
    return ref


def _nn_rnn_forward(ref: torch.nn.RNN, feed: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """nn.RNN on the same inputs; lengths= through a PackedSequence, re-padded to T (0 at padded steps)."""
    x, hx, lengths = feed["input"], feed.get("hx"), feed.get("lengths")
    if lengths is None:
        return ref(x, hx)
    T = x.shape[1] if ref.batch_first else x.shape[0]
    packed = pack_padded_sequence(x, lengths, batch_first=ref.batch_first, enforce_sorted=False)
    y, h_n = ref(packed, hx)
    return pad_packed_sequence(y, batch_first=ref.batch_first, total_length=T)[0], h_n


@pytest.mark.parametrize("cfg", CONFIGS, ids=[c.id for c in CONFIGS])
def test_onnxruntime_matches_fused_rnn_and_nn_rnn(cfg: Cfg, exported: dict):
    model = _model(cfg)
    ref = _nn_rnn(model)
    for feed, res in exported[cfg.id]["runs"]:
        got = np.load(res)
        y, h_n = torch.from_numpy(got["output"]), torch.from_numpy(got["h_n"])
        with torch.no_grad():
            y_fused, h_fused = model(feed["input"], feed.get("hx"), lengths=feed.get("lengths"))
            y_nn, h_nn = _nn_rnn_forward(ref, feed)
        size = dict(zip("TB", feed["input"].shape[::-1][1:] if cfg.batch_first else feed["input"].shape[:2]))
        for name, a, b in [("output vs fused_rnn", y, y_fused), ("h_n vs fused_rnn", h_n, h_fused),
                           ("output vs nn.RNN", y, y_nn), ("h_n vs nn.RNN", h_n, h_nn)]:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5,
                                       msg=lambda m, n=name, sz=size: f"{cfg.id} {sz} {n}: {m}")
        if "lengths" in feed:  # padded steps are exactly 0
            L = feed["lengths"]
            t = torch.arange(y.shape[1] if cfg.batch_first else y.shape[0])
            pad = (t[None, :] >= L[:, None]) if cfg.batch_first else (t[:, None] >= L[None, :])
            assert (y[pad] == 0).all()


@pytest.mark.parametrize("cfg", CONFIGS, ids=[c.id for c in CONFIGS])
def test_graph_is_standard_rnn(cfg: Cfg, exported: dict):
    """One ONNX RNN node per layer (both directions in one), weights folded into initializers, standard ops only."""
    m = onnx.load(str(exported[cfg.id]["path"]))
    onnx.checker.check_model(m)
    assert {o.domain for o in m.opset_import} <= {"", "ai.onnx"}
    assert all(n.domain in ("", "ai.onnx") for n in m.graph.node)
    assert not any(n.op_type == "Dropout" for n in m.graph.node)
    rnns = [n for n in m.graph.node if n.op_type == "RNN"]
    assert len(rnns) == cfg.num_layers
    inits = {t.name: t for t in m.graph.initializer}
    D = 2 if cfg.bidirectional else 1
    for layer, node in enumerate(rnns):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["hidden_size"] == H
        assert attrs.get("direction", b"forward") == (b"bidirectional" if D == 2 else b"forward")
        act = b"Tanh" if cfg.nonlinearity == "tanh" else b"Relu"
        assert list(attrs.get("activations", [b"Tanh"] * D)) == [act] * D
        ins = list(node.input) + [""] * (6 - len(node.input))
        in_size = IN if layer == 0 else D * H
        assert list(inits[ins[1]].dims) == [D, H, in_size], "W is not a stored [D, H, I] initializer"
        assert list(inits[ins[2]].dims) == [D, H, H], "R is not a stored [D, H, H] initializer"
        if cfg.bias:
            assert list(inits[ins[3]].dims) == [D, 2 * H]
        if cfg.exporter == "dynamo":
            assert bool(ins[4]) == cfg.lengths, "sequence_lens must be wired exactly when lengths= is given"
            if not cfg.bias:
                assert ins[3] == "", "bias=False exports no B (ONNX's default B is 0)"
    names = [i.name for i in m.graph.input]
    assert names == ["input"] + (["hx"] if cfg.hx else []) + (["lengths"] if cfg.lengths else [])
    assert [o.name for o in m.graph.output] == ["output", "h_n"]
    dims = [d.dim_param or d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert sum(isinstance(v, str) and v != "" for v in dims) == 2, f"T and B must be dynamic: {dims}"


def test_export_refuses_what_onnx_cannot_express(tmp_path: Path):
    """Clear errors, before any ONNX is written: PackedSequence with the dynamo exporter (through torch.onnx.export:
    both of its capture strategies, non-strict and the strict fallback, must reach the check), lengths= with the
    legacy exporter (directly and through export_onnx), bfloat16 (the check itself: a failing dynamo export costs
    seconds per strategy)."""
    model = fused_rnn.RNN(IN, H).eval()
    x = torch.randn(EXPORT_T, EXPORT_B, IN)
    lengths = torch.tensor([4, 2, 1])
    with pytest.raises(Exception, match="PackedSequence input is not supported"):
        torch.onnx.export(model, (pack_padded_sequence(x, lengths),), dynamo=True,
                          custom_translation_table=fused_rnn.onnx_translations())
    with pytest.raises(NotImplementedError, match="lengths= cannot be exported by the legacy"):
        torch.onnx.export(model, (x, None, lengths), tmp_path / "m.onnx", dynamo=False)
    with pytest.raises(ValueError, match="needs the dynamo exporter"):
        fused_rnn.export_onnx(model, (x,), tmp_path / "m.onnx", kwargs={"lengths": lengths}, dynamo=False)
    with pytest.raises(TypeError, match="ONNX RNN has no torch.bfloat16"):
        fused_rnn.onnx.run_layers(model.bfloat16(), x.bfloat16(), torch.zeros(1, EXPORT_B, H, dtype=torch.bfloat16),
                                  None)


def test_float16_in_onnxruntime(tmp_path: Path):
    """A float16 model exports and runs in onnxruntime, as accurate as fused_rnn's own float16 (both against fp64)."""
    import onnxruntime as ort

    model = fused_rnn.RNN(IN, 16, bidirectional=True).eval()
    x = torch.randn(EXPORT_T, EXPORT_B, IN)
    fused_rnn.export_onnx(model.half(), (x.half(),), tmp_path / "m.onnx")
    x2 = torch.randn(9, 5, IN).half()
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    y, h_n = (torch.from_numpy(a) for a in sess.run(None, {"input": x2.numpy()}))
    assert y.dtype == torch.float16
    with torch.no_grad():
        y16, h16 = model(x2)
        y64, h64 = model.double()(x2.double())
    for name, got, own, ref in [("output", y, y16, y64), ("h_n", h_n, h16, h64)]:
        err, own_err = (got.double() - ref).abs().max().item(), (own.double() - ref).abs().max().item()
        assert err <= 2 * own_err + 1e-3, (name, err, own_err)


# -- the README's ONNX snippet (## Deploy), run as written ---------------------------------------------------------

def readme_snippet(name: str) -> str:
    """The ```python block after `<!-- snippet: NAME -->` in README.md (tests run the README's own text)."""
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"<!-- snippet: {re.escape(name)} -->\s*```python\n(.*?)```", text, re.S)
    assert m, f"README.md has no snippet {name!r}"
    return m.group(1)


def test_readme_onnx_snippet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(readme_snippet("deploy-onnx"), "README.md:deploy-onnx", "exec"), ns)
    model, out, h_n = ns["model"], ns["out"], ns["h_n"]
    x, lengths = torch.from_numpy(ns["x"]), torch.from_numpy(ns["lengths"])
    with torch.no_grad():
        y_ref, h_ref = model(x, lengths=lengths)
    torch.testing.assert_close(torch.from_numpy(out), y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(h_n), h_ref, rtol=1e-5, atol=1e-5)
