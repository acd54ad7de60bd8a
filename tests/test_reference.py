"""The reference backend and the autograd layer against independent oracles.

- the module with backend="reference" vs torch.nn.RNN in fp64 (anchors nn.RNN -> reference -> every backend);
- each CPU backend's forward/backward vs autograd through a plain per-element loop (no masks, no shared code);
- gradcheck in fp64 through fused_rnn.recurrence.ElmanRecurrence (forward and reverse, lengths, non-zero h0);
- the reference's low-precision contract (fp32 math, h_t rounded to the storage dtype every step), and every other
  CPU backend within 2 × the reference's own error in fp32/fp16/bf16 (DESIGN.md tolerance rule).
Shapes: T time, B batch, H hidden.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fused_rnn
from fused_rnn.backends import reference
from fused_rnn.backends.select import backend_module
from fused_rnn.recurrence import ElmanRecurrence

LENGTHS = {"full": None, "varlen": [5, 1, 3, 5, 2]}  # T = 5, B = 5; unsorted, with a length-1 element


def naive_elman(P: Tensor, h0: Tensor, w_hh: Tensor, lengths: list[int] | None, reverse: bool, nonlinearity: str,
                storage: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    """Differentiable oracle, one element and one step at a time: P [T,B,H], h0 [B,H], w_hh [H,H] -> (Y, h_n).

    Y is 0 at padded steps. With ``storage`` set, h_t is rounded to that dtype after every step (the fused
    kernels' low-precision contract) while the math runs in P's dtype.
    """
    T, B, H = P.shape
    f = torch.tanh if nonlinearity == "tanh" else torch.relu
    cols, last = [], []
    for b in range(B):
        n = T if lengths is None else lengths[b]
        h = h0[b]
        ys = [P.new_zeros(H) for _ in range(T)]
        for t in (range(n - 1, -1, -1) if reverse else range(n)):
            h = f(P[t, b] + torch.mv(w_hh, h))
            if storage is not None:
                h = h.to(storage).to(P.dtype)
            ys[t] = h
        cols.append(torch.stack(ys))
        last.append(h)
    return torch.stack(cols, dim=1), torch.stack(last)


def _case(B: int, T: int, H: int, dtype: torch.dtype = torch.float64, scale: float = 0.5) -> tuple[Tensor, ...]:
    P = torch.randn(T, B, H, dtype=dtype)
    h0 = torch.randn(B, H, dtype=dtype)  # non-zero on purpose: reverse + lengths depends on it (DESIGN.md)
    w_hh = torch.randn(H, H, dtype=dtype) * (scale / H ** 0.5)
    return P, h0, w_hh


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("lengths", list(LENGTHS.values()), ids=list(LENGTHS))
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_backend_matches_naive_loop(cpu_backend: str, reverse: bool, lengths: list[int] | None,
                                    nonlinearity: str) -> None:
    """Contract forward (Y, h_n) and backward (dA, dh0), and dW_hh through the Function, vs autograd of a loop."""
    P, h0, w_hh = _case(B=5, T=5, H=7)
    P.requires_grad_(True)
    h0.requires_grad_(True)
    w_hh.requires_grad_(True)
    Y_ref, hn_ref = naive_elman(P, h0, w_hh, lengths, reverse, nonlinearity)
    dY, dh_n = torch.randn_like(Y_ref), torch.randn_like(hn_ref)
    dP_ref, dh0_ref, dW_ref = torch.autograd.grad((Y_ref, hn_ref), (P, h0, w_hh), (dY, dh_n))

    mod = backend_module(cpu_backend)
    L = None if lengths is None else torch.tensor(lengths)
    with torch.no_grad():
        Y, h_n = mod.forward(P, h0, w_hh, L, reverse, nonlinearity, "", False)
        dA, dh0 = mod.backward(dY, dh_n, Y, w_hh, L, reverse, nonlinearity, "", False)
    tight = dict(rtol=1e-11, atol=1e-13)
    torch.testing.assert_close(Y, Y_ref.detach(), **tight)
    torch.testing.assert_close(h_n, hn_ref.detach(), **tight)
    torch.testing.assert_close(dA, dP_ref, **tight)
    torch.testing.assert_close(dh0, dh0_ref, **tight)
    if lengths is not None:
        for b, n in enumerate(lengths):
            assert torch.all(Y[n:, b] == 0) and torch.all(dA[n:, b] == 0), "padded steps must be exactly 0"

    Y2, hn2 = ElmanRecurrence.apply(P, h0, w_hh, L, reverse, nonlinearity, cpu_backend, "", False)
    grads = torch.autograd.grad((Y2, hn2), (P, h0, w_hh), (dY, dh_n))
    for got, want in zip(grads, (dP_ref, dh0_ref, dW_ref)):
        torch.testing.assert_close(got, want, **tight)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("lengths", list(LENGTHS.values()), ids=list(LENGTHS))
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_gradcheck_recurrence(cpu_backend: str, reverse: bool, lengths: list[int] | None, nonlinearity: str) -> None:
    P, h0, w_hh = _case(B=5, T=5, H=2, scale=0.9)
    if nonlinearity == "relu":
        P = P + 0.3  # keep pre-activations away from relu's kink, where finite differences are meaningless
    inputs = tuple(t.requires_grad_(True) for t in (P, h0, w_hh))
    L = None if lengths is None else torch.tensor(lengths)
    fn = lambda p, h, w: ElmanRecurrence.apply(p, h, w, L, reverse, nonlinearity, cpu_backend, "", False)
    # fast_mode checks random projections of the Jacobian (cheap for a Python loop); a wrong dA, dh0 or dW_hh
    # shows up in any random projection with probability 1.
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-8, rtol=1e-6, fast_mode=True)


def test_recurrence_batch_zero(cpu_backend: str) -> None:
    """B = 0 never reaches a backend; empty results and zero gradients come back."""
    P, h0, w_hh = (t.requires_grad_(True) for t in _case(B=0, T=3, H=4))
    Y, h_n = ElmanRecurrence.apply(P, h0, w_hh, None, True, "tanh", cpu_backend, "", False)
    assert Y.shape == (3, 0, 4) and h_n.shape == (0, 4)
    gP, gh, gw = torch.autograd.grad((Y.sum() + h_n.sum(),), (P, h0, w_hh), allow_unused=True)
    assert gP.shape == P.shape and gh.shape == h0.shape
    assert gw is None or torch.equal(gw, torch.zeros_like(w_hh))


@pytest.mark.parametrize("form", ["padded", "packed"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_reference_module_matches_nn_rnn_fp64(form: str, nonlinearity: str) -> None:
    """The anchor: backend="reference" through the module vs nn.RNN in fp64, awkward sizes, 2 layers, both ways."""
    T, B, I, H = 13, 5, 3, 17  # noqa: E741 (the shape letters of DESIGN.md)
    theirs = nn.RNN(I, H, num_layers=2, bidirectional=True, nonlinearity=nonlinearity, dtype=torch.float64)
    ours = fused_rnn.RNN(I, H, num_layers=2, bidirectional=True, nonlinearity=nonlinearity, backend="reference",
                         dtype=torch.float64)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64)
    hx = torch.randn(4, B, H, dtype=torch.float64)
    lengths = torch.tensor([13, 4, 1, 9, 13])
    results = []
    for m in (ours, theirs):
        inp = x if form == "padded" else pack_padded_sequence(x, lengths, enforce_sorted=False)
        out, h_n = m(inp, hx)
        if form == "packed":
            out = pad_packed_sequence(out, total_length=T)[0]
        results.append((out, h_n))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_reference_low_precision_contract(dtype: torch.dtype, reverse: bool) -> None:
    """Reference in a low dtype: every step is fp32 math on the *stored* (rounded) previous state, and h_t is
    stored rounded to the dtype -- the kernels' contract. Checked one step at a time (teacher forcing with the
    reference's own stored states), so one rounding flip cannot cascade."""
    T = 30
    P, h0, w_hh = (t.to(dtype) for t in _case(B=5, T=T, H=19, dtype=torch.float32, scale=0.9))
    lengths = [T, 3, 1, T, 17]
    Y, h_n = reference.forward(P, h0, w_hh, torch.tensor(lengths), reverse, "tanh")
    assert Y.dtype == dtype and h_n.dtype == dtype
    want = torch.zeros_like(Y)
    fp32_state_would_give = torch.zeros_like(Y)
    for b, n in enumerate(lengths):
        s, s32 = h0[b], h0[b].float()
        for t in (range(n - 1, -1, -1) if reverse else range(n)):
            want[t, b] = torch.tanh(P[t, b].float() + w_hh.float() @ s.float()).to(dtype)
            fp32_state_would_give[t, b] = torch.tanh(P[t, b].float() + w_hh.float() @ s32).to(dtype)
            s, s32 = Y[t, b], torch.tanh(P[t, b].float() + w_hh.float() @ s32)
        assert torch.equal(h_n[b], s), "h_n must be the stored state of the last step in order"
    # Bit-equal except where fp32 summation order flips a rounding, then by one ulp. Measured on this CPU,
    # 2026-11-27: well under 1 % of elements differ, while carrying an unrounded fp32 state differs in ~10 %.
    ulp = torch.finfo(dtype).eps
    assert ((Y.float() - want.float()).abs() / want.float().abs().clamp_min(1)).max().item() <= ulp
    mismatch = (Y != want).float().mean().item()
    assert mismatch <= 0.01, f"{mismatch:.2%} of elements differ from the per-step-rounded computation"
    assert (fp32_state_would_give != want).float().mean().item() > 0.03, "test setup: rounding made no difference"


# The fast backends that take CPU tensors (the "cpu" C++ backend once built); the same filter as conftest's fixture.
FAST_CPU_BACKENDS = [b for b in fused_rnn.available_backends()
                     if b != "reference" and backend_module(b).supports_device(torch.device("cpu"))]


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("backend", FAST_CPU_BACKENDS)
def test_fast_backend_within_reference_error(backend: str, dtype: torch.dtype, reverse: bool) -> None:
    """DESIGN.md rule: error vs the fp64 oracle ≤ 2 × the reference's own error in that dtype + a small floor,
    forward (Y) and backward (dA, dh0)."""
    P64, h064, w64 = _case(B=5, T=17, H=33, scale=0.9)
    dY64, dh64 = torch.randn_like(P64), torch.randn_like(h064)
    L = torch.tensor([17, 2, 1, 17, 9])
    args = (L, reverse, "tanh", "", False)
    oracle_Y, _ = reference.forward(P64, h064, w64, *args)
    oracle_dA, oracle_dh0 = reference.backward(dY64, dh64, oracle_Y, w64, *args)
    low = [t.to(dtype) for t in (P64, h064, w64, dY64, dh64)]
    got, ref = {}, {}
    for name, out in ((backend, got), ("reference", ref)):
        mod = backend_module(name)
        Y, _ = mod.forward(low[0], low[1], low[2], *args)
        dA, dh0 = mod.backward(low[3], low[4], Y, low[2], *args)
        out.update(Y=Y, dA=dA, dh0=dh0)
    floor = 4 * torch.finfo(dtype).eps
    for k, oracle in (("Y", oracle_Y), ("dA", oracle_dA), ("dh0", oracle_dh0)):
        err = (got[k].double() - oracle).abs().max().item()
        own = (ref[k].double() - oracle).abs().max().item()
        scale = max(1.0, oracle.abs().max().item())
        assert err <= 2 * own + floor * scale, f"{k}: {backend} error {err:.3e}, reference's {own:.3e}"


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("lens", ["full", "varlen", "len1"])
@pytest.mark.parametrize("TBH", [(1, 3, 4), (7, 5, 6), (2, 1, 3), (13, 17, 9)], ids=lambda s: "T{}B{}H{}".format(*s))
def test_grad_w_hh_matches_predecessor_state_sum(TBH: tuple[int, int, int], lens: str, reverse: bool) -> None:
    """grad_w_hh (two GEMMs on views) == Σ_t dA_tᵀ S_t with S built explicitly (predecessor_states), in fp64, for
    inputs that honour the contract (Y and dA exactly 0 at padded steps) and a non-zero h0."""
    from fused_rnn.recurrence import grad_w_hh, predecessor_states

    T, B, H = TBH
    g = torch.Generator().manual_seed(T * 1000 + B * 10 + H)
    L = None
    if lens == "varlen":
        L = torch.randint(1, T + 1, (B,), generator=g)
    elif lens == "len1":
        L = torch.ones(B, dtype=torch.int64)
    Y = torch.randn(T, B, H, generator=g, dtype=torch.float64)
    dA = torch.randn(T, B, H, generator=g, dtype=torch.float64)
    h0 = torch.randn(B, H, generator=g, dtype=torch.float64)
    if L is not None:
        valid = (torch.arange(T).view(T, 1) < L.view(1, B)).to(torch.float64).unsqueeze(-1)
        Y, dA = Y * valid, dA * valid
    S = predecessor_states(Y, h0, L, reverse)
    want = dA.reshape(T * B, H).t().mm(S.reshape(T * B, H))
    torch.testing.assert_close(grad_w_hh(dA, Y, h0, L, reverse), want, rtol=1e-12, atol=1e-12)
