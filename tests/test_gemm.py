"""The fused layer's half-precision GEMMs in fp32 (fused_rnn/gemm.py, policy rule 8): the input projection, its
gradients and dW_hh computed from widened operands in chunks of time steps, rounded once. Checked on any CPU by
forcing the route (FUSED_RNN_HALF_GEMM=fp32): the values against an fp64 oracle with DESIGN.md's rule (against the
storage-dtype GEMMs' own error), every gradient and only the needed ones, chunk boundaries, strided inputs, the
in-place-edit recompute giving the forward's bits, whole modules against nn.RNN, and when the rule fires.
Shapes: T time, B batch, I input, H hidden."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F
from test_fuzz_parity import DRAWS, test_random_configuration_matches_nn_rnn
from test_module import assert_within_rule
from test_parity_options import LP_FLOOR

import fused_rnn
import fused_rnn.gemm as G
import fused_rnn.recurrence  # noqa: F401  (the module; the package exports a function of the same name)
from fused_rnn import policy
from fused_rnn.functional import input_projection, projection_in_fp32
from fused_rnn.policy import CpuTable

R = sys.modules["fused_rnn.recurrence"]
HALF = [torch.bfloat16, torch.float16]
HALF_IDS = ["bf16", "fp16"]


@pytest.fixture
def route(monkeypatch: pytest.MonkeyPatch):
    """Set FUSED_RNN_HALF_GEMM for the test."""
    def set_mode(mode: str) -> None:
        monkeypatch.setenv("FUSED_RNN_HALF_GEMM", mode)
    return set_mode


def _proj_results(x, w, b, mode: str, route) -> dict:
    route(mode)
    x = x.detach().requires_grad_(True)
    w = w.detach().requires_grad_(True)
    b = None if b is None else b.detach().requires_grad_(True)
    P = input_projection(x, w, b, None)
    g = torch.linspace(-1, 1, P.numel(), dtype=torch.float64).view_as(P).sin()
    (P.double() * g).sum().backward()
    out = {"P": P.detach(), "dx": x.grad, "dw": w.grad}
    if b is not None:
        out["db"] = b.grad
    return out


# T, B, I, H: odd sizes; T·B·(I+H) above a chunk of 64 fp32 values (set below) in every case, so chunks split steps
SHAPES = [(7, 3, 5, 9), (1, 1, 2, 3), (13, 2, 17, 33), (5, 6, 64, 20)]


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("strided", [False, True], ids=["contig", "strided"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"T{t}B{b}I{i}H{h}" for t, b, i, h in SHAPES])
@pytest.mark.parametrize("dtype", HALF, ids=HALF_IDS)
@pytest.mark.parametrize("chunk", [64, 1 << 22], ids=["chunked", "onechunk"])
def test_projection_within_rule(dtype, shape, strided, bias, chunk, route, monkeypatch) -> None:
    """P, dx, dW, db from the fp32 route vs the fp64 oracle: within 2 × the storage-dtype GEMMs' error + floor."""
    monkeypatch.setattr(G, "_CHUNK_FLOATS", chunk)
    T, B, I, H = shape  # noqa: E741
    g = torch.Generator().manual_seed(T * 100 + I)
    x64 = torch.randn(B, T, I, generator=g, dtype=torch.float64).transpose(0, 1) if strided else \
        torch.randn(T, B, I, generator=g, dtype=torch.float64)
    w64 = torch.randn(H, I, generator=g, dtype=torch.float64) / I ** 0.5
    b64 = torch.randn(H, generator=g, dtype=torch.float64) if bias else None
    x, w, b = x64.to(dtype), w64.to(dtype), None if b64 is None else b64.to(dtype)
    assert x.is_contiguous() != strided or min(T, B) == 1
    ours = _proj_results(x, w, b, "fp32", route)
    theirs = _proj_results(x, w, b, "storage", route)
    oracle = _proj_results(x.double(), w.double(), None if b is None else b.double(), "storage", route)
    assert ours.keys() == theirs.keys() == oracle.keys()
    assert_within_rule(ours, theirs, oracle, floor_eps=LP_FLOOR[dtype])


def test_route_is_taken_and_only_needed_gradients(route) -> None:
    """The route runs (its autograd node) where forced, the storage GEMM where not; x without grad gets none."""
    x = torch.randn(4, 2, 8, dtype=torch.bfloat16)
    w = torch.randn(6, 8, dtype=torch.bfloat16, requires_grad=True)
    route("fp32")
    P = input_projection(x, w, None, None)
    assert type(P.grad_fn).__name__ == "_ProjectionF32Backward"
    P.float().sum().backward()
    assert x.grad is None and w.grad is not None and w.grad.dtype == torch.bfloat16
    route("storage")
    assert "ProjectionF32" not in type(input_projection(x, w, None, None).grad_fn).__name__
    route("fp32")  # not for fp32 data, mixed dtypes, nor under autocast (F.linear casts there)
    wd = w.detach()
    assert projection_in_fp32(x, wd, None) and projection_in_fp32(x, wd, wd[:, 0])
    assert not projection_in_fp32(x.float(), wd.float(), None)
    assert not projection_in_fp32(x, wd, wd[:, 0].float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not projection_in_fp32(x, wd, None)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("dtype", HALF, ids=HALF_IDS)
def test_grad_w_hh_within_rule(dtype, lengths, reverse, route, monkeypatch) -> None:
    """dW_hh = Σ_t dA_tᵀ S_t through the route (chunked, steps split), vs the fp64 sum of the same half inputs."""
    monkeypatch.setattr(G, "_CHUNK_FLOATS", 100)
    T, B, H = 11, 4, 19
    g = torch.Generator().manual_seed(3)
    dA = torch.randn(T, B, H, generator=g).to(dtype)
    Y = torch.randn(T, B, H, generator=g).tanh().to(dtype)
    h0 = torch.randn(B, H, generator=g).to(dtype)
    L = torch.tensor([T, 1, 5, 8]) if lengths else None
    if L is not None:
        pad = (torch.arange(T).unsqueeze(1) >= L.unsqueeze(0)).unsqueeze(2)
        dA, Y = dA.masked_fill(pad, 0.0), Y.masked_fill(pad, 0.0)
    route("fp32")
    ours = R.grad_w_hh(dA, Y, h0, L, reverse)
    route("storage")
    theirs = R.grad_w_hh(dA, Y, h0, L, reverse)
    oracle = R.grad_w_hh(dA.double(), Y.double(), h0.double(), L, reverse)
    assert ours.dtype == dtype
    assert_within_rule({"dw": ours}, {"dw": theirs}, {"dw": oracle}, floor_eps=LP_FLOOR[dtype])


HALF_DRAWS = [d for d in DRAWS if d.dtype in ("bf16", "fp16") and d.backend != "auto"]


@pytest.mark.parametrize("d", HALF_DRAWS, ids=[d.id for d in HALF_DRAWS])
def test_random_half_configuration_with_fp32_gemms(d, route) -> None:
    """The differential test's half-precision draws (forced fused backends) again with every GEMM on the route."""
    route("fp32")
    test_random_configuration_matches_nn_rnn(d)


def test_edited_output_recomputes_the_forwards_bits(route) -> None:
    """An in-place edit of the output makes the backward recompute P: with the route that is the route's P again,
    so the gradients equal bit for bit those of the same edit written out of place."""
    route("fp32")
    torch.manual_seed(0)
    m = fused_rnn.RNN(12, 10, num_layers=2, backend="cpu" if "cpu" in fused_rnn.available_backends()
                      else "reference").to(torch.bfloat16)
    x = torch.randn(6, 3, 12, dtype=torch.bfloat16)

    def grads(edit) -> list:
        m.zero_grad()
        xx = x.clone().requires_grad_(True)
        out, _ = m(xx)
        edit(out).float().sum().backward()
        return [xx.grad] + [p.grad.clone() for p in m.parameters()]

    got = grads(lambda y: y.mul_(2.0))
    want = grads(lambda y: y * 2.0)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


def test_mode_setting(route) -> None:
    x = torch.zeros(2, 2, 4, dtype=torch.bfloat16)
    route("fp32")
    assert G.use_fp32(x, 4, 4) and not G.use_fp32(x.float(), 4, 4) and not G.use_fp32(x.to("meta"), 4, 4)
    route("storage")
    assert not G.use_fp32(x, 1024, 1024)
    route("bogus")
    with pytest.raises(ValueError, match="FUSED_RNN_HALF_GEMM must be"):
        G.use_fp32(x, 4, 4)


def test_auto_mode_needs_the_size_and_the_machine(route, monkeypatch) -> None:
    route("auto")
    x = torch.zeros(2, 2, 4, dtype=torch.bfloat16)
    monkeypatch.setattr(G, "_machine_says_fp32", lambda dtype, threads: True)
    assert G.use_fp32(x, 512, 1024) and G.use_fp32(x, 1024, 512)
    assert not G.use_fp32(x, 511, 1024) and not G.use_fp32(x, 1024, 256)
    monkeypatch.setattr(G, "_machine_says_fp32", lambda dtype, threads: False)
    assert not G.use_fp32(x, 1024, 1024)


def _table(core: str, threads: int, gemm: dict) -> CpuTable:
    return CpuTable(isa="avx512_bf16", threads=threads, B=(1,), H=(64,), cells={}, machine="m", date="d",
                    core=core, gemm_tflops=gemm)


def test_rule_8_is_measured_per_machine_kind_never_borrowed() -> None:
    intel = _table("Intel Emerald Rapids", 2, {"bf16": 0.18, "fp32": 0.34})
    zen = _table("AMD Zen 5", 2, {"bf16": 0.40, "fp32": 0.16})
    tables = (intel, zen)

    def ask(dkey: str, core: str, threads: int = 2, ts: tuple = tables) -> bool:
        return policy.gemm_in_fp32(dkey, isa="avx512_bf16", threads=threads, core=core, cpu_tables=ts)

    assert ask("bf16", "Intel Emerald Rapids")
    assert not ask("bf16", "AMD Zen 5")  # bf16 GEMMs are the faster there
    assert not ask("bf16", "Intel Emerald Rapids", threads=4)  # no exact table: not borrowed
    assert not ask("bf16", "Intel Sapphire Rapids")
    assert not ask("fp16", "Intel Emerald Rapids")  # fp16 not measured
    assert not ask("fp32", "Intel Emerald Rapids")
    near = (_table("Intel Emerald Rapids", 2, {"bf16": 0.30, "fp32": 0.34}),)  # ×1.13: below the 1.25 gain
    assert not ask("bf16", "Intel Emerald Rapids", ts=near)
    assert not ask("bf16", "Intel Emerald Rapids", ts=(_table("Intel Emerald Rapids", 2, {}),))


def test_module_uses_the_route_when_the_rule_fires(route, monkeypatch) -> None:
    """End to end in auto mode: a bf16 module with I, H ≥ 512 on a machine the rule names runs its projection on
    the route; below 512 it does not."""
    route("auto")
    monkeypatch.setattr(G, "_machine_says_fp32", lambda dtype, threads: True)
    seen = []
    real = G.projection_fp32
    monkeypatch.setattr(G, "projection_fp32", lambda *a: seen.append(a[0].shape) or real(*a))
    for H in (512, 256):
        m = fused_rnn.RNN(H, H, backend="reference").to(torch.bfloat16)
        m(torch.randn(2, 1, H, dtype=torch.bfloat16))
    assert seen == [torch.Size([2, 1, 512])]


def test_storage_route_matches_f_linear(route) -> None:
    """With the route off the projection is F.linear itself (bit for bit): nothing changed for other machines."""
    route("storage")
    g = torch.Generator().manual_seed(1)
    x, w, b = (torch.randn(*s, generator=g).to(torch.bfloat16) for s in ((5, 3, 7), (4, 7), (4,)))
    assert torch.equal(input_projection(x, w, b, None), F.linear(x, w, b))


def test_committed_tables_record_their_runs_gemm_rates() -> None:
    """policy_data's gemm_tflops are the run file's measured peaks (bench.policy writes them; rule 8 reads them)."""
    import json
    from pathlib import Path

    from fused_rnn import policy_data

    root = Path(__file__).resolve().parent.parent
    for raw in policy_data.CPU_TABLES:
        run = json.loads((root / raw["run_file"]).read_text())
        peaks = (run.get("peaks") or {}).get("tflops") or {}
        assert raw.get("gemm_tflops", {}) == {k: round(v, 3) for k, v in sorted(peaks.items())}, raw["run_file"]


def test_explain_says_when_the_gemms_run_in_fp32(route, monkeypatch) -> None:
    """fused_rnn.explain notes the route for the GEMMs that take it (by their sizes), and is silent where none does."""
    route("auto")
    monkeypatch.setattr(G, "_machine_says_fp32", lambda dtype, threads: True)
    m = fused_rnn.RNN(256, 512, num_layers=2, backend="reference").to(torch.bfloat16)
    text = str(fused_rnn.explain(m, torch.randn(5, 2, 256, dtype=torch.bfloat16)))
    assert "bf16 GEMMs in fp32 for the input projections of layers 1+ (I=512), dW_hh (H=512)" in text, text
    assert "layer 0's input projection" not in text  # I=256: below the floor
    small = fused_rnn.RNN(256, 256, backend="reference").to(torch.bfloat16)
    assert "GEMMs in fp32" not in str(fused_rnn.explain(small, torch.randn(5, 2, 256, dtype=torch.bfloat16)))
    monkeypatch.setattr(G, "_machine_says_fp32", lambda dtype, threads: False)
    assert "GEMMs in fp32" not in str(fused_rnn.explain(m, torch.randn(5, 2, 256, dtype=torch.bfloat16)))
