"""Parity with torch.nn.RNN for options the main grid (tests/test_module.py) does not reach (issue #26, items 5, 7).

* Dropout between layers in training: under the same seed fused_rnn.RNN draws the same masks as nn.RNN, so outputs,
  h_n and every gradient equal nn.RNN's (fp64, L=3, uni- and bidirectional, both CPU backends), and the generator
  ends in the same state. Packed input is the one form where equality with nn.RNN is impossible (below), so there
  the strongest true statement is tested instead.
* fp16 / bf16 modules used directly (no autocast), against nn.RNN in that dtype.
* ``hx=None`` with packed input; 3 and 4 layers with gradients.
* relu gradients under CPU autocast, compared (not only checked finite).

Every test names a fused backend (``backend="cpu"`` / ``"reference"``): ``auto`` may route a shape to nn.RNN's own
kernel, and a test comparing nn.RNN with itself proves nothing. Shapes: T time, B batch, I input, H hidden, L layers,
D directions.
"""

from __future__ import annotations

import copy

import pytest
import torch
from test_module import SORTED_LENGTHS, UNSORTED_LENGTHS, assert_fp64_equal, assert_within_rule, make_pair, run
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fused_rnn

T, I, H = 7, 4, 5  # noqa: E741 (DESIGN.md's shape letters)
B = len(UNSORTED_LENGTHS)


def _data(L: int, D: int, dtype: torch.dtype, batch_first: bool = False, seed: int = 0) -> tuple[Tensor, ...]:
    """x [T, B, I] ([B, T, I] batch-first), hx [L·D, B, H], loss weights w_out (like the output) and w_h (like h_n)."""
    g = torch.Generator().manual_seed(seed)
    shape = (B, T, I) if batch_first else (T, B, I)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    hx = (0.5 * torch.randn(L * D, B, H, generator=g, dtype=torch.float64)).to(dtype)
    w_out = torch.randn(*shape[:2], D * H, generator=g, dtype=torch.float64).to(dtype)
    w_h = torch.randn(L * D, B, H, generator=g, dtype=torch.float64).to(dtype)
    return x, hx, w_out, w_h


# ---------------------------------------------------------------------------------------------------------------
# dropout (item 5)
# ---------------------------------------------------------------------------------------------------------------

P_DROP = 0.4
DROPOUT_CASES = {  # id -> config; L = 3 throughout (two dropout layers)
    "uni-tanh": dict(bidirectional=False),
    "bi-tanh": dict(bidirectional=True),
    "bi-relu-bfirst": dict(bidirectional=True, nonlinearity="relu", batch_first=True),
    "uni-nobias-bfirst": dict(bidirectional=False, bias=False, batch_first=True),
}


@pytest.mark.parametrize("cfg", list(DROPOUT_CASES.values()), ids=list(DROPOUT_CASES))
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_dropout_matches_nn_rnn_under_the_same_seed(backend: str, cfg: dict) -> None:
    """Training mode, p = 0.4, 3 layers: with the generator seeded alike before each forward, output, h_n and the
    gradients of input, hx and every parameter equal nn.RNN's, and both leave the generator in the same state.

    Why equality is possible: on CPU nn.RNN (ATen's layer stack) applies ``at::dropout`` to each layer's output but
    the last, a contiguous time-major [T, B, D·H] tensor (batch_first is transposed away first): a mask from
    ``bernoulli_(1 - p)`` on a tensor of that shape, divided by (1 - p). fused_rnn applies F.dropout -- the same op
    -- to the same tensor, and nothing else draws random numbers in between."""
    _need(backend)
    L, D = 3, 2 if cfg["bidirectional"] else 1
    bf = cfg.get("batch_first", False)
    ours, theirs = make_pair(backend, torch.float64, input_size=I, hidden_size=H, num_layers=L, dropout=P_DROP,
                             **cfg)
    x, hx, w_out, w_h = _data(L, D, torch.float64, bf)
    results, states = [], []
    for model in (ours.train(), theirs.train()):
        torch.manual_seed(2026)
        results.append(run(model, "padded", x, hx, [T] * B, bf, True, w_out, w_h))
        states.append(torch.get_rng_state())
    assert_fp64_equal(*results)
    assert torch.equal(states[0], states[1]), "a different number of random draws than nn.RNN"
    # not vacuous: the masks changed the result (eval mode, without dropout, differs)
    no_drop = run(theirs.eval(), "padded", x, hx, [T] * B, bf, True, w_out, w_h)
    assert (results[1]["output"] - no_drop["output"]).abs().max() > 1e-3


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_step_dropout_matches_nn_rnn_under_the_same_seed(backend: str) -> None:
    """RNN.step in training mode (3 layers): the same masks as nn.RNN on a length-1 sequence ([1, B, H] and [B, H]
    draw alike), so y_t, h_next and every gradient equal nn.RNN's."""
    _need(backend)
    ours, theirs = make_pair(backend, torch.float64, input_size=I, hidden_size=H, num_layers=3, dropout=P_DROP)
    x0 = torch.randn(B, I, dtype=torch.float64)
    h0 = torch.randn(3, B, H, dtype=torch.float64)
    res = []
    for model in (ours.train(), theirs.train()):
        x, h = x0.clone().requires_grad_(), h0.clone().requires_grad_()
        torch.manual_seed(7)
        if model is ours:
            y, h_next = ours.step(x, h)
        else:
            out, h_next = theirs(x.unsqueeze(0), h)
            y = out[0]
        (y.square().sum() + (h_next * 0.3).sum()).backward()
        res.append([y, h_next, x.grad, h.grad] + [p.grad for p in model.parameters()])
    for a, b in zip(*res, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def _layerwise_with_padded_masks(model: fused_rnn.RNN, x: Tensor, hx: Tensor, lengths: Tensor, seed: int,
                                 w_out: Tensor, w_h: Tensor) -> list[Tensor]:
    """The function fused_rnn.RNN computes on packed input in training mode, built from one-layer nn.RNNs: layer l
    runs on the packed sequence; between layers its padded output [T, B, D·H] (zeros at padded steps) is multiplied
    by a mask drawn as F.dropout draws it -- bernoulli_(1 - p) on a tensor of that shape, divided by (1 - p) -- in
    the packing's sorted batch order (the order the module works in), with the generator seeded with ``seed``
    before the first layer. x [T, B, I] time-major, hx [L·D, B, H].
    Returns [output (padded), h_n, grad x, grad hx, grad of every parameter of ``model``'s layout]."""
    L, D, p = model.num_layers, 2 if model.bidirectional else 1, model.dropout
    sd = model.state_dict()
    x, hx = x.clone().requires_grad_(), hx.clone().requires_grad_()
    layers = []
    for layer in range(L):
        one = nn.RNN(I if layer == 0 else D * H, H, nonlinearity=model.nonlinearity, bias=model.bias,
                     bidirectional=model.bidirectional, dtype=x.dtype)
        one.load_state_dict({k.replace(f"_l{layer}", "_l0"): v for k, v in sd.items() if f"_l{layer}" in k})
        layers.append(one)
    torch.manual_seed(seed)
    inp, h_n = x, []
    for layer, one in enumerate(layers):
        out, h = one(pack_padded_sequence(inp, lengths, enforce_sorted=False), hx[layer * D:(layer + 1) * D])
        inp = pad_packed_sequence(out, total_length=T)[0]
        h_n.append(h)
        if layer < L - 1:  # the mask is drawn in the packing's sorted batch order, then put back in the user's
            noise = torch.empty_like(inp).bernoulli_(1 - p).div_(1 - p)
            inp = inp * noise.index_select(1, out.unsorted_indices)
    h_n = torch.cat(h_n)
    ((inp * w_out).sum() + (h_n * w_h).sum()).backward()
    grads = [q.grad for one in layers for q in one.parameters()]
    return [inp.detach(), h_n.detach(), x.grad, hx.grad] + grads


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_dropout_with_packed_input(backend: str, bidirectional: bool) -> None:
    """Packed input, training mode, 3 layers: equality with nn.RNN is impossible, and here is why. nn.RNN's packed
    path applies dropout to each layer's *packed* output [N, D·H] (N = Σ lengths): N·D·H Bernoulli draws. fused_rnn
    works on the padded [T, B, D·H] layout (T·B·D·H draws), so the same seed gives different masks (and leaves the
    generator in a different state). The strongest true statement, checked here exactly (fp64): the result equals
    one-layer nn.RNNs chained with inverted dropout masks drawn over the padded layer outputs in sorted batch order
    (_layerwise_with_padded_masks), gradients included."""
    _need(backend)
    L, D = 3, 2 if bidirectional else 1
    ours = fused_rnn.RNN(I, H, num_layers=L, dropout=P_DROP, bidirectional=bidirectional, backend=backend,
                         dtype=torch.float64).train()
    x, hx, w_out, w_h = _data(L, D, torch.float64)
    lengths = torch.tensor(UNSORTED_LENGTHS)
    torch.manual_seed(11)
    got = run(ours, "packed_unsorted", x, hx, UNSORTED_LENGTHS, False, True, w_out, w_h)
    want = _layerwise_with_padded_masks(ours, x, hx, lengths, 11, w_out, w_h)
    names = ["output", "h_n", "grad_input", "grad_hx"] + ["grad_" + n for n, _ in ours.named_parameters()]
    assert len(names) == len(want)
    for name, w in zip(names, want):
        torch.testing.assert_close(got[name], w, rtol=1e-10, atol=1e-12, msg=lambda m, name=name: f"{name}: {m}")


# ---------------------------------------------------------------------------------------------------------------
# hx=None with packed input; 3+ layers with gradients (item 7)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["packed_sorted", "packed_unsorted"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_packed_input_without_hx(backend: str, bidirectional: bool, form: str) -> None:
    """PackedSequence input and hx=None (zeros made inside, in the sorted order) with 2 layers: output, h_n and
    every gradient equal nn.RNN's in fp64."""
    _need(backend)
    D = 2 if bidirectional else 1
    ours, theirs = make_pair(backend, torch.float64, input_size=I, hidden_size=H, num_layers=2,
                             bidirectional=bidirectional)
    x, _, w_out, w_h = _data(2, D, torch.float64, seed=3)
    lengths = SORTED_LENGTHS if form == "packed_sorted" else UNSORTED_LENGTHS
    got = run(ours, form, x, None, lengths, False, True, w_out, w_h)
    want = run(theirs, form, x, None, lengths, False, True, w_out, w_h)
    assert "grad_hx" not in got
    assert_fp64_equal(got, want)


DEEP_CASES = {  # id -> (config, input form)
    "L3-bi-relu-packed": (dict(num_layers=3, bidirectional=True, nonlinearity="relu"), "packed_unsorted"),
    "L3-uni-tanh-lengths-bfirst": (dict(num_layers=3, batch_first=True), "lengths_kw"),
    "L4-bi-tanh-nobias": (dict(num_layers=4, bidirectional=True, bias=False), "padded"),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("case", list(DEEP_CASES.values()), ids=list(DEEP_CASES))
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_deep_stack_with_gradients(backend: str, case: tuple[dict, str], dtype: torch.dtype) -> None:
    """3 and 4 layers: output, h_n and the gradients of input, hx and every layer's parameters vs nn.RNN (fp64:
    equal; fp32: the DESIGN.md rule against nn.RNN in fp64)."""
    _need(backend)
    cfg, form = case
    L, D = cfg["num_layers"], 2 if cfg.get("bidirectional") else 1
    bf = cfg.get("batch_first", False)
    ours, theirs = make_pair(backend, dtype, input_size=I, hidden_size=H, **cfg)
    x, hx, w_out, w_h = _data(L, D, dtype, bf, seed=L)
    lengths = [T] * B if form == "padded" else UNSORTED_LENGTHS
    theirs_form = "packed_unsorted" if form == "lengths_kw" else form
    got = run(ours, form, x, hx, lengths, bf, True, w_out, w_h)
    want = run(theirs, theirs_form, x, hx, lengths, bf, True, w_out, w_h)
    assert sum(k.startswith("grad_weight") for k in got) == L * D * 2
    for res in (want,) if form == "lengths_kw" else ():
        for k in ("batch_sizes", "sorted_indices", "unsorted_indices"):
            res.pop(k)
    if dtype == torch.float64:
        assert_fp64_equal(got, want)
        return
    oracle = run(copy.deepcopy(theirs).double(), theirs_form, x.double(), hx.double(), lengths, bf, True,
                 w_out.double(), w_h.double())
    if form == "lengths_kw":
        for k in ("batch_sizes", "sorted_indices", "unsorted_indices"):
            oracle.pop(k)
    assert_within_rule(got, want, oracle)


# ---------------------------------------------------------------------------------------------------------------
# fp16 / bf16: modules used directly, and relu gradients under autocast (item 7)
# ---------------------------------------------------------------------------------------------------------------

# Floors of the tolerance rule, relative to max(1, max |oracle|): ~ a quarter of each dtype's eps (test_autocast.py).
LP_FLOOR = {torch.bfloat16: 2e-3, torch.float16: 2e-4}
LP_T, LP_B, LP_I, LP_H = 9, 5, 6, 11


def _flip_free_relu(model: nn.Module, dtype: torch.dtype) -> float:
    """Set weights so that no relu pre-activation is near 0, and return the proven margin min |a|.

    With relu, a pre-activation that rounds across 0 differently in two low-precision runs flips relu' for that
    element: a discrete gradient error no "2 x nn.RNN's error" bound can hold element by element (test_autocast.py
    measured it; which run flips is luck: over 30 seeds, L1 bf16, nn.RNN flipped 12 outputs and fused_rnn 5). So
    each unit gets a bias of ±1 (random sign: half the units live, half dead) and weights in ±0.01, and the margin
    is proven from the values as rounded to ``dtype``: with r_ih, r_hh the largest absolute row sums of W_ih, W_hh,
    c a bound on the layer input and M = max(max |h0|, (max |b| + r_ih·c) / (1 - r_hh)) a bound on every state,
    every pre-activation has |a| >= min |b| - r_ih·c - r_hh·M. Needs the input below 3.5 and |h0| below 2."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("weight"):
                p.uniform_(-0.01, 0.01)
            elif name.startswith("bias_ih"):
                p.copy_(torch.where(torch.rand_like(p) < 0.5, -1.0, 1.0))
            else:
                p.zero_()
    D = 2 if model.bidirectional else 1
    c, h0_max, margin = 3.5, 2.0, float("inf")
    for layer in range(model.num_layers):
        m_layer = 0.0
        for d in range(D):
            sfx = f"_l{layer}{'_reverse' if d else ''}"
            w_ih, w_hh, b_ih, b_hh = (getattr(model, n + sfx).detach().to(dtype).double()
                                      for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            b = b_ih + b_hh
            r_ih, r_hh = w_ih.abs().sum(1).max().item(), w_hh.abs().sum(1).max().item()
            assert r_hh < 1
            M = max(h0_max, (b.abs().max().item() + r_ih * c) / (1 - r_hh))
            margin = min(margin, b.abs().min().item() - r_ih * c - r_hh * M)
            m_layer = max(m_layer, M)
        c = m_layer
    return margin


def _lp_results(model: nn.Module, x: Tensor, hx: Tensor, w_out: Tensor, w_h: Tensor,
                amp: torch.dtype | None) -> list[Tensor]:
    """Forward (under CPU autocast to ``amp`` when given) and backward of Σ output·w_out + Σ h_n·w_h (in fp64):
    [output, h_n, grad x, grad hx, grad of every parameter]."""
    x, hx = x.clone().requires_grad_(), hx.clone().requires_grad_()
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=amp or torch.bfloat16, enabled=amp is not None):
        out, h_n = model(x, hx)
    ((out.double() * w_out).sum() + (h_n.double() * w_h).sum()).backward()
    return [out.detach(), h_n.detach(), x.grad, hx.grad] + [p.grad for p in model.parameters()]


def _check_low_precision(backend: str, dtype: torch.dtype, amp: bool, cfg: dict, seed: int) -> None:
    """fused_rnn vs nn.RNN in ``dtype`` -- the modules converted to it (amp False) or fp32 modules under autocast
    to it (amp True) -- judged against an fp64 oracle (nn.RNN in fp64 on the values as rounded to ``dtype``).

    Rule (DESIGN.md): err ≤ 2 × min(baselines) + floor·max(1, |oracle|), the baselines being nn.RNN's error in that
    dtype and, for backend "cpu", the reference backend's error in that dtype (the chain nn.RNN → reference → cpu).
    Also the same dtypes as nn.RNN for every result. relu configurations use _flip_free_relu's weights."""
    torch.manual_seed(seed)
    D, L = 2 if cfg.get("bidirectional") else 1, cfg.get("num_layers", 1)
    base = nn.RNN(LP_I, LP_H, **cfg)
    if cfg.get("nonlinearity") == "relu":
        assert _flip_free_relu(base, dtype) >= 0.25, "test setup: relu pre-activations may cross 0"
    x = torch.randn(LP_T, LP_B, LP_I).clamp(-3.5, 3.5)
    hx = 0.5 * torch.randn(L * D, LP_B, LP_H).clamp(-3.5, 3.5)
    w_out = torch.randn(LP_T, LP_B, D * LP_H, dtype=torch.float64)
    w_h = torch.randn(L * D, LP_B, LP_H, dtype=torch.float64)
    store = torch.float32 if amp else dtype  # parameter (and, direct, input) dtype
    xs, hs = (x, hx) if amp else (x.to(dtype), hx.to(dtype))

    def module(name: str) -> nn.Module:
        m = nn.RNN(LP_I, LP_H, **cfg) if name == "nn" else fused_rnn.RNN(LP_I, LP_H, backend=name, **cfg)
        m.load_state_dict(base.state_dict())
        return m.to(store)

    amp_dtype = dtype if amp else None
    got = _lp_results(module(backend), xs, hs, w_out, w_h, amp_dtype)
    baselines = {name: _lp_results(module(name), xs, hs, w_out, w_h, amp_dtype)
                 for name in (["nn", "reference"] if backend == "cpu" else ["nn"])}
    oracle_m = nn.RNN(LP_I, LP_H, **cfg).double()
    oracle_m.load_state_dict({k: v.to(dtype).double() for k, v in base.state_dict().items()})
    exact = _lp_results(oracle_m, x.to(dtype).double(), hx.to(dtype).double(), w_out, w_h, None)

    assert [t.dtype for t in got] == [t.dtype for t in baselines["nn"]]
    assert got[0].dtype == dtype and got[1].dtype == dtype
    names = ["output", "h_n", "grad x", "grad hx"] + [n for n, _ in base.named_parameters()]
    assert len(names) == len(got) == len(exact)
    for i, name in enumerate(names):
        e = exact[i]
        err = (got[i].double() - e).abs().max().item()
        base_errs = {k: (v[i].double() - e).abs().max().item() for k, v in baselines.items()}
        bound = 2 * min(base_errs.values()) + LP_FLOOR[dtype] * max(1.0, e.abs().max().item())
        print(f"{name}: err {backend} {err:.2e}, " + ", ".join(f"{k} {v:.2e}" for k, v in base_errs.items())
              + f", bound {bound:.2e}")
        assert err <= bound, f"{name}: error {err:.3e} vs fp64 > bound {bound:.3e} ({base_errs})"


LP_CASES = {
    "L1-tanh": dict(),
    "L2-bi-tanh": dict(num_layers=2, bidirectional=True),
    "L2-bi-relu": dict(num_layers=2, bidirectional=True, nonlinearity="relu"),
}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("cfg", list(LP_CASES.values()), ids=list(LP_CASES))
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_low_precision_module_used_directly(backend: str, cfg: dict, dtype: torch.dtype) -> None:
    """``fused_rnn.RNN(...).to(bf16 / fp16)`` on inputs of that dtype, no autocast: bf16 / fp16 results and
    gradients like nn.RNN's in that dtype, every one within the rule (relu: flip-free weights)."""
    _need(backend)
    _check_low_precision(backend, dtype, False, cfg, seed=1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_relu_gradients_under_autocast(backend: str, dtype: torch.dtype) -> None:
    """relu under CPU autocast, 2 layers, bidirectional: every gradient compared with the rule, not only checked
    finite -- on flip-free weights (see _flip_free_relu for why random weights cannot be judged element-wise)."""
    _need(backend)
    _check_low_precision(backend, dtype, True, LP_CASES["L2-bi-relu"], seed=2)


def _need(backend: str) -> None:
    """The named backend must be usable: "cpu" is built by `make test`, so its absence is a failure, not a skip."""
    assert backend in fused_rnn.available_backends(), f"backend {backend!r} is not available here"
