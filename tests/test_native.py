"""`native` (fused_rnn/native.py): PyTorch's own RNN kernel through fused_rnn.RNN equals torch.nn.RNN bit for bit --
outputs, h_n and every gradient (input, hx, each parameter) -- across the module's options: packed input,
``lengths=``, unbatched, batch_first, bidirectional, 1-3 layers, relu/tanh, no bias, dropout under one seed, hx given
or not, every dtype, eval mode, autocast. Also where `auto` must not run native (record_bptt), the environment
override, and (GPU, ``gpu_quick``) cuDNN's flat weights, eval-mode backward and what auto picks for fp64 and an
unverified capability."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import fused_rnn
from fused_rnn import diagnostics
from fused_rnn.backends import select

T, B, I, H = 6, 3, 4, 5  # noqa: E741 (DESIGN.md's shape letters)
LENGTHS = [6, 2, 4]  # unsorted on purpose: packing sorts, unpacking must restore the order

CONFIGS = {
    "L1-tanh": dict(),
    "L2-bi-relu": dict(num_layers=2, bidirectional=True, nonlinearity="relu"),
    "L3-bi-dropout": dict(num_layers=3, bidirectional=True, dropout=0.5),
    "L2-nobias": dict(num_layers=2, bias=False),
}
FORMS = ["padded", "batch_first", "packed", "lengths", "unbatched"]
DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _pair(cfg: dict, dtype: torch.dtype, backend: str = "native", batch_first: bool = False,
          device: str = "cpu") -> tuple[fused_rnn.RNN, nn.RNN]:
    theirs = nn.RNN(I, H, batch_first=batch_first, **cfg).to(device=device, dtype=dtype)
    ours = fused_rnn.RNN(I, H, batch_first=batch_first, backend=backend, **cfg).to(device=device, dtype=dtype)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def _inputs(form: str, dtype: torch.dtype, with_hx: bool, D: int, L: int, device: str = "cpu"):
    """(x as the module sees it, hx or None, lengths or None) for one input form; fresh leaves every call."""
    g = torch.Generator().manual_seed(1)
    if form == "batch_first":
        x = torch.randn(B, T, I, generator=g)
    elif form == "unbatched":
        x = torch.randn(T, I, generator=g)
    else:
        x = torch.randn(T, B, I, generator=g)
    hx = None
    if with_hx:
        hx = torch.randn(L * D, H, generator=g) if form == "unbatched" else torch.randn(L * D, B, H, generator=g)
        hx = hx.to(device=device, dtype=dtype).requires_grad_(True)
    return x.to(device=device, dtype=dtype).requires_grad_(True), hx


def _run(model, form: str, x: torch.Tensor, hx: torch.Tensor | None, seed: int, nn_rnn: bool) -> dict:
    """One forward + backward of a loss on both outputs; returns outputs and every gradient."""
    torch.manual_seed(seed)  # dropout draws from the global RNG: both sides start from the same state
    lengths = torch.tensor(LENGTHS)
    if form == "packed":
        out, h = model(pack_padded_sequence(x, lengths, enforce_sorted=False), hx)
        assert isinstance(out, PackedSequence)
        out = out.data
    elif form == "lengths":
        if nn_rnn:  # what `lengths=` means: nn.RNN on the packed batch, re-padded
            out, h = model(pack_padded_sequence(x, lengths, enforce_sorted=False), hx)
            out, _ = pad_packed_sequence(out, total_length=T)
        else:
            out, h = model(x, hx, lengths=lengths)
    else:
        out, h = model(x, hx)
    gy = torch.linspace(-1, 1, out.numel()).view_as(out).to(out.dtype)
    gh = torch.linspace(1, 2, h.numel()).view_as(h).to(h.dtype)
    ((out * gy).sum() + (h * gh).sum()).backward()
    res = {"out": out.detach(), "h_n": h.detach(), "dx": x.grad}
    if hx is not None:
        res["dhx"] = hx.grad
    for n, p in model.named_parameters():
        res["d" + n] = p.grad
    return res


def _assert_bitwise(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] is not None and want[k] is not None, k
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
        assert torch.equal(got[k], want[k]), f"{k}: max diff {(got[k].double() - want[k].double()).abs().max()}"


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("cfg", list(CONFIGS.values()), ids=list(CONFIGS))
@pytest.mark.parametrize("with_hx", [False, True], ids=["hx0", "hx"])
def test_native_equals_nn_rnn_bitwise(cfg: dict, form: str, dtype: torch.dtype, with_hx: bool) -> None:
    ours, theirs = _pair(cfg, dtype, batch_first=form == "batch_first")
    D, L = (2 if cfg.get("bidirectional") else 1), cfg.get("num_layers", 1)
    got = _run(ours, form, *_inputs(form, dtype, with_hx, D, L), seed=7, nn_rnn=False)
    want = _run(theirs, form, *_inputs(form, dtype, with_hx, D, L), seed=7, nn_rnn=True)
    _assert_bitwise(got, want)


@pytest.mark.parametrize("form", ["padded", "packed"])
def test_native_eval_mode_equals_nn_rnn(form: str) -> None:
    """Eval mode: no dropout on either side (dropout=0.5 set), same results."""
    ours, theirs = _pair(CONFIGS["L3-bi-dropout"], torch.float64)
    ours.eval()
    theirs.eval()
    got = _run(ours, form, *_inputs(form, torch.float64, True, 2, 3), seed=3, nn_rnn=False)
    want = _run(theirs, form, *_inputs(form, torch.float64, True, 2, 3), seed=11, nn_rnn=True)  # seeds irrelevant
    _assert_bitwise(got, want)


def test_native_dropout_follows_the_seed() -> None:
    """Training with dropout: the same seed gives nn.RNN's result, another seed does not (dropout is really on)."""
    ours, theirs = _pair(CONFIGS["L3-bi-dropout"], torch.float64)
    want = _run(theirs, "padded", *_inputs("padded", torch.float64, False, 2, 3), seed=5, nn_rnn=True)
    _assert_bitwise(_run(ours, "padded", *_inputs("padded", torch.float64, False, 2, 3), seed=5, nn_rnn=False), want)
    other = _run(ours, "padded", *_inputs("padded", torch.float64, False, 2, 3), seed=6, nn_rnn=False)
    assert not torch.equal(other["out"], want["out"])


@pytest.mark.parametrize("amp", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_native_under_cpu_autocast_equals_nn_rnn(amp: torch.dtype) -> None:
    """fp32 module under torch.autocast: the op casts itself, as nn.RNN's does; fp32 parameter gradients."""
    ours, theirs = _pair(CONFIGS["L2-bi-relu"], torch.float32)
    results = []
    for m, is_nn in ((ours, False), (theirs, True)):
        x, hx = _inputs("padded", torch.float32, True, 2, 2)
        with torch.autocast("cpu", dtype=amp):
            results.append(_run(m, "padded", x, hx, seed=0, nn_rnn=is_nn))
    _assert_bitwise(*results)
    assert results[0]["out"].dtype == amp and results[0]["dweight_ih_l0"].dtype == torch.float32


def test_auto_runs_native_where_the_policy_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where auto's policy picks native the module's results are nn.RNN's, bit for bit, and the path is recorded."""
    from fused_rnn import policy

    monkeypatch.setattr(select, "_decide_cached",
                        lambda *a: policy.Decision("native", "", "test", "forced by the test"))
    ours, theirs = _pair(CONFIGS["L2-bi-relu"], torch.float32, backend="auto")
    with select.record_paths() as log:
        got = _run(ours, "lengths", *_inputs("lengths", torch.float32, True, 2, 2), seed=0, nn_rnn=False)
    want = _run(theirs, "lengths", *_inputs("lengths", torch.float32, True, 2, 2), seed=0, nn_rnn=True)
    _assert_bitwise(got, want)
    assert [d.path for d in log] == ["native"] and log[0].rule == "test"


def test_auto_runs_the_fused_stack_where_the_policy_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """The other branch: a fused decision reaches the fused backend (the reference here: no C++ needed)."""
    from fused_rnn import policy
    from fused_rnn.backends import reference

    calls = []
    real = reference.forward
    monkeypatch.setattr(reference, "forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(select, "_decide_cached",
                        lambda *a: policy.Decision("reference", "", "test", "forced by the test"))
    ours, theirs = _pair(CONFIGS["L2-bi-relu"], torch.float64, backend="auto")
    x = torch.randn(T, B, I, dtype=torch.float64)
    with select.record_paths() as log:
        out, h_n = ours(x)
    assert [d.path for d in log] == ["reference"] and len(calls) == 4  # 2 layers × 2 directions
    want, want_h = theirs(x)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(h_n, want_h)


def test_mode_in_the_key_is_training_only_with_grad(monkeypatch: pytest.MonkeyPatch) -> None:
    """The policy sees training=True only when grad is enabled and something requires grad."""
    seen = []
    real = select._policy_decision
    monkeypatch.setattr(select, "_policy_decision", lambda *a: seen.append(a[7]) or real(*a))  # a[7]: training
    m = fused_rnn.RNN(I, H)
    x = torch.randn(T, B, I)
    m(x)  # parameters require grad
    with torch.no_grad():
        m(x)
    m.requires_grad_(False)
    select.clear_caches()  # (the same key as the call before: choose_path's memo would answer it)
    m(x)
    select.clear_caches()
    m(x.requires_grad_(True))
    assert seen == [True, False, False, True]


def test_native_inside_record_bptt_is_a_clear_error_and_auto_stays_fused() -> None:
    x = torch.randn(T, B, I, dtype=torch.float64)
    native = fused_rnn.RNN(I, H, backend="native").double()
    with diagnostics.record_bptt():
        with pytest.raises(RuntimeError, match="native.*record_bptt"):
            native(x)
    auto = fused_rnn.RNN(I, H, num_layers=2).double()
    with diagnostics.record_bptt() as rec, select.record_paths() as log:
        out, h_n = auto(x)
        (out.sum() + h_n.sum()).backward()
    assert [d.rule for d in log] == ["diagnostics"] and not log[0].native
    assert len(rec.entries) == 2  # both layers recorded: the fused recurrence ran


def test_environment_can_force_native(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUSED_RNN_BACKEND", "native")
    ours, theirs = _pair(CONFIGS["L1-tanh"], torch.float32, backend="auto")
    with select.record_paths() as log:
        got = _run(ours, "padded", *_inputs("padded", torch.float32, True, 1, 1), seed=0, nn_rnn=False)
    _assert_bitwise(got, _run(theirs, "padded", *_inputs("padded", torch.float32, True, 1, 1), seed=0, nn_rnn=True))
    assert log[0].native and log[0].rule == "forced"
    # the functional layer has no native path: a clear error, not a silent fallback
    with pytest.raises(ValueError, match="native.*not a backend of elman_layer"):
        fused_rnn.elman_layer(torch.randn(T, B, I), torch.zeros(B, H), torch.randn(H, I), torch.randn(H, H))


def test_native_is_a_module_backend_and_listed_in_errors() -> None:
    assert fused_rnn.RNN(I, H, backend="native").backend == "native"
    assert "backend='native'" in repr(fused_rnn.RNN(I, H, backend="native"))
    with pytest.raises(ValueError, match="'native'"):
        fused_rnn.RNN(I, H, backend="nativ")


def test_native_input_errors_are_the_modules() -> None:
    m = fused_rnn.RNN(I, H, backend="native")
    with pytest.raises(ValueError, match="lengths must lie in"):
        m(torch.randn(T, B, I), lengths=torch.tensor([7, 1, 1]))
    with pytest.raises(RuntimeError, match="hx dtype"):
        m(torch.randn(T, B, I), torch.randn(1, B, H, dtype=torch.float64))
    theirs = nn.RNN(I, H)
    for bad in (torch.randn(T, B, I + 1), torch.randn(T, B, I, 2)):
        with pytest.raises((RuntimeError, ValueError)) as e_theirs:
            theirs(bad)
        with pytest.raises(type(e_theirs.value), match=re.escape(str(e_theirs.value)[:40])):
            m(bad)


def test_flatten_parameters_is_rnnbase_s() -> None:
    """RNNBase's flatten_parameters (cuDNN's flat buffer on CUDA, re-run on .to()); on the CPU a no-op."""
    assert fused_rnn.RNN.flatten_parameters is nn.RNNBase.flatten_parameters
    m = fused_rnn.RNN(I, H, num_layers=2)
    ptrs = [p.data_ptr() for p in m.parameters()]
    m.flatten_parameters()
    assert [p.data_ptr() for p in m.parameters()] == ptrs


def test_native_step_is_the_modules_step() -> None:
    """RNN.step never runs native (one step, own addmm code): a native module's step equals a fused one's."""
    a = fused_rnn.RNN(I, H, num_layers=2, backend="native").double()
    b = fused_rnn.RNN(I, H, num_layers=2, backend="reference").double()
    b.load_state_dict(a.state_dict())
    x, h = torch.randn(B, I, dtype=torch.float64), torch.randn(2, B, H, dtype=torch.float64)
    with select.record_paths() as log:
        ya, ha = a.step(x, h)
    yb, hb = b.step(x, h)
    assert log == [] and torch.equal(ya, yb) and torch.equal(ha, hb)


def test_native_supports_double_backward() -> None:
    """PyTorch's op is twice differentiable on the CPU; native keeps that (the fused path refuses clearly)."""
    m = fused_rnn.RNN(2, 3, backend="native").double()
    x = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x: m(x)[0], (x,))


# ------------------------------------------------------------------------------------------------------------ GPU

def _cuda_pair(cfg: dict, dtype: torch.dtype, backend: str = "native"):
    return _pair(cfg, dtype, backend=backend, device="cuda")


@pytest.mark.gpu
@pytest.mark.gpu_quick
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_native_weights_are_one_flat_buffer() -> None:
    """As nn.RNN's: every parameter a view into one cuDNN buffer, after construction on the device and after .to();
    no 'not part of single contiguous chunk' warning (cuDNN would re-pack per call)."""
    for make in (lambda: fused_rnn.RNN(I, H, num_layers=2, bidirectional=True, backend="native").cuda(),
                 lambda: fused_rnn.RNN(I, H, num_layers=2, bidirectional=True, backend="native",
                                       device="cuda").half()):
        m = make()
        storages = {p.untyped_storage().data_ptr() for p in m.parameters()}
        assert len(storages) == 1, "parameters are not views of one flat buffer"
        x = torch.randn(T, B, I, device="cuda", dtype=next(m.parameters()).dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            m(x)


@pytest.mark.gpu
@pytest.mark.gpu_quick
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64], ids=["fp32", "fp16", "fp64"])
@pytest.mark.parametrize("form", ["padded", "packed", "lengths"])
def test_cuda_native_equals_nn_rnn_bitwise(dtype: torch.dtype, form: str) -> None:
    ours, theirs = _cuda_pair(CONFIGS["L2-bi-relu"], dtype)
    got = _run(ours, form, *_inputs(form, dtype, True, 2, 2, "cuda"), seed=0, nn_rnn=False)
    want = _run(theirs, form, *_inputs(form, dtype, True, 2, 2, "cuda"), seed=0, nn_rnn=True)
    _assert_bitwise(got, want)


@pytest.mark.gpu
@pytest.mark.gpu_quick
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_native_backward_in_eval_mode() -> None:
    """cuDNN refuses backward in eval mode (nn.RNN raises); native runs the eval function in training mode without
    dropout, so backward works and the forward equals nn.RNN's eval forward."""
    ours, theirs = _cuda_pair(CONFIGS["L3-bi-dropout"], torch.float32)
    ours.eval()
    theirs.eval()
    x = torch.randn(T, B, I, device="cuda")
    with torch.no_grad():
        want, want_h = theirs(x)
    xg = x.clone().requires_grad_(True)
    with pytest.raises(RuntimeError, match="training mode"):
        theirs(xg)[0].sum().backward()
    xg.grad = None
    out, h_n = ours(xg)
    (out.sum() + h_n.sum()).backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(h_n, want_h)


@pytest.mark.gpu
@pytest.mark.gpu_quick
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_auto_fp64_runs_native() -> None:
    ours, theirs = _cuda_pair(CONFIGS["L2-bi-relu"], torch.float64, backend="auto")
    with select.record_paths() as log:
        got = _run(ours, "padded", *_inputs("padded", torch.float64, True, 2, 2, "cuda"), seed=0, nn_rnn=False)
    assert [(d.path, d.rule) for d in log] == [("native", "fp64-gpu")]
    _assert_bitwise(got, _run(theirs, "padded", *_inputs("padded", torch.float64, True, 2, 2, "cuda"), seed=0,
                              nn_rnn=True))


@pytest.mark.gpu
@pytest.mark.gpu_quick
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_auto_on_unverified_capability_runs_native(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(select, "_capability", lambda index: (8, 0))
    ours, theirs = _cuda_pair(CONFIGS["L1-tanh"], torch.float32, backend="auto")
    with select.record_paths() as log:
        got = _run(ours, "padded", *_inputs("padded", torch.float32, True, 1, 1, "cuda"), seed=0, nn_rnn=False)
    assert [(d.path, d.rule) for d in log] == [("native", "unverified-gpu")]
    _assert_bitwise(got, _run(theirs, "padded", *_inputs("padded", torch.float32, True, 1, 1, "cuda"), seed=0,
                              nn_rnn=True))
