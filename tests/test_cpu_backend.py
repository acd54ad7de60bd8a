"""The C++ CPU backend (csrc/cpu/) against the reference backend, the oracle of the backend contract.

Shapes: T time, B batch, H hidden. Contract checks call the backend functions directly (fused_rnn.backends.cpu),
gradients go through fused_rnn.recurrence.ElmanRecurrence, and every kernel set this CPU can run (generic always;
AVX2 and AVX-512 where /proc/cpuinfo lists them -- tests/cpu_common.py) and every path (serial, hidden split, batch
split, per-step BLAS) is tested. Threads, nesting and bitwise equality: tests/test_cpu_threads.py. fp32/fp64 are
compared tightly with the reference; fp16/bf16 by DESIGN.md's tolerance rule (error vs an fp64 oracle <= 2 x the
reference's own error in that dtype, plus a small floor).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator

import pytest
import torch
from cpu_common import AUTO_ISA, BEST_ISA, ISAS, forced, last_run  # tests/cpu_common.py

import fused_rnn
from fused_rnn.backends import cpu as cpu_backend
from fused_rnn.backends import reference
from fused_rnn.recurrence import ElmanRecurrence

Tensor = torch.Tensor


# Kernel paths: every instruction set this CPU lists in /proc/cpuinfo (own loops, path chosen as usual), then the
# best ISA with the hidden split and with the batch split forced (2+ threads run them; one thread runs serially), and
# the per-step BLAS path.
PATHS = [*ISAS, "hidden", "batch", "blas"]


@contextlib.contextmanager
def forced_isa(name: str) -> Iterator[str]:
    """Run with one kernel path forced -- an instruction set of the own loops ("generic", "avx2", "avx512"), a split
    of the own loops on the best ISA ("hidden", "batch"), or "blas" (the per-step BLAS path) -- asserting that the
    switch took effect, then restore the default."""
    if name in ISAS:
        with forced(isa=name, path="auto"):
            yield name
            assert last_run()["isa"] == name, f"asked for {name}, ran {last_run()}"
    else:
        with forced(isa=BEST_ISA, path=name):
            yield name
            # a split runs serially where the shape leaves one worker nothing to do (test_cpu_threads.py checks that
            # it really splits where it can)
            assert last_run()["path"] in (name, "serial"), last_run()


@pytest.fixture(params=PATHS)
def isa(request) -> Iterator[str]:
    """Parametrizes a test over every kernel path this CPU can run."""
    with forced_isa(request.param) as name:
        yield name


def _inputs(T: int, B: int, H: int, dtype: torch.dtype, lengths_kind: str, seed: int = 0):
    """Random P [T,B,H], h0 [B,H] (non-zero), w_hh [H,H] (spectral radius ~0.9), lengths [B] | None, dY, dh_n."""
    g = torch.Generator().manual_seed(seed)
    P = torch.randn(T, B, H, generator=g, dtype=torch.float64)
    h0 = 0.5 * torch.randn(B, H, generator=g, dtype=torch.float64)
    w = 0.9 * torch.randn(H, H, generator=g, dtype=torch.float64) / H**0.5
    dY = torch.randn(T, B, H, generator=g, dtype=torch.float64)
    dh = torch.randn(B, H, generator=g, dtype=torch.float64)
    if lengths_kind == "none":
        L = None
    elif lengths_kind == "full":
        L = torch.full((B,), T, dtype=torch.int64)
    else:  # "mixed": every value in [1, T], the longest not necessarily T
        L = torch.randint(1, T + 1, (B,), generator=g, dtype=torch.int64)
    return P.to(dtype), h0.to(dtype), w.to(dtype), L, dY.to(dtype), dh.to(dtype)


def _assert_close(name: str, got: Tensor, want: Tensor, tol: float) -> None:
    """|got - want| <= tol * max(1, max|want|), NaN/inf in the same places; logs the error judged."""
    assert got.shape == want.shape and got.dtype == want.dtype, f"{name}: {got.shape}/{got.dtype} vs {want.shape}"
    scale = max(1.0, float(want.abs().max())) if want.numel() else 1.0
    torch.testing.assert_close(got, want, atol=tol * scale, rtol=0, msg=lambda m: f"{name}: {m}")


def test_extension_is_built() -> None:
    """CI builds the extension: a missing build must fail here, not be skipped."""
    assert "cpu" in fused_rnn.available_backends(), cpu_backend.available()[1]


def _contract_cases() -> list:
    """The full T x B x H matrix on the own loops with the instruction set this CPU picks; a cross-section on the
    other paths (generic kernels: same source, other vector width, so other tiles and tails; per-step BLAS)."""
    best = ISAS[-1]
    cases = []
    for T, B, H in itertools.product((1, 7, 63), (1, 3, 5, 18), (1, 17, 100)):
        for lk in ("none", "mixed") if B > 1 else ("none", "full"):
            isas = [best]
            if T == 7 or (T == 63 and lk == "mixed" and H == 100):
                isas += [p for p in PATHS if p != best]
            cases += [pytest.param(i, T, B, H, lk, id=f"{i}-T{T}-B{B}-H{H}-{lk}") for i in isas]
    return cases


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("isa_name,T,B,H,lengths_kind", _contract_cases())
def test_contract_vs_reference(isa_name: str, T: int, B: int, H: int, lengths_kind: str,
                               dtype: torch.dtype) -> None:
    with forced_isa(isa_name) as isa:
        _check_contract(isa, T, B, H, lengths_kind, dtype)


def _check_contract(isa: str, T: int, B: int, H: int, lengths_kind: str, dtype: torch.dtype) -> None:
    # reverse x nonlinearity: two of the four per case, alternating, so the matrix meets all four at half the cost.
    tol = 2e-5 if dtype == torch.float32 else 1e-12
    combos = ((False, "tanh"), (True, "relu")) if (T + B + H) % 2 else ((True, "tanh"), (False, "relu"))
    for reverse, act in combos:
        P, h0, w, L, dY, dh = _inputs(T, B, H, dtype, lengths_kind, seed=T * 1000 + B * 10 + H)
        Y_ref, hn_ref = reference.forward(P, h0, w, L, reverse, act)
        Y, hn = cpu_backend.forward(P, h0, w, L, reverse, act)
        tag = f"{isa} rev={reverse} {act}"
        _assert_close(f"Y {tag}", Y, Y_ref, tol)
        _assert_close(f"h_n {tag}", hn, hn_ref, tol)
        if L is not None:  # padded steps are exactly zero
            pad = torch.arange(T).unsqueeze(1) >= L.unsqueeze(0)  # [T, B]
            assert torch.equal(Y[pad], torch.zeros_like(Y[pad]))
        dA_ref, dh0_ref = reference.backward(dY, dh, Y_ref, w, L, reverse, act)
        dA, dh0 = cpu_backend.backward(dY, dh, Y_ref, w, L, reverse, act)
        _assert_close(f"dA {tag}", dA, dA_ref, tol)
        _assert_close(f"dh0 {tag}", dh0, dh0_ref, tol)
        if L is not None:
            assert torch.equal(dA[pad], torch.zeros_like(dA[pad]))


@pytest.mark.parametrize("dtype,T", [(torch.float32, 1300), (torch.float64, 700)], ids=["fp32", "fp64"])
@pytest.mark.parametrize("lengths_kind", ["none", "mixed"])
def test_contract_large_outputs(dtype: torch.dtype, T: int, lengths_kind: str) -> None:
    """Outputs of several MiB (Y and dA [T, 5, 170]: 4.4 / 4.8 MB, fresh mmap'd memory from glibc), long enough for
    the kernels' blocking over T to matter: values, and exact zeros at padded steps, as above."""
    _check_contract(BEST_ISA, T, 5, 170, lengths_kind, dtype)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_lengths_7_5_5_2_1_1(isa: str, reverse: bool, act: str) -> None:
    """Mixed lengths with a non-zero h0 -- the case where a kernel that ignores per-element order goes wrong."""
    P, h0, w, _, dY, dh = _inputs(7, 6, 33, torch.float64, "none", seed=7)
    L = torch.tensor([7, 5, 5, 2, 1, 1])
    Y_ref, hn_ref = reference.forward(P, h0, w, L, reverse, act)
    Y, hn = cpu_backend.forward(P, h0, w, L, reverse, act)
    _assert_close("Y", Y, Y_ref, 1e-12)
    _assert_close("h_n", hn, hn_ref, 1e-12)
    dA_ref, dh0_ref = reference.backward(dY, dh, Y_ref, w, L, reverse, act)
    dA, dh0 = cpu_backend.backward(dY, dh, Y_ref, w, L, reverse, act)
    _assert_close("dA", dA, dA_ref, 1e-12)
    _assert_close("dh0", dh0, dh0_ref, 1e-12)


def _max_err(a: Tensor, oracle: Tensor) -> float:
    return float((a.double() - oracle).abs().max()) if a.numel() else 0.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("T,B,H,lengths_kind,reverse,act", [
    pytest.param(7, 5, 17, "mixed", False, "tanh", id="T7-B5-H17-mixed-tanh"),
    pytest.param(63, 3, 100, "mixed", True, "tanh", id="T63-B3-H100-mixed-rev-tanh"),
    pytest.param(63, 18, 17, "none", False, "relu", id="T63-B18-H17-relu"),
    pytest.param(1, 1, 1, "none", True, "tanh", id="T1-B1-H1-rev"),
])
def test_low_precision_tolerance_rule(isa: str, T: int, B: int, H: int, lengths_kind: str, reverse: bool, act: str,
                                      dtype: torch.dtype) -> None:
    """fp16/bf16: error vs the fp64 oracle <= 2 x the reference's own error in that dtype + a small floor."""
    P, h0, w, L, dY, dh = _inputs(T, B, H, dtype, lengths_kind, seed=11 + T + H)
    d = lambda t: t.double()  # noqa: E731
    Y64, hn64 = reference.forward(d(P), d(h0), d(w), L, reverse, act)
    dA64, dh064 = reference.backward(d(dY), d(dh), Y64, d(w), L, reverse, act)
    Y_ref, hn_ref = reference.forward(P, h0, w, L, reverse, act)
    dA_ref, dh0_ref = reference.backward(dY, dh, Y_ref, w, L, reverse, act)
    Y, hn = cpu_backend.forward(P, h0, w, L, reverse, act)
    dA, dh0 = cpu_backend.backward(dY, dh, Y, w, L, reverse, act)
    eps = torch.finfo(dtype).eps
    for name, got, ref, oracle in (("Y", Y, Y_ref, Y64), ("h_n", hn, hn_ref, hn64), ("dA", dA, dA_ref, dA64),
                                   ("dh0", dh0, dh0_ref, dh064)):
        assert got.dtype == dtype and got.shape == oracle.shape, name
        floor = 2 * eps * max(1.0, float(oracle.abs().max()))
        e_cpu, e_ref = _max_err(got, oracle), _max_err(ref, oracle)
        print(f"{name}: cpu err {e_cpu:.3g}, reference err {e_ref:.3g}, floor {floor:.3g}")
        assert e_cpu <= 2 * e_ref + floor, f"{name}: cpu err {e_cpu:.3g} > 2 x reference err {e_ref:.3g} + {floor:.3g}"


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("act", ["tanh", "relu"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["all-T", "lengths"])
def test_gradcheck_fp64(reverse: bool, act: str, with_lengths: bool) -> None:
    """Every input gradient of the Function (P, h0, w_hh) with backend="cpu" against finite differences."""
    g = torch.Generator().manual_seed(3)
    T, B, H = 5, 3, 4
    P = torch.randn(T, B, H, generator=g, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(B, H, generator=g, dtype=torch.float64, requires_grad=True)
    w = (0.7 * torch.randn(H, H, generator=g, dtype=torch.float64)).requires_grad_()
    L = torch.tensor([5, 2, 3]) if with_lengths else None
    fn = lambda P, h0, w: ElmanRecurrence.apply(P, h0, w, L, reverse, act, "cpu", "", False)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (P, h0, w), eps=1e-6, atol=1e-7)


def test_module_matches_nn_rnn_fp64() -> None:
    """The whole layer through fused_rnn.RNN(backend="cpu"): outputs and every parameter gradient vs torch.nn.RNN."""
    torch.manual_seed(5)
    ref = torch.nn.RNN(6, 9, num_layers=2, bidirectional=True, nonlinearity="relu", dtype=torch.float64)
    mod = fused_rnn.RNN(6, 9, num_layers=2, bidirectional=True, nonlinearity="relu", dtype=torch.float64,
                        backend="cpu")
    mod.load_state_dict(ref.state_dict())
    x = torch.randn(11, 4, 6, dtype=torch.float64)
    hx = torch.randn(4, 4, 9, dtype=torch.float64)
    out_r, hn_r = ref(x, hx)
    out, hn = mod(x, hx)
    torch.testing.assert_close(out, out_r, atol=1e-12, rtol=0)
    torch.testing.assert_close(hn, hn_r, atol=1e-12, rtol=0)
    gout, ghn = torch.randn_like(out), torch.randn_like(hn)
    gr = torch.autograd.grad((out_r * gout).sum() + (hn_r * ghn).sum(), list(ref.parameters()))
    gm = torch.autograd.grad((out * gout).sum() + (hn * ghn).sum(), list(mod.parameters()))
    for (name, _), a, b in zip(ref.named_parameters(), gm, gr, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_nan_stays_in_its_row(isa: str, act: str) -> None:
    """A NaN in one batch row (forward input, and backward dY) leaves every other row exactly as without it."""
    T, B, H = 9, 6, 40  # 6 rows: one full 4-row tile plus a partial one
    P, h0, w, L, dY, dh = _inputs(T, B, H, torch.float32, "none", seed=21)
    bad = 4
    Pn = P.clone()
    Pn[3, bad, 7] = float("nan")
    Y, hn = cpu_backend.forward(P, h0, w, None, False, act)
    Yn, hnn = cpu_backend.forward(Pn, h0, w, None, False, act)
    keep = [b for b in range(B) if b != bad]
    assert torch.equal(Yn[:, keep], Y[:, keep]) and torch.equal(hnn[keep], hn[keep])
    assert torch.isnan(Yn[3, bad, 7])  # the NaN itself is not dropped (tanh/relu of NaN is NaN)
    if act == "tanh":
        assert torch.isnan(Yn[4:, bad]).all()  # and it spreads through the recurrence to all of its row
    dYn = dY.clone()
    dYn[5, bad, 0] = float("nan")
    dA, dh0 = cpu_backend.backward(dY, dh, Y, w, None, False, act)
    dAn, dh0n = cpu_backend.backward(dYn, dh, Y, w, None, False, act)
    assert torch.equal(dAn[:, keep], dA[:, keep]) and torch.equal(dh0n[keep], dh0[keep])
    assert torch.isnan(dAn[5, bad, 0])


def _overflow_case(dtype: torch.dtype, order_free: bool) -> tuple[Tensor, Tensor, Tensor]:
    """P [6,3,5], h0 [3,5], w_hh [5,5] for relu: step 0 gives states ~sqrt(max), and at step 1 every product h·w has
    an exact value >= 4·max, so each sum leaves the finite range whatever the summation order or FMA contraction
    (|finite acc + p| >= 3·max). ``order_free``: every weight >= 0 and w[0,1] == 0, so step 1 is +inf in every unit,
    step 2 gives inf·0 = NaN in unit 0 (+inf elsewhere) and step 3 spreads the NaN to every unit -- positions that
    IEEE arithmetic fixes for any order. Otherwise w[0,1] < 0: unit 0 then meets opposite overflows, and whether it
    ends NaN (inf − inf), +inf or −inf (relu → 0) depends on the order and on FMA (a fused multiply-add keeps an
    exact product that a separate multiply rounds to inf) -- which is what blocked AVX-512 GEMMs do differently."""
    T, B, H = 6, 3, 5
    big = torch.finfo(dtype).max ** 0.5
    g = torch.Generator().manual_seed(4)
    P = (0.5 + 0.5 * torch.rand(T, B, H, generator=g, dtype=torch.float64)) * big
    w = (0.5 + 0.5 * torch.rand(H, H, generator=g, dtype=torch.float64)) * (16 * big)
    w[0, 1] = 0.0 if order_free else -w[0, 1]
    return P.to(dtype), torch.zeros(B, H, dtype=dtype), w.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_relu_overflow_order_free_matches_reference(isa: str, dtype: torch.dtype) -> None:
    """The overflow promise, part 1 (docs/design.md, "Overflow"): where IEEE arithmetic fixes the outcome for every
    summation order and with or without FMA, every path (own loops of each ISA, per-step BLAS with whatever GEMM
    kernel MKL picks on this CPU) gives inf and NaN at exactly the reference's positions, and the same finite values.
    """
    P, h0, w = _overflow_case(dtype, order_free=True)
    Y_ref, hn_ref = reference.forward(P, h0, w, None, False, "relu")
    Y, hn = cpu_backend.forward(P, h0, w, None, False, "relu")
    # The construction, checked on the oracle: finite at step 0, +inf everywhere at step 1, NaN from step 2 on.
    assert torch.isfinite(Y_ref[0]).all() and torch.isposinf(Y_ref[1]).all()
    assert torch.isnan(Y_ref[2, :, 0]).all() and torch.isposinf(Y_ref[2, :, 1:]).all() and torch.isnan(Y_ref[3:]).all()
    torch.testing.assert_close(Y, Y_ref, equal_nan=True, atol=0, rtol=1e-5)
    torch.testing.assert_close(hn, hn_ref, equal_nan=True, atol=0, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_relu_overflow_order_dependent_is_never_hidden(isa: str, dtype: torch.dtype) -> None:
    """The overflow promise, part 2 (docs/design.md): where the outcome depends on summation order or FMA (opposite
    overflows in one sum; relu turns a −inf into 0), the steps before it are equal and, on this case, every (step,
    batch row) that is non-finite in the reference is non-finite in the kernel too. Element positions are not
    promised there: an AVX-512 MKL GEMM gives +inf where the reference gives NaN (issue #15), and nn.RNN itself runs
    such GEMMs. (An FMA build can hide such an overflow when exact products cancel -- the design's counterexample;
    this case's overflows do not cancel, so every kernel must keep the rows non-finite.)"""
    P, h0, w = _overflow_case(dtype, order_free=False)
    Y_ref, _ = reference.forward(P, h0, w, None, False, "relu")
    Y, hn = cpu_backend.forward(P, h0, w, None, False, "relu")
    bad_ref = ~torch.isfinite(Y_ref).all(dim=2)  # [T, B]
    assert bad_ref[1:].all() and not bad_ref[0].any(), "the case must overflow from step 1 on"
    bad = ~torch.isfinite(Y).all(dim=2)
    assert bad[bad_ref].all(), f"an overflow was hidden: kernel rows finite where the reference is not: {bad}"
    torch.testing.assert_close(Y[0], Y_ref[0], atol=0, rtol=1e-5)
    assert not torch.isfinite(hn).all(dim=1).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16],
                         ids=["fp32", "fp64", "fp16", "bf16"])
def test_batch_zero(dtype: torch.dtype) -> None:
    P = torch.zeros(4, 0, 3, dtype=dtype)
    h0 = torch.zeros(0, 3, dtype=dtype)
    w = torch.zeros(3, 3, dtype=dtype)
    Y, hn = cpu_backend.forward(P, h0, w, torch.zeros(0, dtype=torch.int64), True, "tanh")
    assert Y.shape == (4, 0, 3) and hn.shape == (0, 3) and Y.dtype == dtype
    dA, dh0 = cpu_backend.backward(P, h0, P, w, None, False, "relu")
    assert dA.shape == (4, 0, 3) and dh0.shape == (0, 3) and dA.dtype == dtype


def test_non_contiguous_inputs() -> None:
    """Strided views give the same results as their contiguous copies."""
    P, h0, w, L, dY, dh = _inputs(8, 5, 12, torch.float32, "mixed", seed=9)
    Pv = P.transpose(0, 1).contiguous().transpose(0, 1)  # [T,B,H] view with batch-major strides
    wv = w.t().contiguous().t()
    h0v = h0.t().contiguous().t()
    Lv = torch.stack([L, L], 1)[:, 0]  # stride 2
    assert not (Pv.is_contiguous() or wv.is_contiguous() or h0v.is_contiguous() or Lv.is_contiguous())
    Y, hn = cpu_backend.forward(P, h0, w, L, True, "tanh")
    Yv, hnv = cpu_backend.forward(Pv, h0v, wv, Lv, True, "tanh")
    assert torch.equal(Y, Yv) and torch.equal(hn, hnv)
    dA, dh0 = cpu_backend.backward(dY, dh, Y, w, L, True, "tanh")
    dAv, dh0v = cpu_backend.backward(dY.transpose(0, 1).contiguous().transpose(0, 1), dh, Y, wv, Lv, True, "tanh")
    assert torch.equal(dA, dAv) and torch.equal(dh0, dh0v)


def _good():
    P, h0, w, _, dY, dh = _inputs(5, 3, 4, torch.float32, "none")
    return P, h0, w


BAD_FWD = {
    "P-2d": lambda P, h0, w: (P[0], h0, w, None),
    "h0-wrong-B": lambda P, h0, w: (P, h0[:2], w, None),
    "h0-wrong-H": lambda P, h0, w: (P, h0[:, :3], w, None),
    "w-not-square": lambda P, h0, w: (P, h0, w[:, :3], None),
    "dtype-mix-w": lambda P, h0, w: (P, h0, w.double(), None),
    "dtype-mix-h0": lambda P, h0, w: (P, h0.half(), w, None),
    "int-dtype": lambda P, h0, w: (P.int(), h0.int(), w.int(), None),
    "T-zero": lambda P, h0, w: (P[:0], h0, w, None),
    "lengths-zero": lambda P, h0, w: (P, h0, w, torch.tensor([5, 0, 2])),
    "lengths-negative": lambda P, h0, w: (P, h0, w, torch.tensor([5, -3, 2])),
    "lengths-over-T": lambda P, h0, w: (P, h0, w, torch.tensor([5, 6, 2])),
    "lengths-huge": lambda P, h0, w: (P, h0, w, torch.tensor([5, 2**40, 2])),
    "lengths-int32": lambda P, h0, w: (P, h0, w, torch.tensor([5, 1, 2], dtype=torch.int32)),
    "lengths-wrong-size": lambda P, h0, w: (P, h0, w, torch.tensor([5, 1])),
    "lengths-2d": lambda P, h0, w: (P, h0, w, torch.tensor([[5, 1, 2]])),
}


@pytest.mark.parametrize("case", list(BAD_FWD), ids=list(BAD_FWD))
def test_bad_forward_inputs_raise(case: str) -> None:
    P, h0, w, L = BAD_FWD[case](*_good())
    with pytest.raises(RuntimeError, match="fused_rnn"):
        torch.ops.fused_rnn.elman_fwd(P, h0, w, L, False, "tanh", "", False)


BAD_BWD = {
    "dY-shape": lambda dY, dh, Y, w: (dY[:, :2], dh, Y, w, None),
    "dh-shape": lambda dY, dh, Y, w: (dY, dh[:, :2], Y, w, None),
    "w-shape": lambda dY, dh, Y, w: (dY, dh, Y, w[:3], None),
    "dtype-mix": lambda dY, dh, Y, w: (dY.double(), dh, Y, w, None),
    "int-dtype": lambda dY, dh, Y, w: (dY.long(), dh.long(), Y.long(), w.long(), None),
    "lengths-over-T": lambda dY, dh, Y, w: (dY, dh, Y, w, torch.tensor([1, 6, 2])),
    "lengths-zero": lambda dY, dh, Y, w: (dY, dh, Y, w, torch.tensor([0, 1, 2])),
}


@pytest.mark.parametrize("case", list(BAD_BWD), ids=list(BAD_BWD))
def test_bad_backward_inputs_raise(case: str) -> None:
    P, h0, w = _good()
    dY, dh, Y, w2, L = BAD_BWD[case](P, h0, P.tanh(), w)
    with pytest.raises(RuntimeError, match="fused_rnn"):
        torch.ops.fused_rnn.elman_bwd(dY, dh, Y, w2, L, False, "tanh", "", False)


@pytest.mark.parametrize("op", ["fwd", "bwd"])
def test_bad_strings_raise(op: str) -> None:
    P, h0, w = _good()
    for act, tier, what in (("sigmoid", "", "nonlinearity"), ("tanh", "persistent", "tier")):
        with pytest.raises(RuntimeError, match=what):
            if op == "fwd":
                torch.ops.fused_rnn.elman_fwd(P, h0, w, None, False, act, tier, False)
            else:
                torch.ops.fused_rnn.elman_bwd(P, h0, P, w, None, False, act, tier, False)


def test_isa_hook_rejects_unknown() -> None:
    with pytest.raises(RuntimeError, match="unknown instruction set"):
        torch.ops.fused_rnn.cpu_isa("sse9")
    with pytest.raises(RuntimeError, match="unknown path"):
        torch.ops.fused_rnn.cpu_path("gpu")
    assert torch.ops.fused_rnn.cpu_isa("") in ("generic", "avx2", "avx512", "avx512bf16", "avx512bf16fma")
    assert torch.ops.fused_rnn.cpu_path("") == "auto"


@pytest.mark.parametrize("name", ISAS)
def test_every_isa_the_cpu_lists_is_built(name: str) -> None:
    """Where /proc/cpuinfo lists AVX2+FMA (AVX-512 F/BW/VL/DQ), the avx2 (avx512) kernels exist and run: a missing
    variant fails here instead of silently leaving the tests on another one."""
    with forced(isa=name):
        P, h0, w, _, _, _ = _inputs(3, 2, 5, torch.float32, "none")
        cpu_backend.forward(P, h0, w, None, False, "tanh")
        assert last_run()["isa"] == name


def test_auto_picks_the_best_isa() -> None:
    """With nothing forced, the best variant this CPU lists runs -- capped by torch's ATEN_CPU_CAPABILITY when set
    ("avx2": at most AVX2; "default" or anything else: generic)."""
    import os

    cap = os.environ.get("ATEN_CPU_CAPABILITY", "")
    want = {"": AUTO_ISA, "avx512": AUTO_ISA, "avx2": ISAS[min(1, len(ISAS) - 1)]}.get(cap, "generic")
    assert torch.ops.fused_rnn.cpu_isa("auto") == want


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_opcheck(dtype: torch.dtype) -> None:
    """Schema, fake (meta) implementation and dispatch of the CPU kernels agree (non-grad inputs: the autograd lives
    in ElmanRecurrence, ENV.md)."""
    P, h0, w, _, dY, dh = _inputs(5, 3, 4, dtype, "none", seed=2)
    L = torch.tensor([5, 2, 3])
    torch.library.opcheck(torch.ops.fused_rnn.elman_fwd.default, (P, h0, w, L, True, "tanh", "", False))
    Y, _ = cpu_backend.forward(P, h0, w, L, True, "tanh")
    torch.library.opcheck(torch.ops.fused_rnn.elman_bwd.default, (dY, dh, Y, w, L, True, "relu", "", False))


# ---- the in-place forward (forward_into: Y written over P) ----------------------------------------------------------
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("lengths_kind", ["none", "mixed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16],
                         ids=["fp32", "fp64", "bf16", "fp16"])
@pytest.mark.parametrize("path", ["auto", "serial", "hidden", "batch", "blas"])
def test_forward_into_equals_forward(path: str, dtype: torch.dtype, lengths_kind: str, reverse: bool) -> None:
    """forward_into leaves in P exactly (bitwise) what forward returns as Y -- padded steps zeroed although P held
    projections there -- and the same h_n; on every path, including those that compute into a fresh Y and copy it
    back (per-step BLAS; fp16, which computes in fp32). The reference twin likewise."""
    T, B, H = 9, 13, 70  # 13 rows: the batch split gets rows for both workers; H = 70: a partial panel
    P, h0, w, L, _, _ = _inputs(T, B, H, dtype, lengths_kind, seed=11)
    with forced(path=path):
        Y, hn = cpu_backend.forward(P, h0, w, L, reverse, "relu" if reverse else "tanh")
        P2 = P.clone()
        hn2 = cpu_backend.forward_into(P2, h0, w, L, reverse, "relu" if reverse else "tanh")
    assert torch.equal(P2, Y) and torch.equal(hn2, hn)
    Yr, hnr = reference.forward(P, h0, w, L, reverse, "tanh")
    P3 = P.clone()
    assert torch.equal(reference.forward_into(P3, h0, w, L, reverse, "tanh"), hnr) and torch.equal(P3, Yr)


def test_forward_into_rejects_non_contiguous_p() -> None:
    P, h0, w, _, _, _ = _inputs(6, 4, 5, torch.float32, "none")
    with pytest.raises(RuntimeError, match="P must be contiguous"):
        cpu_backend.forward_into(P.transpose(0, 1).contiguous().transpose(0, 1), h0, w, None, False, "tanh")


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("lengths_kind", ["none", "mixed"])
def test_consume_p_gives_the_same_values_and_gradients(backend: str, lengths_kind: str) -> None:
    """recurrence(consume_p=True) on a P that is a view of the projection's 2-D result (as F.linear returns it): Y is
    P's memory (the in-place path ran), and Y, h_n and every gradient are bitwise those of consume_p=False."""
    T, B, n_in, H = 11, 6, 5, 33
    g = torch.Generator().manual_seed(3)
    x = torch.randn(T, B, n_in, generator=g, requires_grad=True)
    w_ih = (0.3 * torch.randn(H, n_in, generator=g)).requires_grad_()
    w_hh = (0.9 * torch.randn(H, H, generator=g) / H**0.5).requires_grad_()
    h0 = (0.5 * torch.randn(B, H, generator=g)).requires_grad_()
    L = None if lengths_kind == "none" else torch.randint(1, T + 1, (B,), generator=g)
    dY, dh = torch.randn(T, B, H, generator=g), torch.randn(B, H, generator=g)
    got = []
    for consume in (False, True):
        P = torch.nn.functional.linear(x, w_ih)
        Y, hn = fused_rnn.recurrence(P, h0, w_hh, L, False, "tanh", backend, consume_p=consume)
        if consume:
            assert Y.data_ptr() == P.data_ptr(), "the in-place forward did not run"
        grads = torch.autograd.grad((Y, hn), (x, w_ih, w_hh, h0), (dY, dh))
        got.append((Y.detach().clone(), hn.detach(), *grads))
    for a, b in zip(*got):
        assert torch.equal(a, b)


def test_consume_p_falls_back_for_non_contiguous_p() -> None:
    """A non-contiguous P is never written: the functional forward runs and P keeps its values."""
    P, h0, w, _, _, _ = _inputs(6, 4, 5, torch.float32, "none")
    Pt = P.transpose(0, 1).contiguous().transpose(0, 1)
    before = Pt.clone()
    Y, _ = fused_rnn.recurrence(Pt, h0, w, None, False, "tanh", "cpu", consume_p=True)
    assert torch.equal(Pt, before) and Y.data_ptr() != Pt.data_ptr()


def test_opcheck_inplace() -> None:
    """The in-place op's schema declares the mutation of P (Tensor(a!)), so torch.library.opcheck accepts it."""
    P, h0, w, _, _, _ = _inputs(5, 3, 4, torch.float32, "none", seed=2)
    torch.library.opcheck(torch.ops.fused_rnn.cpu_elman_fwd_inplace.default,
                          (P, h0, w, torch.tensor([5, 2, 3]), True, "tanh"),
                          test_utils=("test_schema", "test_autograd_registration"))


@pytest.mark.parametrize("H", [1031, 4099])
@pytest.mark.parametrize("isa_name", ISAS)
def test_fp32_summation_error_does_not_grow_with_h(isa_name: str, H: int) -> None:
    """The matvec's fp32 rounding error stays within 2x torch's GEMM (the reference backend) at large H: relu in its
    linear region (P = 3 keeps every output positive) leaves only the summation, judged against the exact result of
    the same fp32 inputs. One running sum over H terms was ~3x at H = 1031; the kernels sum in blocks of 64
    (elman_cpu_kernels.inc, `tile`)."""
    g = torch.Generator().manual_seed(H)
    P = torch.full((1, 8, H), 3.0)
    h0 = torch.randn(8, H, generator=g)
    w = torch.rand(H, H, generator=g) * 2 - 1
    exact, _ = reference.forward(P.double(), h0.double(), w.double(), None, False, "relu")
    with forced(isa=isa_name):
        Y, _ = cpu_backend.forward(P, h0, w, None, False, "relu")
    Yr, _ = reference.forward(P, h0, w, None, False, "relu")
    err, err_ref = (Y.double() - exact).abs().max().item(), (Yr.double() - exact).abs().max().item()
    assert err <= 2 * err_ref, f"{isa_name}: kernel error {err:.3g} vs torch's {err_ref:.3g}"


def test_forward_into_rejects_p_sharing_memory_with_its_inputs() -> None:
    """Y is written over P while h0 and w_hh are read: an h0 or w_hh inside P's memory is a clear error."""
    P, _, w, _, _, _ = _inputs(6, 4, 4, torch.float32, "none")
    with pytest.raises(RuntimeError, match="refer to a single memory location"):
        cpu_backend.forward_into(P, P[0], w, None, False, "tanh")
    with pytest.raises(RuntimeError, match="refer to a single memory location"):
        cpu_backend.forward_into(P, torch.zeros(4, 4), P[1], None, False, "tanh")
