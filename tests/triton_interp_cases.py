"""Triton backend under the interpreter: parity with the reference backend and with torch.nn.RNN on CPU tensors.

Not collected by the normal run (no ``test_`` prefix): ``tests/test_triton.py`` runs this file in a subprocess with
``TRITON_INTERPRET=1`` set before triton is imported (``@triton.jit`` reads it when applied). Run by hand with

    TRITON_INTERPRET=1 python -m pytest -q tests/triton_interp_cases.py

fp32 / fp64 throughout, plus fp16 / bf16 parity on a few cases: the kernels work around the interpreter's wrong bf16
dot and truncating bf16 casts behind the INTERP constexpr, so these check the low-precision rounding contract (h_t
rounded every step, fp32 carry, dA rounded when stored), not the GPU's tensor-core numerics (the GPU tests do).
Shapes are small (the interpreter runs ~0.1 s for T=64, B=16, H=64).
"""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET", "0") != "1":  # pragma: no cover - guarded by test_triton.py
    pytest.skip("run with TRITON_INTERPRET=1 (tests/test_triton.py does)", allow_module_level=True)

import fused_rnn  # noqa: E402
from fused_rnn.backends import reference as R  # noqa: E402
from fused_rnn.backends import triton as TB  # noqa: E402
from fused_rnn.recurrence import ElmanRecurrence  # noqa: E402

INTERP_TIERS = ("resident", "per_step")


def _inputs(T: int, B: int, H: int, lengths: bool, seed: int) -> dict:
    """fp64 inputs: P [T,B,H], h0 [B,H] (non-zero), w_hh [H,H], lengths [B] (one element at T, one at 1), dY, dh_n."""
    g = torch.Generator().manual_seed(seed)
    d = dict(
        P=torch.randn(T, B, H, generator=g, dtype=torch.float64),
        h0=0.5 * torch.randn(B, H, generator=g, dtype=torch.float64),
        w=torch.randn(H, H, generator=g, dtype=torch.float64) / H**0.5,
        dY=torch.randn(T, B, H, generator=g, dtype=torch.float64),
        dhn=torch.randn(B, H, generator=g, dtype=torch.float64),
        L=None,
    )
    if lengths:
        L = torch.randint(1, T + 1, (B,), generator=g)
        L[0] = T
        L[-1] = 1
        d["L"] = L
    return d


def _run(mod, d: dict, dtype: torch.dtype, reverse: bool, nl: str, tier: str) -> tuple[torch.Tensor, ...]:
    """forward then backward of backend ``mod`` in ``dtype``; backward consumes this backend's own Y."""
    P, h0, w, dY, dhn = (d[k].to(dtype) for k in ("P", "h0", "w", "dY", "dhn"))
    Y, hn = mod.forward(P, h0, w, d["L"], reverse, nl, tier, False)
    dA, dh0 = mod.backward(dY, dhn, Y, w, d["L"], reverse, nl, tier, False)
    return Y, hn, dA, dh0


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


# (T, B, H, reverse, nonlinearity, lengths): T=1, B=1, H=1; odd sizes; B=17 spans two resident batch tiles
# (BLOCK_B=16); H=20 pads to 32. Every (reverse, nonlinearity, lengths) pattern appears with every tier and dtype.
CASES = [
    (1, 1, 1, False, "tanh", False),
    (7, 3, 17, True, "tanh", True),
    (9, 17, 20, False, "relu", True),
    (13, 5, 31, True, "relu", False),
    (4, 2, 3, False, "tanh", True),
    (6, 4, 9, True, "relu", True),
]


@pytest.mark.parametrize("tier", INTERP_TIERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("T,B,H,reverse,nl,lengths", CASES, ids=[
    f"T{c[0]}-B{c[1]}-H{c[2]}-{'rev' if c[3] else 'fwd'}-{c[4]}{'-len' if c[5] else ''}" for c in CASES])
def test_backend_parity(tier: str, dtype: torch.dtype, T: int, B: int, H: int, reverse: bool, nl: str,
                        lengths: bool) -> None:
    """forward Y, h_n and backward dA, dh0 vs the reference (fp64 oracle); inputs untouched; padding exactly 0."""
    assert TB.effective_tier(tier, H, B, dtype, torch.device("cpu")) == tier  # the tier under test really runs
    d = _inputs(T, B, H, lengths, seed=T * 1000 + B * 10 + H)
    snapshot = {k: v.clone() for k, v in d.items() if v is not None}
    oracle = _run(R, d, torch.float64, reverse, nl, "")
    got = _run(TB, d, dtype, reverse, nl, tier)
    for k, v in snapshot.items():  # inputs are never written
        assert torch.equal(d[k], v), f"input {k} was modified"
    if dtype == torch.float64:
        for name, a, b in zip(("Y", "h_n", "dA", "dh0"), got, oracle):
            assert _err(a, b) <= 1e-12, f"{name}: {_err(a, b):.3e}"
    else:  # tolerance rule: error vs the fp64 oracle <= 2 x the reference's own fp32 error + a small floor
        ref32 = _run(R, d, dtype, reverse, nl, "")
        for name, a, r, o in zip(("Y", "h_n", "dA", "dh0"), got, ref32, oracle):
            bound = 2 * _err(r, o) + 2e-6
            assert _err(a, o) <= bound, f"{name}: err {_err(a, o):.3e} > bound {bound:.3e}"
    if d["L"] is not None:  # padded steps are exactly zero in Y and dA
        pad = torch.arange(T).unsqueeze(1) >= d["L"].unsqueeze(0)  # [T, B]
        assert torch.all(got[0][pad] == 0) and torch.all(got[2][pad] == 0)


@pytest.mark.parametrize("tier", INTERP_TIERS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("reverse,nl", [(True, "tanh"), (False, "relu")], ids=["rev-tanh", "fwd-relu"])
def test_backend_parity_low_precision(tier: str, dtype: torch.dtype, reverse: bool, nl: str) -> None:
    """Tolerance rule: error vs the fp64 oracle <= 2 x the reference's own error in this dtype + a few eps."""
    T, B, H = 9, 5, 24
    d = _inputs(T, B, H, True, seed=21)
    d["w"] = 0.8 * d["w"]  # spectral radius below 1: low-precision errors do not grow along T
    oracle = _run(R, d, torch.float64, reverse, nl, "")
    own = _run(R, d, dtype, reverse, nl, "")
    got = _run(TB, d, dtype, reverse, nl, tier)
    for name, a, r, o in zip(("Y", "h_n", "dA", "dh0"), got, own, oracle):
        assert a.dtype == dtype
        bound = 2 * _err(r, o) + 4 * torch.finfo(dtype).eps * max(1.0, o.abs().max().item())
        assert _err(a, o) <= bound, f"{name}: err {_err(a, o):.3e} > bound {bound:.3e}"


@pytest.mark.parametrize("tier", INTERP_TIERS)
def test_bf16_rounds_to_nearest_even(tier: str) -> None:
    """h_t is rounded (not truncated) to bf16: Y agrees with the reference's bf16 Y almost everywhere.

    The fp32 values differ only by ~1 fp32 ulp (tanh formula, summation order), so a disagreement needs a value
    within an ulp of a bf16 rounding boundary (~1e-4 of elements); truncation would disagree on about half.
    """
    d = _inputs(3, 8, 32, False, seed=17)
    got = _run(TB, d, torch.bfloat16, False, "tanh", tier)[0]
    ref = _run(R, d, torch.bfloat16, False, "tanh", "")[0]
    mismatch = (got != ref).double().mean().item()
    assert mismatch <= 0.02, f"{mismatch:.1%} of Y differs from round-to-nearest-even"


def test_per_step_many_k_chunks() -> None:
    """H=100 > BLOCK_K=64: the per-step tile's K loop runs more than once; B=70 > BLOCK_B=64: two batch tiles."""
    T, B, H = 2, 70, 100
    d = _inputs(T, B, H, True, seed=7)
    oracle = _run(R, d, torch.float64, True, "tanh", "")
    got = _run(TB, d, torch.float64, True, "tanh", "per_step")
    for name, a, b in zip(("Y", "h_n", "dA", "dh0"), got, oracle):
        assert _err(a, b) <= 1e-12, f"{name}: {_err(a, b):.3e}"


def test_resident_over_limit_falls_back_to_per_step() -> None:
    """Forced resident above its H limit runs per_step (documented policy), and still matches the reference."""
    H = TB.resident_max_h(torch.float64) + 1
    assert TB.effective_tier("resident", H, 2, torch.float64, torch.device("cpu")) == "per_step"
    d = _inputs(2, 2, H, False, seed=3)
    got = _run(TB, d, torch.float64, False, "tanh", "resident")
    oracle = _run(R, d, torch.float64, False, "tanh", "")
    assert max(_err(a, b) for a, b in zip(got, oracle)) <= 1e-12


def test_cooperative_is_unavailable_under_the_interpreter() -> None:
    ok, why = TB.cooperative_available()
    assert not ok and "interpreter" in why
    assert TB.pick_tier(4096, 64, torch.float32, torch.device("cpu")) != "cooperative"
    d = _inputs(2, 2, 4, False, seed=1)
    with pytest.raises(RuntimeError, match="cooperative"):
        TB.forward(d["P"], d["h0"], d["w"], None, False, "tanh", "cooperative", False)


@pytest.mark.parametrize("reverse,nl,lengths,T", [(False, "tanh", True, 5), (True, "relu", True, 6),
                                                  (True, "tanh", False, 1)], ids=["fwd-len-T5", "rev-len-T6", "rev-T1"])
def test_cooperative_kernels_single_tile_per_batch_tile(reverse: bool, nl: str, lengths: bool, T: int) -> None:
    """The cooperative kernels' ping-pong bookkeeping (HBUF/CBUF[T % 2], reverse order, lengths) on CPU.

    With one hidden tile per batch tile (N_TILES=1) every program's barrier waits only on itself, so the
    interpreter's one-program-after-another execution cannot hang; the tier itself stays unavailable here.
    B=20: two batch tiles, each with its own barrier counter. T odd and even: both ping-pong parities end h_n / dh0.
    """
    B, H = 20, 12
    d = _inputs(T, B, H, lengths, seed=31 + T)
    oracle = _run(R, d, torch.float64, reverse, nl, "")
    blocks = (16, 1)  # BLOCK_N >= H: one hidden tile
    Y, hn = TB._elman_fwd(d["P"], d["h0"], d["w"], d["L"], reverse, nl, "cooperative", False, False, blocks)
    dA, dh0 = TB._elman_bwd(d["dY"], d["dhn"], Y, d["w"], d["L"], reverse, nl, "cooperative", False, False, blocks)
    for name, a, b in zip(("Y", "h_n", "dA", "dh0"), (Y, hn, dA, dh0), oracle):
        assert _err(a, b) <= 1e-12, f"{name}: {_err(a, b):.3e}"


def test_available_on_cpu_under_interpreter() -> None:
    assert TB.available() == (True, "")
    assert TB.supports_device(torch.device("cpu"))
    assert "triton" in fused_rnn.available_backends()
    assert not TB.USES_TRITON_OP  # interpreted kernels go through a plain custom_op (torch 2.11's wrap_triton)


def test_bad_input_errors() -> None:
    d = _inputs(3, 2, 5, False, seed=2)
    with pytest.raises(ValueError, match="nonlinearity"):
        TB.forward(d["P"], d["h0"], d["w"], None, False, "gelu", "per_step", False)
    with pytest.raises(ValueError, match="shapes"):
        TB.forward(d["P"], d["h0"][:1], d["w"], None, False, "tanh", "per_step", False)
    with pytest.raises(ValueError, match="dtypes"):
        TB.forward(d["P"], d["h0"].float(), d["w"], None, False, "tanh", "per_step", False)
    with pytest.raises(ValueError, match="lengths"):
        TB.forward(d["P"], d["h0"], d["w"], torch.tensor([1, 2], dtype=torch.int32), False, "tanh", "", False)
    with pytest.raises(ValueError, match="tier"):
        TB.forward(d["P"], d["h0"], d["w"], None, False, "tanh", "warp_speed", False)
    with pytest.raises(ValueError, match="dtype"):
        TB.forward(d["P"].to(torch.int32), d["h0"], d["w"], None, False, "tanh", "", False)


@pytest.mark.parametrize("tier,reverse", [("resident", False), ("resident", True), ("per_step", True)],
                         ids=["resident-fwd", "resident-rev", "per_step-rev"])
def test_gradcheck_fp64(tier: str, reverse: bool) -> None:
    """gradcheck through ElmanRecurrence with lengths and non-zero h0 (all of P, h0, w_hh)."""
    d = _inputs(3, 3, 3, True, seed=11)
    P = d["P"].clone().requires_grad_()
    h0 = d["h0"].clone().requires_grad_()
    w = d["w"].clone().requires_grad_()

    def f(P, h0, w):
        return ElmanRecurrence.apply(P, h0, w, d["L"], reverse, "tanh", "triton", tier, False)

    assert torch.autograd.gradcheck(f, (P, h0, w), eps=1e-6, atol=1e-8)


MODULE_CASES = [
    # (num_layers, bidirectional, batch_first, nonlinearity, bias, packed)
    (1, False, False, "tanh", True, False),
    (2, True, True, "relu", True, True),
    (2, False, False, "tanh", False, True),
    (1, True, False, "relu", True, False),
]


@pytest.mark.parametrize("tier", INTERP_TIERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("case", MODULE_CASES, ids=["l1-tanh", "l2-bi-bf-relu-packed", "l2-nobias-packed",
                                                    "l1-bi-relu"])
def test_module_vs_torch_nn_rnn(tier: str, dtype: torch.dtype, case: tuple, monkeypatch) -> None:
    """fused_rnn.RNN(backend="triton") vs torch.nn.RNN with one state_dict: output, h_n and every gradient.

    fp64: equal to 1e-10. fp32: the error vs nn.RNN in fp64 is at most 2 x nn.RNN's own fp32 error + a floor.
    """
    layers, bidi, bf, nl, bias, packed = case
    monkeypatch.setenv("FUSED_RNN_TRITON_TIER", tier)
    torch.manual_seed(5)
    n_in, H, T, B = 6, 13, 7, 4
    kw = dict(num_layers=layers, nonlinearity=nl, bias=bias, batch_first=bf, bidirectional=bidi)
    ref = torch.nn.RNN(n_in, H, **kw).double()
    mod = fused_rnn.RNN(n_in, H, **kw, backend="triton").double()
    mod.load_state_dict(ref.state_dict())
    D = 2 if bidi else 1
    x = torch.randn(B, T, n_in, dtype=torch.float64) if bf else torch.randn(T, B, n_in, dtype=torch.float64)
    h0 = 0.3 * torch.randn(layers * D, B, H, dtype=torch.float64)
    lengths = torch.tensor([T, 5, 3, 1])

    def go(m: torch.nn.Module, dt: torch.dtype) -> list[torch.Tensor]:
        m = m.to(dt)
        for p in m.parameters():
            p.grad = None
        xi = x.to(dt).detach().requires_grad_()
        hi = h0.to(dt).detach().requires_grad_()
        inp = torch.nn.utils.rnn.pack_padded_sequence(xi, lengths, batch_first=bf) if packed else xi
        out, hn = m(inp, hi)
        if packed:
            out = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=bf)[0]
        g = torch.Generator().manual_seed(9)
        loss = (out * torch.randn(out.shape, generator=g, dtype=torch.float64).to(dt)).sum() + (
            hn * torch.randn(hn.shape, generator=g, dtype=torch.float64).to(dt)).sum()
        loss.backward()
        return [t.detach().clone() for t in [out, hn, xi.grad, hi.grad] + [p.grad for p in m.parameters()]]

    oracle = go(ref, torch.float64)
    got = go(mod, dtype)
    own = go(ref, dtype) if dtype != torch.float64 else None
    for i, (a, o) in enumerate(zip(got, oracle)):
        assert a.shape == o.shape
        bound = 1e-10 if own is None else 2 * _err(own[i], o) + 2e-6
        assert _err(a, o) <= bound, f"tensor {i}: err {_err(a, o):.3e} > bound {bound:.3e}"


def test_ops_are_opaque_under_torch_compile() -> None:
    """torch.compile(fullgraph=True, dynamic=True) traces the ops through their fake implementations and runs them.

    (Through the module this also needs select.py's backend lookup to be traceable -- see the triton report.)
    """
    def f(P, h0, w, L):
        Y, hn = torch.ops.fused_rnn_triton.elman_fwd(P, h0, w, L, True, "tanh", "resident", False)
        dA, dh0 = torch.ops.fused_rnn_triton.elman_bwd(torch.ones_like(Y), hn, Y, w, L, True, "tanh", "resident",
                                                       False)
        return Y * 2, hn, dA, dh0

    cf = torch.compile(f, fullgraph=True, dynamic=True, backend="aot_eager")
    for T, B in ((5, 3), (7, 4)):  # a second shape: no shape baked into the trace
        d = _inputs(T, B, 8, True, seed=T)
        args = (d["P"], d["h0"], d["w"], d["L"])
        for a, b in zip(cf(*args), f(*args)):
            assert a.shape == b.shape and _err(a, b) <= 1e-12


def test_opcheck_ops() -> None:
    """Schema, fake implementation and dispatch of the registered ops (non-grad inputs; ENV.md)."""
    d = _inputs(3, 2, 5, True, seed=4)
    for tier in INTERP_TIERS:
        torch.library.opcheck(torch.ops.fused_rnn_triton.elman_fwd.default,
                              (d["P"], d["h0"], d["w"], d["L"], True, "tanh", tier, False))
        Y, _ = TB.forward(d["P"], d["h0"], d["w"], d["L"], True, "tanh", tier, False)
        torch.library.opcheck(torch.ops.fused_rnn_triton.elman_bwd.default,
                              (d["dY"], d["dhn"], Y, d["w"], d["L"], True, "tanh", tier, False))


def _wrap_triton_takes_interpreted_kernels() -> bool:
    """torch 2.14's wrap_triton passes an interpreted kernel through (torch/_library/triton.py checks it with
    _is_interpreted_triton_kernel); torch 2.11's has no such check and rejects it (ENV.md)."""
    import torch._library.triton as lib_triton

    return hasattr(lib_triton, "_is_interpreted_triton_kernel")


@pytest.mark.parametrize("tier", INTERP_TIERS)
def test_launch_through_wrap_triton(tier: str) -> None:
    """The launchers' triton_op path (wrap_triton, as used on a GPU) forwards every launch option correctly.

    On a torch whose wrap_triton rejects interpreted kernels (2.11) this path cannot run on the CPU: the test then
    asserts exactly that rejection (the GPU run covers the path), instead of skipping -- so the interpreter run has
    no skips, and a torch that starts accepting them turns this into a failure that says to drop the exception."""
    d = _inputs(4, 3, 5, True, seed=12)
    if not _wrap_triton_takes_interpreted_kernels():
        with pytest.raises(RuntimeError, match="wrap_triton only works on functions annotated with triton.jit"):
            TB.elman_fwd(d["P"], d["h0"], d["w"], d["L"], True, "relu", tier, False, use_wrap=True)
        return
    Y, hn = TB.elman_fwd(d["P"], d["h0"], d["w"], d["L"], True, "relu", tier, False, use_wrap=True)
    dA, dh0 = TB.elman_bwd(d["dY"], d["dhn"], Y, d["w"], d["L"], True, "relu", tier, False, use_wrap=True)
    oracle = _run(R, d, torch.float64, True, "relu", "")
    for name, a, b in zip(("Y", "h_n", "dA", "dh0"), (Y, hn, dA, dh0), oracle):
        assert _err(a, b) <= 1e-12, f"{name}: {_err(a, b):.3e}"


def test_empty_batch_returns_empty_results() -> None:
    """B = 0 never launches (a zero-size grid is invalid on a GPU); direct calls get empty results."""
    P, h0, w = torch.zeros(3, 0, 4), torch.zeros(0, 4), torch.randn(4, 4)
    Y, hn = TB.forward(P, h0, w, None, False, "tanh", "per_step", False)
    assert Y.shape == (3, 0, 4) and hn.shape == (0, 4)
    dA, dh0 = TB.backward(torch.zeros_like(Y), hn, Y, w, None, False, "tanh", "per_step", False)
    assert dA.shape == (3, 0, 4) and dh0.shape == (0, 4)


def test_tier_record_names_the_tier_that_ran() -> None:
    """fused_rnn.backends.tier_log records every Triton launch with the tier asked for and the tier that ran: a
    resident request beyond its H limit (fp64: 128) runs per_step, and the record says so and why."""
    from fused_rnn.backends import tier_log

    small, big = _inputs(3, 2, 17, True, seed=1), _inputs(2, 1, 129, False, seed=2)
    with tier_log.record() as runs:
        _run(TB, small, torch.float32, False, "tanh", "resident")
        _run(TB, big, torch.float64, True, "relu", "resident")
    got = [(r.backend, r.op, r.requested, r.ran, bool(r.why)) for r in runs]
    assert got == [("triton", "fwd", "resident", "resident", False), ("triton", "bwd", "resident", "resident", False),
                   ("triton", "fwd", "resident", "per_step", True), ("triton", "bwd", "resident", "per_step", True)]
    assert runs[2].shape == "T=2 B=1 H=129 float64", runs[2]
    with tier_log.record() as after:
        pass
    assert after == []  # nothing left over once every record closed


@pytest.mark.parametrize("tier", INTERP_TIERS)
def test_relu_dead_unit_blocks_nonfinite_gradient(tier: str) -> None:
    """relu backward is torch's threshold_backward, a select (h <= 0 ? 0 : g): inf / NaN in dY at a dead unit gives
    dA = 0 there, as nn.RNN and the reference give (tests/test_relu_backward.py has the CPU backends)."""
    from test_relu_backward import dead_unit_case

    Y, w, dY, dhn, dead = dead_unit_case(5, 6, 12)
    dA, dh0 = TB.backward(dY, dhn, Y, w, None, False, "relu", tier, False)
    rA, rh0 = R.backward(dY, dhn, Y, w, None, False, "relu")
    assert torch.equal(dA[dead], torch.zeros_like(dA[dead])) and torch.isfinite(dA).all() and torch.isfinite(dh0).all()
    torch.testing.assert_close(dA, rA, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dh0, rh0, rtol=1e-5, atol=1e-5)
