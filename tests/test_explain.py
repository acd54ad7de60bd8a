"""``fused_rnn.explain``: for each reason type on the CPU (measured region -- a win and a loss --, outside the grid,
forced by argument or environment, record_bptt, compile, autocast) it names the path of every layer-direction and
the facts the reason rests on; it agrees with the path a real call records, over random configurations; it has no
side effects and raises what the call raises. GPU reasons are checked with an injected compute capability."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fused_rnn
from fused_rnn import _ext, autotune, diagnostics, policy
from fused_rnn._explain import explain_call
from fused_rnn.backends import cuda as cuda_backend
from fused_rnn.backends import select

ROOT = Path(__file__).resolve().parent.parent
HAS_CPU = _ext.has_kernel("CPU")
needs_cpu = pytest.mark.skipif(not HAS_CPU, reason="the C++ cpu backend is not built (auto has no fast fused path)")

WIN, FB_WIN, LOSS = (3.0, 2.6), (5.0, 4.2), (0.6, 0.5)


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for v in ("FUSED_RNN_BACKEND", "FUSED_RNN_AUTOTUNE", "FUSED_RNN_CUDA_TIER", "FUSED_RNN_TRITON_TIER"):
        monkeypatch.delenv(v, raising=False)
    autotune.set_autotune(None)
    autotune.clear_cache()
    select.clear_caches()
    yield
    select.clear_caches()
    autotune.clear_cache()


@pytest.fixture
def table(monkeypatch: pytest.MonkeyPatch) -> policy.CpuTable:
    """A measured table for this machine's kind (ISA class, threads): B (1, 4, 16) × H (64, 256).
    fp32 forward: a win at B=1 and at (4, 64), a loss elsewhere; fp32 forward+backward: a win everywhere;
    bf16 forward: a loss everywhere."""
    isa = policy.cpu_isa()
    if isa == "other":
        pytest.skip("this CPU's ISA class has no policy tables (always native)")
    cells = {}
    for b in (1, 4, 16):
        for h in (64, 256):
            cells[("fp32", "fwd", b, h)] = WIN if b == 1 or (b, h) == (4, 64) else LOSS
            cells[("fp32", "fwd+bwd", b, h)] = FB_WIN
            cells[("bf16", "fwd", b, h)] = LOSS
    t = policy.CpuTable(isa=isa, threads=torch.get_num_threads(), B=(1, 4, 16), H=(64, 256), cells=cells,
                        machine="Test Machine X", date="2026-11-30", run_file="bench/results/test-run.json",
                        preliminary=False)
    monkeypatch.setattr(policy, "_cpu_tables", lambda: (t,))
    select.clear_caches()
    return t


def _layers(e) -> list[str]:
    return [lp.name for lp in e.layers]


# ----------------------------------------------------------------------------------------------------------------
# Each reason type

@needs_cpu
def test_measured_win_inference_and_training(table: policy.CpuTable) -> None:
    rnn = fused_rnn.RNN(7, 64, num_layers=2, bidirectional=True)
    x = torch.randn(20, 1, 7)
    with torch.no_grad():
        e = fused_rnn.explain(rnn, x)
    assert (e.path, e.rule) == ("cpu", "measured-win")
    assert _layers(e) == ["cpu"] * 4
    assert [(lp.layer, lp.direction) for lp in e.layers] == [(0, "forward"), (0, "reverse"), (1, "forward"),
                                                             (1, "reverse")]
    assert [(ev.dtype, ev.mode, ev.B, ev.H, ev.ratio) for ev in e.evidence] == [("fp32", "fwd", 1, 64, 3.0)]
    s = e.summary
    assert s.startswith("cpu: ") and "inference" in s and "×3.0" in s
    for fact in ("Test Machine X", "2026-11-30", f"{table.threads} thread"):
        assert fact in s, fact
    assert "bench/results/test-run.json" in e.source
    # training: the fwd+bwd cells (the mode is part of the key)
    e = fused_rnn.explain(rnn, x)
    assert (e.path, e.call.training) == ("cpu", True)
    assert "training" in e.summary and "×5.0" in e.summary


@needs_cpu
def test_measured_loss_names_the_losing_cell(table: policy.CpuTable) -> None:
    rnn = fused_rnn.RNN(7, 100)  # H between 64 and 256, B between 1 and 4: four surrounding cells
    with torch.no_grad():
        e = fused_rnn.explain(rnn, torch.randn(20, 2, 7))
    assert (e.path, e.rule) == ("native", "measured-loss")
    assert _layers(e) == ["native"]
    assert {(ev.B, ev.H) for ev in e.evidence} == {(1, 64), (1, 256), (4, 64), (4, 256)}
    assert "B=4 H=256: ×0.60" in e.summary and "B 1–4 × H 64–256" in e.summary
    # the same shape in training is a win: the mode decides
    assert fused_rnn.explain(rnn, torch.randn(20, 2, 7)).path == "cpu"


@needs_cpu
def test_outside_grid(table: policy.CpuTable) -> None:
    for H, B in ((32, 1), (64, 64)):
        with torch.no_grad():
            e = fused_rnn.explain(fused_rnn.RNN(3, H), torch.randn(5, B, 3))
        assert (e.path, e.rule) == ("native", "outside-grid")
        assert f"B={B}, H={H}" in e.summary and "outside the measured grid" in e.summary


def test_forced_by_argument_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(5, 2, 3)
    e = fused_rnn.explain(fused_rnn.RNN(3, 8, backend="native"), x)
    assert (e.path, e.rule) == ("native", "forced") and "backend='native' (the module's argument)" in e.summary
    e = fused_rnn.explain(fused_rnn.RNN(3, 8, backend="reference"), x)
    assert (e.path, e.rule, _layers(e)) == ("reference", "forced", ["reference"])
    assert "backend='reference'" in e.summary
    monkeypatch.setenv("FUSED_RNN_BACKEND", "native")
    e = fused_rnn.explain(fused_rnn.RNN(3, 8), x)
    assert (e.path, e.rule) == ("native", "forced") and "FUSED_RNN_BACKEND=native" in e.summary
    monkeypatch.setenv("FUSED_RNN_BACKEND", "reference")
    e = fused_rnn.explain(fused_rnn.RNN(3, 8, num_layers=3), x)
    assert _layers(e) == ["reference"] * 3 and "FUSED_RNN_BACKEND=reference" in e.summary
    # an explicit backend= is not replaced by the environment
    assert fused_rnn.explain(fused_rnn.RNN(3, 8, backend="native"), x).path == "native"


@needs_cpu
def test_record_bptt() -> None:
    x = torch.randn(5, 2, 3)
    with diagnostics.record_bptt():
        e = fused_rnn.explain(fused_rnn.RNN(3, 8, bidirectional=True), x)
        assert (e.path, e.rule, _layers(e)) == ("cpu", "diagnostics", ["cpu", "cpu"])
        native = fused_rnn.RNN(3, 8, backend="native")
        with pytest.raises(RuntimeError) as call_err:
            native(x)
        with pytest.raises(RuntimeError) as explain_err:
            fused_rnn.explain(native, x)
    assert str(explain_err.value) == str(call_err.value) and "record_bptt" in str(call_err.value)


@needs_cpu
def test_compiled() -> None:
    x = torch.randn(5, 2, 3)
    e = fused_rnn.explain(fused_rnn.RNN(3, 8, num_layers=2), x, compiled=True)
    assert (e.path, e.rule, _layers(e)) == ("cpu", "compile", ["cpu", "cpu"])
    assert "torch.compile" in e.summary and e.call.compiled
    e = fused_rnn.explain(fused_rnn.RNN(3, 8, backend="native"), x, compiled=True)
    assert e.path == "native" and any("recompiles" in n for n in e.notes)
    # inside record_bptt a compiled native module does not raise (the recorder sees nothing under compile)
    with diagnostics.record_bptt():
        assert fused_rnn.explain(fused_rnn.RNN(3, 8, backend="native"), x, compiled=True).path == "native"


@needs_cpu
def test_autocast_dtype_is_the_key(table: policy.CpuTable) -> None:
    rnn = fused_rnn.RNN(3, 64)
    x = torch.randn(32, 1, 3)  # T >= 16: not a short call (policy rule 7)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        e = fused_rnn.explain(rnn, x)
    assert (e.call.dtype, e.call.input_dtype, e.call.autocast) == ("bf16", "fp32", True)
    assert (e.path, e.rule) == ("native", "measured-loss") and e.evidence[0].dtype == "bf16"
    assert any("autocast" in n for n in e.notes)
    with torch.no_grad():
        assert fused_rnn.explain(rnn, x).path == "cpu"  # fp32 at B=1: a win


def test_gpu_reasons_with_an_injected_capability(monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU needed: explain_call takes the device; capability and backend availability are injected."""
    rnn = fused_rnn.RNN(256, 256, device="meta", dtype=torch.bfloat16)
    monkeypatch.setattr(cuda_backend, "available", lambda: (True, ""))
    monkeypatch.setattr(cuda_backend, "compiled_tiers", lambda: tuple(cuda_backend.TIERS))
    for cap, want, words in (((8, 0), "native", "no fused tier is verified on compute capability sm_80"),
                             ((9, 0), "cuda:cluster", "over cuDNN counting the input GEMM")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, cap=cap: cap)
        monkeypatch.setattr(select, "_capability", lambda index, cap=cap: cap)
        select.clear_caches()
        e = explain_call(rnn, torch.device("cuda", 0), torch.bfloat16, torch.bfloat16, False, 100, 1, False)
        assert e.name == want and words in e.summary, e.summary
        assert _layers(e) == [want]
    assert "NVIDIA H200 (sm_90)" in e.summary
    # a forced tier (environment) reaches every layer-direction, and the reason names the variable
    monkeypatch.setenv("FUSED_RNN_CUDA_TIER", "fallback")
    rnn2 = fused_rnn.RNN(256, 256, num_layers=2, bidirectional=True, device="meta", dtype=torch.bfloat16)
    e = explain_call(rnn2, torch.device("cuda", 0), torch.bfloat16, torch.bfloat16, False, 100, 1, False)
    assert (e.name, e.rule) == ("cuda:fallback", "forced-tier") and "FUSED_RNN_CUDA_TIER=fallback" in e.summary
    assert _layers(e) == ["cuda:fallback"] * 4


# ----------------------------------------------------------------------------------------------------------------
# Agreement with the call, side effects, errors, the return type

def _random_call(rng: random.Random):
    L, bidir, bf = rng.choice([1, 2]), rng.random() < 0.5, rng.random() < 0.5
    B, H, T, n_in = rng.choice([1, 2, 3, 5, 17]), rng.choice([3, 17, 64, 100, 300]), rng.randint(1, 9), \
        rng.randint(1, 6)
    form = rng.choice(["padded", "lengths", "packed", "unbatched"])
    rnn = fused_rnn.RNN(n_in, H, num_layers=L, bidirectional=bidir, batch_first=bf,
                        nonlinearity=rng.choice(["tanh", "relu"]))
    x = torch.randn(B, T, n_in) if bf else torch.randn(T, B, n_in)
    kw = {}
    if form == "lengths":
        kw["lengths"] = torch.randint(1, T + 1, (B,))
    elif form == "packed":
        x = pack_padded_sequence(x, torch.randint(1, T + 1, (B,)), batch_first=bf, enforce_sorted=False)
    elif form == "unbatched":
        x = x[0] if bf else x[:, 0]
    return rnn, x, kw


@needs_cpu
@pytest.mark.parametrize("injected", [False, True], ids=["committed-tables", "injected-table"])
@pytest.mark.parametrize("seed", range(12))
def test_explain_agrees_with_the_recorded_path(seed: int, injected: bool, request: pytest.FixtureRequest) -> None:
    """Random configurations (layers, directions, batch_first, padded / lengths= / packed / unbatched, B and H on
    and off the grid), in both grad modes: explain names the path, tier and rule the call records."""
    if injected:
        request.getfixturevalue("table")
    rng = random.Random(seed)
    rnn, x, kw = _random_call(rng)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            e = fused_rnn.explain(rnn, x, **kw)
            with select.record_paths() as log:
                rnn(x, **kw)
        assert len(log) == 1
        assert (e.path, e.tier, e.rule) == (log[0].path, log[0].tier, log[0].rule)
        assert e.call.training == grad
        assert len(e.layers) == rnn.num_layers * (2 if rnn.bidirectional else 1)
        assert _layers(e) == [("native" if e.native else e.name)] * len(e.layers)


def test_no_side_effects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(autotune, "_measure", lambda *a: pytest.fail("explain measured"))
    autotune.set_autotune(True)
    rnn = fused_rnn.RNN(3, 8, num_layers=2, dropout=0.5)
    x = torch.randn(5, 2, 3, requires_grad=True)
    state = torch.get_rng_state()
    measured = autotune.cache_info()["measurements"]  # a process-wide count: earlier tests may have measured
    with select.record_paths() as log:
        e = fused_rnn.explain(rnn, x)
    assert log == [] and torch.equal(torch.get_rng_state(), state)
    assert x.grad is None and all(p.grad is None for p in rnn.parameters())
    assert autotune.cache_info() == {"keys": 0, "pending": 0, "measurements": measured}
    assert e.autotune.enabled and e.autotune.state in ("pending", "one-candidate")


@pytest.mark.parametrize("case", ["4d-input", "hx-shape", "hx-dims", "input-size", "env-backend", "lengths-packed"])
def test_raises_what_the_call_raises(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rnn = fused_rnn.RNN(3, 8, num_layers=2)
    x, hx, kw = torch.randn(5, 2, 3), None, {}
    if case == "4d-input":
        x = torch.randn(5, 2, 3, 1)
    elif case == "hx-shape":
        hx = torch.zeros(2, 3, 8)
    elif case == "hx-dims":
        hx = torch.zeros(2, 8)
    elif case == "input-size":
        x = torch.randn(5, 2, 4)
    elif case == "env-backend":
        monkeypatch.setenv("FUSED_RNN_BACKEND", "nativ")
    elif case == "lengths-packed":
        x = pack_padded_sequence(x, torch.tensor([5, 3]))
        kw["lengths"] = torch.tensor([5, 3])
    with pytest.raises(Exception) as call_err:
        rnn(x, hx, **kw)
    with pytest.raises(Exception) as explain_err:
        fused_rnn.explain(rnn, x, hx, **kw)
    assert type(explain_err.value) is type(call_err.value)
    assert str(explain_err.value) == str(call_err.value)


def test_only_fused_rnn_modules() -> None:
    with pytest.raises(TypeError, match="fused_rnn.RNN"):
        fused_rnn.explain(nn.RNN(3, 8), torch.randn(5, 2, 3))


def test_one_return_type_and_a_readable_string(monkeypatch: pytest.MonkeyPatch) -> None:
    rnn = fused_rnn.RNN(3, 8, num_layers=2, bidirectional=True)
    x = torch.randn(5, 2, 3)
    outs = [fused_rnn.explain(rnn, x), rnn.explain(x), fused_rnn.explain(rnn, x, compiled=True)]
    autotune.set_autotune(True)
    outs.append(fused_rnn.explain(rnn, x))
    monkeypatch.setenv("FUSED_RNN_BACKEND", "native")
    outs.append(fused_rnn.explain(rnn, x))
    for e in outs:
        assert type(e) is fused_rnn.Explanation
        text = str(e)
        lines = text.splitlines()
        assert lines[0].startswith("fused_rnn.explain: RNN(3, 8, num_layers=2, bidirectional=True) on cpu fp32")
        assert re.search(rf"^  path +{re.escape(e.name)}$", text, re.M)
        assert re.search(r"^  why +", text, re.M) and re.search(r"^  autotune +", text, re.M)
        for lp in e.layers:
            assert str(lp) in text
        assert all(len(line) <= 120 for line in lines)


def test_readme_snippet_runs() -> None:
    """The README's "What does auto do?" snippet, as written."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    part = text[text.index("### What does `auto` do?"):]
    code = re.search(r"```python\n(.*?)```", part, re.S).group(1)
    try:
        exec(compile(code, "README.md", "exec"), {})
    finally:
        autotune.set_autotune(None)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_explain_names_the_drop_in_fallback(backend: str) -> None:
    """A call the fused stack would not compute as nn.RNN does (here w_hh replaced by one of another dtype) runs
    nn.RNN's op (modules._fused_can_run); explain says so, and the call ran native."""
    if backend not in fused_rnn.available_backends():
        pytest.skip(f"backend {backend} not built")
    m = fused_rnn.RNN(8, 16, backend=backend)
    x = torch.randn(12, 3, 8)
    assert not fused_rnn.explain(m, x).native
    m.weight_hh_l0 = torch.nn.Parameter(m.weight_hh_l0.detach().double())
    e = fused_rnn.explain(m, x)
    assert e.native and e.rule == "drop-in" and all(lp.path == "native" for lp in e.layers), e
    with select.record_paths() as ran, pytest.raises(RuntimeError):
        m(x)  # nn.RNN's own dtype error
    assert [(d.path, d.rule) for d in ran] == [("native", "drop-in")], ran
