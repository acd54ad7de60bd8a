"""Bad input gives a clear error, never a crash or a hang.

Where torch.nn.RNN rejects the same call, the expected exception type and message are taken from the installed
nn.RNN at test time (its wording changes between torch versions) -- never hard-coded. Beyond nn.RNN: hx dtype /
device mismatches, ``lengths=``, unknown / unavailable backends and bad tier environment variables.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fused_rnn
from fused_rnn.backends import select

I, H = 3, 5  # noqa: E741 (the shape letters of DESIGN.md: I input size, H hidden size)


def outcome(fn: Callable[[], Any]) -> BaseException | None:
    try:
        fn()
    except Exception as e:  # noqa: BLE001 -- the exception itself is what is compared
        return e
    return None


def assert_same_error(theirs: Callable[[], Any], ours: Callable[[], Any], must_raise: bool = True) -> None:
    """Run the same bad call on nn.RNN and on fused_rnn.RNN: same exception type and message.

    With ``must_raise=False`` the installed nn.RNN may accept the call (older torch did not validate it); then
    fused_rnn must accept it too.
    """
    want, got = outcome(theirs), outcome(ours)
    if want is None:
        assert not must_raise, "the installed nn.RNN accepted this call; the test's premise is wrong"
        assert got is None, f"nn.RNN accepts this call but fused_rnn raised {type(got).__name__}: {got}"
        return
    assert got is not None, f"nn.RNN raises {type(want).__name__}: {want}, fused_rnn raised nothing"
    assert type(got) is type(want), f"{type(got).__name__}: {got}  vs nn.RNN's  {type(want).__name__}: {want}"
    assert str(got) == str(want)


CTOR_CASES = {
    "nonlinearity": ((I, H), dict(nonlinearity="sigmoid")),
    "nonlinearity_case": ((I, H), dict(nonlinearity="Tanh")),
    "dropout_negative": ((I, H), dict(num_layers=2, dropout=-0.1)),
    "dropout_above_one": ((I, H), dict(num_layers=2, dropout=1.5)),
    "dropout_str": ((I, H), dict(num_layers=2, dropout="0.5")),
    "dropout_bool": ((I, H), dict(num_layers=2, dropout=True)),
    "hidden_zero": ((I, 0), {}),
    "hidden_negative": ((I, -3), {}),
    "hidden_float": ((I, 5.0), {}),
    "num_layers_zero": ((I, H), dict(num_layers=0)),
    "num_layers_negative": ((I, H), dict(num_layers=-1)),
    "proj_size": ((I, H), dict(proj_size=2)),
    "proj_size_negative": ((I, H), dict(proj_size=-1)),
    "bias_not_bool": ((I, H), dict(bias="yes")),
    "batch_first_not_bool": ((I, H), dict(batch_first=1)),
    "unknown_kwarg": ((I, H), dict(foo=1)),
    "too_many_args": ((I, H, 1, True, False, 0.0, False, 0, None, None, "x"), {}),
}
# Validated by newer torch only: there both must raise the same; where nn.RNN accepts them, so must fused_rnn.
CTOR_CASES_MAYBE = {
    "input_zero": ((0, H), {}),
    "input_negative": ((-2, H), {}),
    "input_float": ((3.0, H), {}),
}


@pytest.mark.parametrize("case", list(CTOR_CASES))
def test_constructor_errors_match_nn_rnn(case: str) -> None:
    args, kwargs = CTOR_CASES[case]
    assert_same_error(lambda: nn.RNN(*args, **kwargs), lambda: fused_rnn.RNN(*args, **kwargs))


@pytest.mark.parametrize("case", list(CTOR_CASES_MAYBE))
def test_constructor_validation_matches_nn_rnn(case: str) -> None:
    args, kwargs = CTOR_CASES_MAYBE[case]
    assert_same_error(lambda: nn.RNN(*args, **kwargs), lambda: fused_rnn.RNN(*args, **kwargs), must_raise=False)


def _pair(dtype: torch.dtype = torch.float64, **cfg) -> tuple[nn.RNN, fused_rnn.RNN]:
    theirs = nn.RNN(I, H, dtype=dtype, **cfg)
    ours = fused_rnn.RNN(I, H, dtype=dtype, backend="reference", **cfg)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def _x(*shape: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(*shape, dtype=dtype)


# (constructor kwargs, input, hx); shapes: batched [T, B, I] (time-major unless batch_first), unbatched [T, I].
FORWARD_CASES: dict[str, tuple[dict, Callable[[], torch.Tensor], Callable[[], torch.Tensor | None]]] = {
    "input_1d": ({}, lambda: _x(I), lambda: None),
    "input_4d": ({}, lambda: _x(2, 3, 4, I), lambda: None),
    "input_size": ({}, lambda: _x(4, 2, I + 1), lambda: None),
    "input_size_unbatched": ({}, lambda: _x(4, I + 2), lambda: None),
    "input_size_batch_first": (dict(batch_first=True), lambda: _x(2, 4, I - 1), lambda: None),
    "hidden_layers": (dict(num_layers=2), lambda: _x(4, 2, I), lambda: _x(1, 2, H)),
    "hidden_directions": (dict(bidirectional=True), lambda: _x(4, 2, I), lambda: _x(1, 2, H)),
    "hidden_batch": ({}, lambda: _x(4, 2, I), lambda: _x(1, 3, H)),
    "hidden_size": ({}, lambda: _x(4, 2, I), lambda: _x(1, 2, H + 1)),
    "hidden_batch_first": (dict(batch_first=True), lambda: _x(2, 4, I), lambda: _x(1, 4, H)),
    "hx_2d_batched_input": ({}, lambda: _x(4, 2, I), lambda: _x(1, H)),
    "hx_3d_unbatched_input": ({}, lambda: _x(4, I), lambda: _x(1, 1, H)),
    "hx_1d_unbatched_input": ({}, lambda: _x(4, I), lambda: _x(H)),
    "hx_unbatched_wrong_size": ({}, lambda: _x(4, I), lambda: _x(1, H + 2)),
    "input_dtype_vs_weights": ({}, lambda: _x(4, 2, I, dtype=torch.float32), lambda: None),
    "input_dtype_vs_weights_hx": ({}, lambda: _x(4, 2, I, dtype=torch.float32),
                                  lambda: _x(1, 2, H, dtype=torch.float32)),
    "seq_len_zero": ({}, lambda: _x(0, 2, I), lambda: None),
    "seq_len_zero_batch_first": (dict(batch_first=True), lambda: _x(2, 0, I), lambda: None),
    "seq_len_zero_unbatched": ({}, lambda: _x(0, I), lambda: None),
    "seq_len_zero_with_hx": (dict(num_layers=2), lambda: _x(0, 3, I), lambda: _x(2, 3, H)),
}


@pytest.mark.parametrize("case", list(FORWARD_CASES))
def test_forward_errors_match_nn_rnn(case: str) -> None:
    cfg, make_x, make_hx = FORWARD_CASES[case]
    theirs, ours = _pair(**cfg)
    x, hx = make_x(), make_hx()
    assert_same_error(lambda: theirs(x, hx), lambda: ours(x, hx))


def test_packed_hidden_batch_error_matches_nn_rnn() -> None:
    theirs, ours = _pair()
    packed = pack_padded_sequence(_x(5, 3, I), torch.tensor([5, 2, 4]), enforce_sorted=False)
    hx = _x(1, 2, H)
    assert_same_error(lambda: theirs(packed, hx), lambda: ours(packed, hx))


def test_packed_input_size_error_matches_nn_rnn() -> None:
    theirs, ours = _pair()
    packed = pack_padded_sequence(_x(5, 3, I + 1), torch.tensor([5, 4, 2]))
    assert_same_error(lambda: theirs(packed), lambda: ours(packed))


def _set(name: str, value: Callable[[], Any]) -> Callable[[nn.Module], None]:
    """Replace parameter ``name``'s data (or, for a non-tensor ``value``, the attribute itself) after construction."""
    def mutate(m: nn.Module) -> None:
        v = value()
        if isinstance(v, torch.Tensor) and not isinstance(v, nn.Parameter) and v.device.type != "meta":
            getattr(m, name).data = v
        else:
            setattr(m, name, v)
    return mutate


# A parameter changed after construction, or the module moved, so that nn.RNN's op rejects the call (with its own
# error) or handles it in its own way: the fused paths hand such calls to nn.RNN's op (modules._fused_can_run), so
# the error -- or the result -- is nn.RNN's. Before, the fused paths raised other errors (w_hh's shape, dtype), or
# accepted what nn.RNN rejects (a bias set to None, a float32 b_hh in a float64 module, a [H, H, 1] w_hh, W_ih on
# another device: a result on the meta device), or dropped the imaginary part of complex parameters (reference).
F64 = dict(dtype=torch.float64)
PARAM_CASES: dict[str, Callable[[nn.Module], None]] = {
    "w_hh_wrong_shape": _set("weight_hh_l0", lambda: torch.ones(H, H + 1, **F64)),
    "w_hh_transposed_shape": _set("weight_hh_l0", lambda: torch.ones(H + 1, H, **F64)),
    "w_hh_3d": _set("weight_hh_l0", lambda: torch.ones(H, H, 1, **F64) / H),
    "w_hh_flat": _set("weight_hh_l0", lambda: torch.ones(H * H, **F64)),
    "w_ih_wrong_shape": _set("weight_ih_l0", lambda: torch.ones(H, I + 1, **F64)),
    "b_ih_wrong_size": _set("bias_ih_l0", lambda: torch.ones(H + 1, **F64)),
    "b_hh_column": _set("bias_hh_l0", lambda: torch.ones(H, 1, **F64)),
    "b_hh_broadcast": _set("bias_hh_l0", lambda: torch.full((1,), 0.25, **F64)),  # nn.RNN accepts it
    "w_hh_float32": _set("weight_hh_l0", lambda: torch.full((H, H), 0.1)),
    "b_hh_float32": _set("bias_hh_l0", lambda: torch.full((H,), 0.1)),
    "b_ih_none": _set("bias_ih_l0", lambda: None),
    "w_ih_on_meta": _set("weight_ih_l0", lambda: nn.Parameter(torch.empty(H, I, device="meta", **F64))),
    "module_on_meta": lambda m: m.to("meta"),
    "complex": lambda m: m.to(torch.complex128),  # nn.RNN runs complex modules (and the input is cast below)
}


@pytest.mark.filterwarnings("ignore:Complex modules are a new feature")
@pytest.mark.parametrize("case", list(PARAM_CASES))
def test_replaced_parameter_matches_nn_rnn(cpu_backend: str, case: str) -> None:
    theirs = nn.RNN(I, H, num_layers=2, **F64)
    ours = fused_rnn.RNN(I, H, num_layers=2, backend=cpu_backend, **F64)
    ours.load_state_dict(theirs.state_dict())
    for m in (theirs, ours):
        PARAM_CASES[case](m)
    x = _x(4, 2, I).to(theirs.weight_hh_l1.dtype)
    assert_same_error(lambda: theirs(x), lambda: ours(x), must_raise=False)
    if outcome(lambda: theirs(x)) is None:
        for a, b in zip(theirs(x), ours(x)):
            torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_fp64_hx_under_autocast_matches_nn_rnn(cpu_backend: str, amp_dtype: torch.dtype) -> None:
    """Autocast leaves an fp64 hx as it is: nn.RNN's op then fails on the dtypes; the reference backend used to
    accept it (type promotion), the cpu backend raised its own message."""
    theirs = nn.RNN(I, H)
    ours = fused_rnn.RNN(I, H, backend=cpu_backend)
    ours.load_state_dict(theirs.state_dict())
    x, hx = torch.randn(4, 2, I), torch.randn(1, 2, H, dtype=torch.float64)

    def call(m: nn.Module):
        with torch.autocast("cpu", dtype=amp_dtype):
            return m(x, hx)

    assert_same_error(lambda: call(theirs), lambda: call(ours))


# A PackedSequence built by hand with batch_sizes nn.RNN's op rejects: its error, from every backend.
BAD_PACKED = {
    "batch_sizes_int32": (5, [2, 2, 1], torch.int32),
    "batch_sizes_increasing": (5, [1, 2, 2], torch.int64),
    "batch_sizes_past_the_data": (4, [2, 2, 1], torch.int64),
}


@pytest.mark.parametrize("case", list(BAD_PACKED))
def test_malformed_packed_sequence_matches_nn_rnn(cpu_backend: str, case: str) -> None:
    rows, sizes, dtype = BAD_PACKED[case]
    theirs, ours = _pair()
    ours.backend = cpu_backend
    packed = PackedSequence(_x(rows, I), torch.tensor(sizes, dtype=dtype), None, None)
    assert_same_error(lambda: theirs(packed), lambda: ours(packed))


# ---------------------------------------------------------------------------------------------------------------
# beyond nn.RNN


@pytest.mark.parametrize("unbatched", [False, True], ids=["batched", "unbatched"])
def test_hx_dtype_mismatch_is_clear(unbatched: bool) -> None:
    """nn.RNN fails deep in a matmul ("mat1 and mat2 must have the same dtype"); fused_rnn names hx and both
    dtypes, with the same exception type as nn.RNN."""
    theirs, ours = _pair()
    x = _x(4, I) if unbatched else _x(4, 2, I)
    hx = _x(1, H, dtype=torch.float32) if unbatched else _x(1, 2, H, dtype=torch.float32)
    want = outcome(lambda: theirs(x, hx))
    with pytest.raises(RuntimeError) as got:
        ours(x, hx)
    assert want is not None and isinstance(got.value, type(want))
    msg = str(got.value)
    assert "hx" in msg and "torch.float32" in msg and "torch.float64" in msg


def test_hx_device_mismatch_is_clear() -> None:
    """hx on another device than the input (the meta device stands in for a GPU here)."""
    theirs, ours = _pair()
    x = _x(4, 2, I)
    hx = torch.zeros(1, 2, H, dtype=torch.float64, device="meta")
    want = outcome(lambda: theirs(x, hx))
    with pytest.raises(RuntimeError) as got:
        ours(x, hx)
    assert want is not None and isinstance(got.value, type(want))
    msg = str(got.value)
    assert "hx" in msg and "meta" in msg and "cpu" in msg


@pytest.mark.parametrize("bad", [[[1.0, 2.0, 3.0]], None, 3.0, "x"], ids=["list", "None", "float", "str"])
def test_non_tensor_input_is_clear(bad: object) -> None:
    """nn.RNN fails on ``input.dim()`` ("'list' object has no attribute 'dim'"); fused_rnn names the problem with an
    error that is a TypeError and also of nn.RNN's type (AttributeError), so an ``except`` written for nn.RNN still
    catches it."""
    theirs, ours = _pair()
    want = outcome(lambda: theirs(bad))
    with pytest.raises(TypeError, match="Tensor or PackedSequence") as got:
        ours(bad)
    assert want is not None and isinstance(got.value, type(want)), f"nn.RNN raises {type(want).__name__}: {want}"


LENGTHS_CASES = {
    "zero": ([4, 0, 2], ValueError, r"\[1, 4\]"),
    "too_long": ([4, 5, 2], ValueError, r"\[1, 4\]"),
    "negative": ([4, -1, 2], ValueError, r"\[1, 4\]"),
    "wrong_count": ([4, 2], ValueError, "size batch"),
    "two_dims": ([[4, 2, 1]], ValueError, "1-D"),
    "float": ([4.0, 2.0, 1.0], TypeError, "integers"),
    "bool": ([True, True, False], TypeError, "integers"),
}


@pytest.mark.parametrize("case", list(LENGTHS_CASES))
def test_bad_lengths_keyword(case: str) -> None:
    values, exc, pattern = LENGTHS_CASES[case]
    _, ours = _pair()
    with pytest.raises(exc, match=pattern):
        ours(_x(4, 3, I), lengths=torch.tensor(values))


def test_lengths_keyword_with_packed_or_unbatched_input() -> None:
    _, ours = _pair()
    packed = pack_padded_sequence(_x(4, 2, I), torch.tensor([4, 2]))
    with pytest.raises(ValueError, match="PackedSequence"):
        ours(packed, lengths=torch.tensor([4, 2]))
    with pytest.raises(ValueError, match="batched"):
        ours(_x(4, I), lengths=torch.tensor([4]))


def test_unknown_backend() -> None:
    with pytest.raises(ValueError, match="unknown backend 'fast'") as e:
        fused_rnn.RNN(I, H, backend="fast")
    for name in ("reference", "cpu", "cuda", "triton"):
        assert name in str(e.value)


def test_unknown_backend_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUSED_RNN_BACKEND", "fastest")
    ours = fused_rnn.RNN(I, H)
    with pytest.raises(ValueError, match="FUSED_RNN_BACKEND='fastest'"):
        ours(torch.randn(3, 2, I))


def test_backend_from_environment_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """FUSED_RNN_BACKEND replaces "auto": naming a backend that cannot run here must fail, not fall back."""
    monkeypatch.setenv("FUSED_RNN_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match="backend 'cuda'"):
        fused_rnn.RNN(I, H)(torch.randn(3, 2, I))


def test_backend_that_cannot_run_on_cpu_tensors() -> None:
    """backend="cuda" with CPU tensors: unavailable here (no GPU / no CUDA build), or unable to take CPU tensors."""
    ours = fused_rnn.RNN(I, H, backend="cuda")
    with pytest.raises(RuntimeError, match="backend 'cuda' (is not available here|cannot run on cpu tensors)"):
        ours(torch.randn(3, 2, I))


def test_unavailable_backend_reports_why(monkeypatch: pytest.MonkeyPatch) -> None:
    mod = select.backend_module("cpu")
    monkeypatch.setattr(mod, "available", lambda: (False, "the C++ extension is not built"))
    ours = fused_rnn.RNN(I, H, backend="cpu")
    with pytest.raises(RuntimeError, match="backend 'cpu' is not available here: the C\\+\\+ extension is not built"):
        ours(torch.randn(3, 2, I))
    assert "cpu" not in fused_rnn.available_backends()


def test_backend_module_that_fails_to_import(monkeypatch: pytest.MonkeyPatch) -> None:
    """A backend whose module (or its dependency, e.g. triton) cannot be imported: a clear RuntimeError."""
    real = select._module

    def fake(name: str):
        if name == "triton":
            raise ModuleNotFoundError("No module named 'triton'")
        return real(name)

    monkeypatch.setattr(select, "_module", fake)
    with pytest.raises(RuntimeError, match="backend 'triton' is not available here: ModuleNotFoundError"):
        fused_rnn.RNN(I, H, backend="triton")(torch.randn(3, 2, I))
    assert "triton" not in fused_rnn.available_backends()


def _pretend_usable(monkeypatch: pytest.MonkeyPatch, name: str):
    """Make a GPU backend look usable on this machine, so select's tier handling can be checked without a GPU.
    Every backend module imports without its GPU dependencies (triton's catches a missing triton itself), so a
    failing import here is a failure, not a skip."""
    mod = select.backend_module(name)
    monkeypatch.setattr(mod, "available", lambda: (True, ""))
    monkeypatch.setattr(mod, "supports_device", lambda device: True)
    if hasattr(mod, "compiled_tiers"):
        monkeypatch.setattr(mod, "compiled_tiers", lambda: mod.TIERS)
    return mod


TIER_ENVS = sorted(select._TIER_ENV.items())


@pytest.mark.parametrize("value", ["bogus", "Persistent", " fallback"])
@pytest.mark.parametrize(("backend", "env"), TIER_ENVS, ids=[b for b, _ in TIER_ENVS])
def test_bad_tier_environment(monkeypatch: pytest.MonkeyPatch, backend: str, env: str, value: str) -> None:
    mod = _pretend_usable(monkeypatch, backend)
    monkeypatch.setenv(env, value)
    with pytest.raises(ValueError, match=env) as e:
        select.resolve(backend, torch.device("cuda"), 64, 4, torch.float32)
    assert repr(value) in str(e.value)
    for tier in mod.TIERS:
        assert tier in str(e.value)


@pytest.mark.parametrize(("backend", "env"), TIER_ENVS, ids=[b for b, _ in TIER_ENVS])
def test_good_tier_environment_is_forced(monkeypatch: pytest.MonkeyPatch, backend: str, env: str) -> None:
    mod = _pretend_usable(monkeypatch, backend)
    assert mod.TIERS, "a GPU backend must name its tiers"
    for tier in mod.TIERS:
        monkeypatch.setenv(env, tier)
        assert select.resolve(backend, torch.device("cuda"), 64, 4, torch.float32) == select.Choice(backend, tier)


def test_tier_environment_of_another_backend_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """FUSED_RNN_CUDA_TIER is read only when the cuda backend runs; the reference ignores it."""
    monkeypatch.setenv("FUSED_RNN_CUDA_TIER", "bogus")
    out, _ = fused_rnn.RNN(I, H, backend="reference")(torch.randn(3, 2, I))
    assert out.shape == (3, 2, H)
