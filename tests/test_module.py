"""fused_rnn.RNN against the installed torch.nn.RNN with a shared state_dict.

Every option combination (bias × bidirectional × batch_first × contiguity × input form × nonlinearity × layers ×
dtype): output, h_n and the gradients of input, hx and every parameter. fp64 is compared tightly with nn.RNN; fp32
against an fp64 nn.RNN oracle with the DESIGN.md rule (error ≤ 2 × nn.RNN's own fp32 error + a small floor).
Plus: unbatched input, batch 0, T=1, the ``lengths=`` keyword, construction, dropout, NaN/inf, eval-mode backward
and double backward. Sizes are tiny and awkward (T=7, B=6, I=2, H=3, lengths [7, 5, 5, 2, 1, 1]).
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import fused_rnn

T, I, H = 7, 2, 3  # noqa: E741 (the shape letters of DESIGN.md)
SORTED_LENGTHS = [7, 5, 5, 2, 1, 1]
UNSORTED_LENGTHS = [2, 7, 1, 5, 1, 5]  # same multiset, so enforce_sorted=False has real work to do
B = len(SORTED_LENGTHS)
FORMS = ("padded", "packed_sorted", "packed_unsorted", "lengths_kw")
EPS32 = torch.finfo(torch.float32).eps


def noncontig(t: Tensor) -> Tensor:
    """Same values and shape as t [*], but a strided (non-contiguous) view that still passes gradients to t."""
    v = torch.stack((t, t), dim=-1)[..., 0]
    assert not v.is_contiguous() or v.numel() <= 1
    return v


def make_pair(backend: str, dtype: torch.dtype, input_size: int = I, hidden_size: int = H,
              **cfg) -> tuple[fused_rnn.RNN, nn.RNN]:
    """(ours, theirs): nn.RNN(input_size, hidden_size, **cfg) and a fused_rnn.RNN loaded from its state_dict."""
    theirs = nn.RNN(input_size, hidden_size, dtype=dtype, **cfg)
    ours = fused_rnn.RNN(input_size, hidden_size, dtype=dtype, backend=backend, **cfg)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def run(model: nn.RNN, form: str, x: Tensor, hx: Tensor | None, lengths: list[int], batch_first: bool,
        contiguous: bool, w_out: Tensor, w_h: Tensor) -> dict[str, Tensor]:
    """Forward + backward of model on leaves x [T,B,I] / [B,T,I] and hx [L·D,B,H] | None.

    ``form``: "padded" (full length), "packed_sorted", "packed_unsorted" (PackedSequence input), or "lengths_kw"
    (fused_rnn's ``lengths=`` keyword on padded input; an nn.RNN gets the unsorted packing instead).
    Returns output (padded, [T,B,D·H] or batch-first), h_n, and the gradients of x, hx and every parameter of the
    loss Σ output·w_out + Σ h_n·w_h; for packed output also its sorted/unsorted indices.
    """
    x = x.detach().clone().requires_grad_(True)
    hx = None if hx is None else hx.detach().clone().requires_grad_(True)
    model.zero_grad(set_to_none=True)
    xin = noncontig(x) if not contiguous else x
    hin = noncontig(hx) if (hx is not None and not contiguous) else hx
    res: dict[str, Tensor] = {}
    lens = torch.tensor(lengths)
    if form == "padded":
        out, h_n = model(xin, hin)
    elif form == "lengths_kw" and isinstance(model, fused_rnn.RNN):
        out, h_n = model(xin, hin, lengths=lens)
    else:
        packed = pack_padded_sequence(xin, lens, batch_first=batch_first, enforce_sorted=(form == "packed_sorted"))
        if not contiguous:
            packed = PackedSequence(noncontig(packed.data), packed.batch_sizes, packed.sorted_indices,
                                    packed.unsorted_indices)
        out, h_n = model(packed, hin)
        assert isinstance(out, PackedSequence)
        for k in ("batch_sizes", "sorted_indices", "unsorted_indices"):
            if getattr(out, k) is not None:
                res[k] = getattr(out, k)
        out, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=T)
    loss = (out * w_out).sum() + (h_n * w_h).sum()
    loss.backward()
    res["output"], res["h_n"], res["grad_input"] = out.detach(), h_n.detach(), x.grad
    if hx is not None:
        res["grad_hx"] = hx.grad
    for name, p in model.named_parameters():
        res["grad_" + name] = p.grad
    return res


def assert_fp64_equal(ours: dict[str, Tensor], theirs: dict[str, Tensor]) -> None:
    assert ours.keys() == theirs.keys()
    for k in theirs:
        if theirs[k].dtype == torch.int64:
            assert torch.equal(ours[k], theirs[k]), k
        else:
            torch.testing.assert_close(ours[k], theirs[k], rtol=1e-10, atol=1e-12, msg=lambda m, k=k: f"{k}: {m}")


def assert_within_rule(ours: dict[str, Tensor], theirs: dict[str, Tensor], oracle: dict[str, Tensor],
                       floor_eps: float = 8 * EPS32) -> None:
    """DESIGN.md rule: |ours - oracle| ≤ 2·|theirs - oracle| + floor, floor = floor_eps·max(1, |oracle|)."""
    assert ours.keys() == oracle.keys()
    for k in oracle:
        if oracle[k].dtype == torch.int64:
            assert torch.equal(ours[k], theirs[k]), k
            continue
        assert ours[k].dtype == theirs[k].dtype, k
        ref = oracle[k]
        err = (ours[k].double() - ref).abs().max().item() if ref.numel() else 0.0
        own = (theirs[k].double() - ref).abs().max().item() if ref.numel() else 0.0
        scale = max(1.0, ref.abs().max().item() if ref.numel() else 0.0)
        bound = 2 * own + floor_eps * scale
        assert err <= bound, f"{k}: error {err:.3e} vs oracle > bound {bound:.3e} (nn.RNN's own error {own:.3e})"


def _inputs(batch_first: bool, num_layers: int, D: int, dtype: torch.dtype) -> tuple[Tensor, ...]:
    x = torch.randn(B, T, I, dtype=dtype) if batch_first else torch.randn(T, B, I, dtype=dtype)
    hx = torch.randn(num_layers * D, B, H, dtype=dtype)
    w_out = torch.randn(*x.shape[:2], D * H, dtype=dtype)
    w_h = torch.randn(num_layers * D, B, H, dtype=dtype)
    return x, hx, w_out, w_h


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("num_layers", [1, 2], ids=["L1", "L2"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("contiguous", [True, False], ids=["contig", "noncontig"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_matches_nn_rnn(cpu_backend: str, bias: bool, bidirectional: bool, batch_first: bool, contiguous: bool,
                        form: str, nonlinearity: str, num_layers: int, dtype: torch.dtype) -> None:
    cfg = dict(num_layers=num_layers, nonlinearity=nonlinearity, bias=bias, batch_first=batch_first,
               bidirectional=bidirectional)
    ours, theirs = make_pair(cpu_backend, dtype, **cfg)
    D = 2 if bidirectional else 1
    x, hx, w_out, w_h = _inputs(batch_first, num_layers, D, dtype)
    lengths = SORTED_LENGTHS if form == "packed_sorted" else UNSORTED_LENGTHS
    if form == "padded":
        lengths = [T] * B
    theirs_form = "packed_unsorted" if form == "lengths_kw" else form
    args = (x, hx, lengths, batch_first, contiguous)
    got = run(ours, form, *args, w_out, w_h)
    want = run(theirs, theirs_form, *args, w_out, w_h)
    if dtype == torch.float64:
        oracle = None
    else:
        oracle = run(copy.deepcopy(theirs).double(), theirs_form, x.double(), hx.double(), lengths, batch_first,
                     contiguous, w_out.double(), w_h.double())
    if form == "lengths_kw":  # ours returned a padded tensor: nothing to compare the packing's indices with
        for res in (want, oracle):
            for k in ("batch_sizes", "sorted_indices", "unsorted_indices"):
                if res is not None:
                    res.pop(k)
    if oracle is None:
        assert_fp64_equal(got, want)
    else:
        assert_within_rule(got, want, oracle)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["nohx", "hx"])
def test_unbatched(cpu_backend: str, with_hx: bool, batch_first: bool, bidirectional: bool) -> None:
    """2-D input [T, I] (and hx [L·D, H]) gives 2-D output [T, D·H] and h_n [L·D, H], as nn.RNN."""
    ours, theirs = make_pair(cpu_backend, torch.float64, num_layers=2, batch_first=batch_first,
                             bidirectional=bidirectional)
    D = 2 if bidirectional else 1
    x0 = torch.randn(5, I, dtype=torch.float64)
    hx0 = torch.randn(2 * D, H, dtype=torch.float64) if with_hx else None
    results = []
    for m in (ours, theirs):
        x = x0.clone().requires_grad_(True)
        hx = None if hx0 is None else hx0.clone().requires_grad_(True)
        out, h_n = m(x, hx)
        assert out.shape == (5, D * H) and h_n.shape == (2 * D, H)
        (out.square().sum() + h_n.sum()).backward()
        grads = [x.grad] + ([hx.grad] if hx is not None else []) + [p.grad for p in m.parameters()]
        results.append([out, h_n, *grads])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["nohx", "hx"])
def test_batch_zero(cpu_backend: str, with_hx: bool, batch_first: bool) -> None:
    """B = 0 gives empty outputs of the right shapes and zero parameter gradients, as nn.RNN."""
    ours, theirs = make_pair(cpu_backend, torch.float64, num_layers=2, bidirectional=True, batch_first=batch_first)
    x0 = torch.randn(0, 4, I, dtype=torch.float64) if batch_first else torch.randn(4, 0, I, dtype=torch.float64)
    hx0 = torch.randn(4, 0, H, dtype=torch.float64) if with_hx else None
    results = []
    for m in (ours, theirs):
        x = x0.clone().requires_grad_(True)
        out, h_n = m(x, hx0)
        (out.sum() + h_n.sum()).backward()
        results.append([out, h_n, x.grad] + [p.grad if p.grad is not None else torch.zeros_like(p)
                                             for p in m.parameters()])
    for a, b in zip(*results):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_single_step(cpu_backend: str, bidirectional: bool) -> None:
    """T = 1 (both directions see one step)."""
    ours, theirs = make_pair(cpu_backend, torch.float64, num_layers=2, bidirectional=bidirectional)
    D = 2 if bidirectional else 1
    x = torch.randn(1, 5, I, dtype=torch.float64)
    hx = torch.randn(2 * D, 5, H, dtype=torch.float64)
    w_out, w_h = torch.randn(1, 5, D * H, dtype=torch.float64), torch.randn(2 * D, 5, H, dtype=torch.float64)
    got = run(ours, "padded", x, hx, [1] * 5, False, True, w_out, w_h)
    want = run(theirs, "padded", x, hx, [1] * 5, False, True, w_out, w_h)
    assert_fp64_equal(got, want)


@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
def test_lengths_keyword_equals_packing(cpu_backend: str, batch_first: bool) -> None:
    """``lengths=`` on padded input gives what packing gives (output zero at padded steps), gradients included."""
    ours = fused_rnn.RNN(I, H, num_layers=2, bidirectional=True, batch_first=batch_first, backend=cpu_backend,
                         dtype=torch.float64)
    x, hx, w_out, w_h = _inputs(batch_first, 2, 2, torch.float64)
    by_kw = run(ours, "lengths_kw", x, hx, UNSORTED_LENGTHS, batch_first, True, w_out, w_h)
    by_pack = run(ours, "packed_unsorted", x, hx, UNSORTED_LENGTHS, batch_first, True, w_out, w_h)
    for k in ("batch_sizes", "sorted_indices", "unsorted_indices"):
        by_pack.pop(k)
    assert_fp64_equal(by_kw, by_pack)
    out = by_kw["output"] if batch_first else by_kw["output"].transpose(0, 1)
    for b, n in enumerate(UNSORTED_LENGTHS):
        assert torch.all(out[b, n:] == 0), "padded steps must be exactly 0"


@pytest.mark.parametrize("cfg", [dict(), dict(num_layers=3, bidirectional=True, bias=False),
                                 dict(num_layers=2, nonlinearity="relu", batch_first=True)],
                         ids=["default", "L3-bi-nobias", "L2-relu-bfirst"])
def test_same_seed_same_parameters(cfg: dict) -> None:
    """Same seed -> bit-identical parameters with the same names, shapes and registration order as nn.RNN."""
    torch.manual_seed(1234)
    theirs = nn.RNN(5, 7, **cfg)
    torch.manual_seed(1234)
    ours = fused_rnn.RNN(5, 7, **cfg)
    torch.manual_seed(1234)
    again = fused_rnn.RNN(5, 7, **cfg)
    want = list(theirs.named_parameters())
    for model in (ours, again):
        got = list(model.named_parameters())
        assert [n for n, _ in got] == [n for n, _ in want]
        for (n, p), (_, q) in zip(got, want):
            assert p.shape == q.shape and p.dtype == q.dtype, n
            assert torch.equal(p, q), n
    assert list(ours.state_dict().keys()) == list(theirs.state_dict().keys())


# ---------------------------------------------------------------------------------------------------------------
# dropout


def test_dropout_zero_equals_no_dropout(cpu_backend: str) -> None:
    ours, theirs = make_pair(cpu_backend, torch.float64, num_layers=3, dropout=0.0)
    ours.train()
    theirs.train()
    x, hx, w_out, w_h = _inputs(False, 3, 1, torch.float64)
    assert_fp64_equal(run(ours, "padded", x, hx, [T] * B, False, True, w_out, w_h),
                      run(theirs, "padded", x, hx, [T] * B, False, True, w_out, w_h))


def test_eval_ignores_dropout(cpu_backend: str) -> None:
    ours, theirs = make_pair(cpu_backend, torch.float64, num_layers=3, dropout=0.7, bidirectional=True)
    ours.eval()
    theirs.eval()
    x, hx, w_out, w_h = _inputs(False, 3, 2, torch.float64)
    assert_fp64_equal(run(ours, "packed_unsorted", x, hx, UNSORTED_LENGTHS, False, True, w_out, w_h),
                      run(theirs, "packed_unsorted", x, hx, UNSORTED_LENGTHS, False, True, w_out, w_h))


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_dropout_one_zeroes_next_layer_input(cpu_backend: str, bidirectional: bool) -> None:
    """p = 1 in training: layer 2 sees zeros, so its output equals a one-layer nn.RNN (layer-2 weights) on zeros;
    layer 1's h_n is untouched (dropout acts between layers only)."""
    D = 2 if bidirectional else 1
    ours = fused_rnn.RNN(I, H, num_layers=2, dropout=1.0, bidirectional=bidirectional, backend=cpu_backend,
                         dtype=torch.float64).train()
    layer1 = nn.RNN(I, H, bidirectional=bidirectional, dtype=torch.float64)
    layer2 = nn.RNN(D * H, H, bidirectional=bidirectional, dtype=torch.float64)
    sd = ours.state_dict()
    layer1.load_state_dict({k: v for k, v in sd.items() if "_l0" in k})
    layer2.load_state_dict({k.replace("_l1", "_l0"): v for k, v in sd.items() if "_l1" in k})
    x = torch.randn(T, B, I, dtype=torch.float64)
    hx = torch.randn(2 * D, B, H, dtype=torch.float64)
    out, h_n = ours(x, hx)
    _, h1 = layer1(x, hx[:D])
    out2, h2 = layer2(torch.zeros(T, B, D * H, dtype=torch.float64), hx[D:])
    torch.testing.assert_close(out, out2, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(h_n, torch.cat([h1, h2]), rtol=1e-10, atol=1e-12)


def test_dropout_between_layers_is_random_in_training(cpu_backend: str) -> None:
    """0 < p < 1 in training changes layer 2's output (a no-op dropout would leave it equal to eval's)."""
    ours = fused_rnn.RNN(I, H, num_layers=2, dropout=0.5, backend=cpu_backend, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64)
    out_eval, _ = ours.eval()(x)
    out_train, h_train = ours.train()(x)
    assert not torch.allclose(out_train, out_eval)
    _, h_eval = ours.eval()(x)
    torch.testing.assert_close(h_train[0], h_eval[0], rtol=1e-10, atol=1e-12)  # layer 1 sees no dropout


def test_one_layer_dropout_warning_matches_nn_rnn() -> None:
    with warnings.catch_warnings(record=True) as theirs:
        warnings.simplefilter("always")
        nn.RNN(I, H, num_layers=1, dropout=0.3)
    with warnings.catch_warnings(record=True) as ours:
        warnings.simplefilter("always")
        fused_rnn.RNN(I, H, num_layers=1, dropout=0.3)
    assert len(theirs) == 1, "the installed nn.RNN no longer warns; update this test"
    assert [(w.category, str(w.message)) for w in ours] == [(w.category, str(w.message)) for w in theirs]


# ---------------------------------------------------------------------------------------------------------------
# non-finite values


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_nan_stays_in_its_row(cpu_backend: str, nonlinearity: str, bidirectional: bool) -> None:
    """A NaN in one batch row poisons that row only (forward and input/hx gradients), exactly as nn.RNN."""
    ours, theirs = make_pair(cpu_backend, torch.float64, num_layers=2, nonlinearity=nonlinearity,
                             bidirectional=bidirectional)
    D = 2 if bidirectional else 1
    x0 = torch.randn(T, B, I, dtype=torch.float64)
    x0[3, 2, 1] = float("nan")
    hx0 = torch.randn(2 * D, B, H, dtype=torch.float64)
    res = []
    for m in (ours, theirs):
        x, hx = x0.clone().requires_grad_(True), hx0.clone().requires_grad_(True)
        out, h_n = m(x, hx)
        (out.sum() + h_n.sum()).backward()
        res.append((out, h_n, x.grad, hx.grad))
    for a, b in zip(*res):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, equal_nan=True)
    out, h_n, gx, ghx = res[0]
    others = [b for b in range(B) if b != 2]
    for t_ in (out[:, others], h_n[:, others], gx[:, others], ghx[:, others]):
        assert torch.isfinite(t_).all()
    assert torch.isnan(out[:, 2]).any()


def test_relu_overflow_to_inf_matches_nn_rnn(cpu_backend: str) -> None:
    """relu with huge positive weights overflows fp32 to +inf after a few steps: the same infs (and, in the
    gradients, the same infs and NaNs) as nn.RNN; finite values agree."""
    ours, theirs = make_pair(cpu_backend, torch.float32, nonlinearity="relu")
    with torch.no_grad():
        for m in (ours, theirs):
            m.weight_ih_l0.fill_(1.0)
            m.weight_hh_l0.fill_(1e12)
            m.bias_ih_l0.fill_(0.5)
            m.bias_hh_l0.fill_(0.25)
    x0 = torch.rand(T, B, I) + 1.0
    res = []
    for m in (ours, theirs):
        x = x0.clone().requires_grad_(True)
        out, h_n = m(x)
        (out.sum() + h_n.sum()).backward()
        res.append([out.detach(), h_n.detach(), x.grad] + [p.grad for p in m.parameters()])
    ref_out = res[1][0]
    assert torch.isinf(ref_out).any() and torch.isfinite(ref_out[0]).all(), "test setup: no overflow happened"
    for got, want in zip(*res):
        assert torch.equal(torch.isinf(got), torch.isinf(want)) and torch.equal(torch.isnan(got), torch.isnan(want))
        fin = torch.isfinite(want)
        torch.testing.assert_close(got[fin], want[fin], rtol=1e-5, atol=0)


# ---------------------------------------------------------------------------------------------------------------
# autograd modes


def test_backward_in_eval_mode(cpu_backend: str) -> None:
    """Unlike cuDNN's RNN, backward works in eval mode (and equals nn.RNN's CPU result)."""
    ours, theirs = make_pair(cpu_backend, torch.float64, num_layers=2, dropout=0.5)
    ours.eval()
    theirs.eval()
    x, hx, w_out, w_h = _inputs(False, 2, 1, torch.float64)
    assert_fp64_equal(run(ours, "padded", x, hx, [T] * B, False, True, w_out, w_h),
                      run(theirs, "padded", x, hx, [T] * B, False, True, w_out, w_h))


@pytest.mark.parametrize("loss_kind", ["linear", "square"])
def test_double_backward_raises(cpu_backend: str, loss_kind: str) -> None:
    """A second derivative through the recurrence is not implemented: differentiating the gradients again must
    raise a clear RuntimeError -- also when the first loss is linear in the output (then the incoming gradients do
    not require grad, and a once_differentiable Function would silently return gradients without a graph)."""
    ours = fused_rnn.RNN(I, H, backend=cpu_backend, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    out, h_n = ours(x)
    loss = out.sum() + h_n.sum() if loss_kind == "linear" else out.square().sum()
    grads = torch.autograd.grad(loss, [x, *ours.parameters()], create_graph=True)
    penalty = sum(g.square().sum() for g in grads)
    with pytest.raises(RuntimeError, match="double backward"):
        penalty.backward()


def test_create_graph_first_order_gradients_are_correct(cpu_backend: str) -> None:
    """create_graph=True must not change the first-order gradients."""
    ours = fused_rnn.RNN(I, H, backend=cpu_backend, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    out, _ = ours(x)
    g1 = torch.autograd.grad(out.square().sum(), [x, *ours.parameters()], create_graph=True)
    out, _ = ours(x)
    g0 = torch.autograd.grad(out.square().sum(), [x, *ours.parameters()])
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a.detach(), b, rtol=0, atol=0)


def test_all_combinations_are_parametrized() -> None:
    """Guard against a parametrize line being dropped: the cross product above has 2^7 × 4 cases per backend."""
    marks = [m for m in test_matches_nn_rnn.pytestmark if m.name == "parametrize"]
    assert math.prod(len(m.args[1]) for m in marks) == 2 ** 7 * len(FORMS) == 512


def test_frozen_parameters_input_gradient(cpu_backend: str) -> None:
    """Parameters with requires_grad=False (dW_hh is skipped): the input and hx gradients still equal nn.RNN's."""
    ours, theirs = make_pair(cpu_backend, torch.float64, num_layers=2, bidirectional=True)
    for m in (ours, theirs):
        m.requires_grad_(False)
    x, hx, w_out, w_h = _inputs(False, 2, 2, torch.float64)
    got = run(ours, "packed_unsorted", x, hx, UNSORTED_LENGTHS, False, True, w_out, w_h)
    want = run(theirs, "packed_unsorted", x, hx, UNSORTED_LENGTHS, False, True, w_out, w_h)
    assert all(v is None for k, v in got.items() if k.startswith("grad_weight") or k.startswith("grad_bias"))
    assert_fp64_equal({k: v for k, v in got.items() if v is not None},
                      {k: v for k, v in want.items() if v is not None})


# ---------------------------------------------------------------------------------------------------------------
# on a GPU (skipped without CUDA by conftest): the module on CUDA tensors vs nn.RNN on the CPU


def _cuda_backends() -> list[str]:
    """Backends that take CUDA tensors and are usable here ("reference" always is, so the test always exists)."""
    from fused_rnn.backends.select import backend_module

    names = fused_rnn.available_backends()
    return [n for n in names if n == "reference" or backend_module(n).supports_device(torch.device("cuda"))]


@pytest.mark.gpu
@pytest.mark.gpu_quick
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("form", ["padded", "packed_unsorted", "lengths_kw"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("backend", _cuda_backends())
def test_matches_nn_rnn_on_cuda(backend: str, nonlinearity: str, form: str, dtype: torch.dtype) -> None:
    cfg = dict(num_layers=2, nonlinearity=nonlinearity, batch_first=True, bidirectional=True)
    ours, theirs = make_pair(backend, dtype, **cfg)
    ours.cuda()
    x, hx, w_out, w_h = _inputs(True, 2, 2, dtype)
    lengths = [T] * B if form == "padded" else UNSORTED_LENGTHS
    theirs_form = "packed_unsorted" if form == "lengths_kw" else form
    got = run(ours, form, x.cuda(), hx.cuda(), lengths, True, False, w_out.cuda(), w_h.cuda())
    got = {k: v.cpu() for k, v in got.items()}
    want = run(theirs, theirs_form, x, hx, lengths, True, False, w_out, w_h)
    oracle = run(copy.deepcopy(theirs).double(), theirs_form, x.double(), hx.double(), lengths, True, False,
                 w_out.double(), w_h.double())
    if form == "lengths_kw":
        for res in (want, oracle):
            for k in ("batch_sizes", "sorted_indices", "unsorted_indices"):
                res.pop(k)
    if dtype == torch.float64:
        assert_fp64_equal(got, want)
    else:
        assert_within_rule(got, want, oracle)


@pytest.mark.parametrize("backend", ["reference", "auto"] + (["cpu"] if "cpu" in fused_rnn.available_backends()
                                                            else []))
@pytest.mark.parametrize("batch_first,bidirectional,batched", [
    (True, False, True), (True, True, True), (False, True, True), (True, False, False), (False, False, True)],
    ids=["bf", "bf-bi", "tm-bi", "bf-unbatched", "tm"])
def test_output_layout_matches_nn_rnn(backend: str, batch_first: bool, bidirectional: bool, batched: bool) -> None:
    """The output's shape and strides are nn.RNN's: with batch_first a transposed view of the time-major result (no
    copy), as nn.RNN returns; h_n contiguous."""
    torch.manual_seed(0)
    theirs = nn.RNN(4, 6, num_layers=2, bidirectional=bidirectional, batch_first=batch_first)
    ours = fused_rnn.RNN(4, 6, num_layers=2, bidirectional=bidirectional, batch_first=batch_first, backend=backend)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(3, 20, 4) if batched else torch.randn(20, 4)
    (o1, h1), (o2, h2) = theirs(x), ours(x)
    assert (o2.shape, o2.stride(), h2.shape, h2.stride()) == (o1.shape, o1.stride(), h1.shape, h1.stride())
    torch.testing.assert_close(o2, o1, rtol=1e-5, atol=1e-6)
