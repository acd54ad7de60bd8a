"""The per-call machinery that decides a fused_rnn.RNN call's path, made cheap (stop 35): its shortcuts must give the
answers of the long way.

* ``fused_rnn._env.getenv`` (the per-call reads of FUSED_RNN_* variables) equals ``os.environ.get`` whatever the
  environment does: set, changed, deleted, monkeypatched, and with the fast dict absent.
* ``select.choose_path``'s memo of eager CPU decisions: a change of anything the decision reads (FUSED_RNN_BACKEND,
  the thread count, T across rule 7's floor, training, a monkeypatched policy) reaches the next call; the memo never
  answers under torch.jit.trace, autotuning or record_bptt.
* ``RNN._weights_have_changed`` (the native path's flat-weight refresh, read from ``_parameters``): a parameter
  replaced behind ``__setattr__`` (torch.func.functional_call), by ``__setattr__``, or deleted and replaced by a plain
  tensor attribute gives nn.RNN's results, bit for bit.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn
from torch.func import functional_call

import fused_rnn
from fused_rnn import _env, policy
from fused_rnn.backends import select

VARS = ("FUSED_RNN_TEST_ENV_A", "FUSED_RNN_TEST_ENV_B")


@pytest.mark.parametrize("fast", [True, False], ids=["dict", "os-environ"])
def test_getenv_equals_os_environ_get(monkeypatch: pytest.MonkeyPatch, fast: bool) -> None:
    if not fast:
        monkeypatch.setattr(_env, "_DATA", None)
    for name in VARS:
        monkeypatch.delenv(name, raising=False)
    states = []

    def observe() -> None:
        for name in VARS:
            for default in ("", "auto"):
                got, want = _env.getenv(name, default), os.environ.get(name, default)
                assert got == want, (name, default, got, want)
                states.append(got)

    observe()
    monkeypatch.setenv(VARS[0], "native")
    observe()
    os.environ[VARS[1]] = "é ü 1"  # non-ASCII survives the bytes round trip
    try:
        observe()
        os.environ[VARS[0]] = ""
        observe()
        del os.environ[VARS[0]]
        observe()
    finally:
        os.environ.pop(VARS[1], None)
    observe()
    assert {"native", "é ü 1", "", "auto"} <= set(states)  # every state above was seen


def _path(m: nn.Module, x: torch.Tensor) -> tuple[str, str]:
    with select.record_paths() as log:
        m(x)
    assert len(log) == 1
    return log[0].path, log[0].rule


def test_memo_follows_the_backend_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FUSED_RNN_BACKEND", raising=False)
    m = fused_rnn.RNN(8, 64)
    x = torch.randn(3, 2, 8)
    with torch.no_grad():
        first = _path(m, x)
        assert _path(m, x) == first  # the memo's answer is the policy's
        monkeypatch.setenv("FUSED_RNN_BACKEND", "native")
        assert _path(m, x) == ("native", "forced")
        monkeypatch.setenv("FUSED_RNN_BACKEND", "reference")
        assert _path(m, x) == ("reference", "forced")
        monkeypatch.delenv("FUSED_RNN_BACKEND")
        assert _path(m, x) == first


@pytest.mark.skipif(not fused_rnn._ext.has_kernel("CPU"), reason="the C++ CPU backend is not built here")
def test_memo_follows_T_across_the_short_sequence_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FUSED_RNN_BACKEND", raising=False)
    m = fused_rnn.RNN(64, 64)
    floor = policy.short_sequence_floor(64, training=False)
    with torch.no_grad():
        short = _path(m, torch.randn(floor - 1, 1, 64))
        long = _path(m, torch.randn(floor, 1, 64))
        assert short[1] == "short-sequence"
        assert long[1] != "short-sequence"
        assert _path(m, torch.randn(1, 1, 64)) == short
        assert _path(m, torch.randn(floor + 5, 1, 64)) == long


def test_memo_keys_training_threads_and_the_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    real = select._policy_decision

    def spy(*a):
        seen.append((a[7], torch.get_num_threads()))  # a[7]: training
        return real(*a)

    m = fused_rnn.RNN(8, 16)
    x = torch.randn(40, 3, 8)
    monkeypatch.setattr(select, "_policy_decision", spy)  # a new function: the memo's entries made before miss
    m(x)
    m(x)  # the same key: answered by the memo
    with torch.no_grad():
        m(x)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads > 1 else 2)
        m(x)
    finally:
        torch.set_num_threads(threads)
    m(x)  # back to the first key
    assert [s[0] for s in seen] == [True, False, True]
    assert seen[2][1] != threads


def test_clear_caches_forgets_the_memo(monkeypatch: pytest.MonkeyPatch) -> None:
    m = fused_rnn.RNN(8, 16)
    x = torch.randn(40, 3, 8)
    m(x)
    calls = []
    real = select._decide_cached
    m(x)
    monkeypatch.setattr(select, "_decide_cached", lambda *a: calls.append(a) or real(*a))
    m(x)  # the patched function is part of the key: asked
    m(x)  # then remembered
    assert len(calls) == 1
    select.clear_caches()
    m(x)
    assert len(calls) == 2


def test_memo_is_not_used_under_jit_trace_autotune_or_record_bptt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FUSED_RNN_BACKEND", raising=False)
    m = fused_rnn.RNN(8, 16)
    x = torch.randn(40, 3, 8)
    select.clear_caches()
    torch.jit.trace(m, x, check_trace=False)
    assert not select._CPU_MEMO  # the trace asked nothing of the memo (its ISA query would have been recorded)
    fused_rnn.set_autotune(True)
    try:
        with torch.no_grad():
            m(x)  # (measures native and cpu once: a small shape, milliseconds)
    finally:
        fused_rnn.set_autotune(None)
        fused_rnn.autotune.clear_cache()
    assert not select._CPU_MEMO
    with fused_rnn.diagnostics.record_bptt():
        m(x)
    assert not select._CPU_MEMO
    m(x)
    assert len(select._CPU_MEMO) == 1


def _pair(L: int = 2, bidirectional: bool = True) -> tuple[nn.RNN, fused_rnn.RNN]:
    torch.manual_seed(0)
    ref = nn.RNN(5, 7, L, bidirectional=bidirectional)
    ours = fused_rnn.RNN(5, 7, L, bidirectional=bidirectional, backend="native")
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _same(a, b) -> None:
    for u, v in zip(a, b):
        assert torch.equal(u, v)


def test_native_path_sees_functional_call_weights() -> None:
    ref, ours = _pair()
    x = torch.randn(4, 3, 5)
    ours(x)  # the flat list made from the module's own parameters
    new = {k: torch.randn_like(v) for k, v in ref.state_dict().items()}
    _same(functional_call(ours, new, (x,)), functional_call(ref, new, (x,)))
    _same(ours(x), ref(x))  # and back to the module's own parameters afterwards


def test_native_path_sees_replaced_and_deleted_parameters() -> None:
    ref, ours = _pair()
    x = torch.randn(4, 3, 5)
    ours(x)
    w = torch.randn(7, 7)
    for m in (ref, ours):
        m.weight_hh_l1 = nn.Parameter(w.clone())
    _same(ours(x), ref(x))
    for m in (ref, ours):
        del m.weight_hh_l0_reverse
        m.weight_hh_l0_reverse = w.clone()  # a plain tensor attribute now, not a registered parameter
    _same(ours(x), ref(x))
    assert "weight_hh_l0_reverse" not in ours._parameters


def test_forward_args_shortcut_passes_only_what_check_forward_args_passes() -> None:
    """RNN._forward_args_pass skips RNNBase.check_forward_args and _check_hx only where both would pass; anything else
    goes to them."""
    import random

    rng = random.Random(0)
    passed = raised = 0
    for _ in range(300):
        L, bi, bf = rng.choice([1, 2]), rng.random() < 0.5, rng.random() < 0.5
        m = fused_rnn.RNN(4, 6, L, bidirectional=bi, batch_first=bf)
        D = 2 if bi else 1
        B, T = rng.choice([1, 3]), rng.choice([1, 2])
        shape = [B, T, 4] if bf else [T, B, 4]
        k = rng.randrange(1, 4) if rng.random() < 0.4 else 0  # 1: size(-1), 2: dims, 3: dtype wrong
        if k == 1:
            shape[-1] = 5
        elif k == 2:
            shape = shape[1:]
        dtype = torch.float64 if k == 3 else torch.float32
        hshape = [L * D, B, 6]
        j = rng.randrange(1, 4) if rng.random() < 0.4 else 0  # hx: one dimension off by one
        if j:
            hshape[j - 1] += 1
        hdtype = torch.float64 if rng.random() < 0.15 else torch.float32
        x, h = torch.zeros(shape, dtype=dtype), torch.zeros(hshape, dtype=hdtype)
        try:
            m.check_forward_args(x, h, None)
            fused_rnn.modules._check_hx(x, h, None)
            ok = True
        except (RuntimeError, ValueError):
            ok = False
        if m._forward_args_pass(x, h, None):
            assert ok, (shape, hshape, dtype)
            passed += 1
        raised += not ok
    assert passed > 30 and raised > 30  # both sides were drawn


def test_a_subclass_check_forward_args_is_still_called() -> None:
    calls = []

    class Mine(fused_rnn.RNN):
        def check_forward_args(self, input, hidden, batch_sizes):  # noqa: A002 (RNNBase's names)
            calls.append(tuple(input.shape))
            return super().check_forward_args(input, hidden, batch_sizes)

    m = Mine(4, 6, backend="native")
    m(torch.randn(2, 3, 4))
    assert calls == [(2, 3, 4)]


# --- RNN.forward's short way (stop 36): an eager dense CPU call whose decision the memo holds runs from forward ---

def _long_way_calls(monkeypatch: pytest.MonkeyPatch) -> list:
    """Counts RNN._parse calls: every call that takes the long way parses its input; the short way does not."""
    calls: list = []
    real = fused_rnn.RNN._parse
    monkeypatch.setattr(fused_rnn.RNN, "_parse", lambda self, *a: calls.append(1) or real(self, *a))
    return calls


_SHORT_CASES = [  # (layers, bidirectional, batch_first, nonlinearity, hx given, training, dropout)
    (1, False, False, "tanh", False, False, 0.0),
    (1, False, True, "relu", True, False, 0.0),
    (2, True, False, "tanh", True, True, 0.0),
    (3, False, True, "tanh", False, True, 0.0),
    (2, False, False, "relu", False, True, 0.4),
    (2, True, True, "tanh", True, False, 0.4),
]


_SHORT_IDS = [f"L{c[0]}-{'bi' if c[1] else 'uni'}-{'bf' if c[2] else 'tm'}-{c[3]}-"
              f"{'hx' if c[4] else 'nohx'}-{'train' if c[5] else 'infer'}-p{c[6]}" for c in _SHORT_CASES]


@pytest.mark.parametrize("L,bi,bf,nl,give_hx,train,p", _SHORT_CASES, ids=_SHORT_IDS)
def test_short_way_equals_nn_rnn_bit_for_bit(monkeypatch: pytest.MonkeyPatch, L: int, bi: bool, bf: bool, nl: str,
                                              give_hx: bool, train: bool, p: float) -> None:
    """Forced native (the short way's native branch whatever the policy says here): outputs, h_n and every gradient
    equal nn.RNN's over repeated calls, and from the second call on no call parses its input (the short way ran)."""
    monkeypatch.delenv("FUSED_RNN_BACKEND", raising=False)
    torch.manual_seed(0)
    kw = dict(bidirectional=bi, batch_first=bf, nonlinearity=nl, dropout=p)
    ref = nn.RNN(5, 7, L, **kw)
    ours = fused_rnn.RNN(5, 7, L, backend="native", **kw)
    ours.load_state_dict(ref.state_dict())
    ref.train(train or p > 0)
    ours.train(train or p > 0)
    D = 2 if bi else 1
    select.clear_caches()
    parsed = _long_way_calls(monkeypatch)
    for call in range(3):
        x = torch.randn((3, 4, 5) if bf else (4, 3, 5), requires_grad=train)
        h = torch.randn(L * D, 3, 7, requires_grad=train) if give_hx else None
        outs = []
        for m in (ref, ours):
            torch.manual_seed(call)  # the same dropout masks
            out, h_n = m(x, h) if h is not None else m(x)
            outs.append((out, h_n))
            if train:
                (out.square().sum() + h_n.sum()).backward()
        _same(outs[0], outs[1])
        assert outs[1][0].stride() == outs[0][0].stride()
        if train:
            for (name, a), b in zip(ref.named_parameters(), ours.parameters(), strict=True):
                assert torch.equal(a.grad, b.grad), name
            ref.zero_grad()
            ours.zero_grad()
    assert len(parsed) == 1  # the first call filled the memo; the next two took the short way


def test_short_way_serves_unbatched_and_fused_decisions_from_the_memo(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unbatched input and a fused decision take the memo's answer too (no second policy question), then the long
    way's run: the results are those of a fresh module."""
    monkeypatch.delenv("FUSED_RNN_BACKEND", raising=False)
    asked = []
    real = select.choose_path
    monkeypatch.setattr(fused_rnn.modules, "choose_path", lambda *a, **k: asked.append(1) or real(*a, **k))
    for backend in ("native", "reference"):
        torch.manual_seed(0)
        m = fused_rnn.RNN(5, 7, 2, backend=backend)
        ref = nn.RNN(5, 7, 2)
        ref.load_state_dict(m.state_dict())
        asked.clear()
        with torch.no_grad():
            for T in (3, 3, 3):
                x = torch.randn(T, 5)
                got, want = m(x), ref(x)
                for g, w in zip(got, want):
                    torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
                assert got[0].shape == (T, 7) and got[1].shape == (2, 7)
        assert len(asked) == 1, backend


@pytest.mark.parametrize("bad", ["hx-dtype", "hx-batch", "hx-layers", "x-features", "x-dtype", "x-4d", "hx-2d"])
def test_short_way_leaves_bad_input_to_the_long_way(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    """After the memo is warm for this module, a bad call still raises what the long way raises (nn.RNN's type, and
    its message where the module's own checks give one), never a result."""
    monkeypatch.delenv("FUSED_RNN_BACKEND", raising=False)
    torch.manual_seed(0)
    ref = nn.RNN(5, 7, 2)
    ours = fused_rnn.RNN(5, 7, 2, backend="native")
    ours.load_state_dict(ref.state_dict())
    with torch.no_grad():
        ours(torch.randn(4, 3, 5))
        ours(torch.randn(4, 3, 5), torch.randn(2, 3, 7))  # the key warm
    parsed = _long_way_calls(monkeypatch)
    with torch.no_grad():
        ours(torch.randn(4, 3, 5), torch.randn(2, 3, 7))
    assert not parsed  # (the short way answered)
    x, h = torch.randn(4, 3, 5), torch.randn(2, 3, 7)
    if bad == "hx-dtype":
        h = h.double()
    elif bad == "hx-batch":
        h = torch.randn(2, 4, 7)
    elif bad == "hx-layers":
        h = torch.randn(1, 3, 7)
    elif bad == "x-features":
        x = torch.randn(4, 3, 6)
    elif bad == "x-dtype":
        x = x.double()
    elif bad == "x-4d":
        x = torch.randn(4, 3, 5, 1)
    elif bad == "hx-2d":
        h = torch.randn(3, 7)
    with pytest.raises((RuntimeError, ValueError)) as got:
        ours(x, h)
    with pytest.raises((RuntimeError, ValueError)) as want:
        ref(x, h)
    assert got.type is want.type
    if bad in ("hx-batch", "hx-layers", "x-features", "x-4d", "hx-2d"):
        assert str(got.value) == str(want.value)


def test_short_way_steps_aside_for_autocast_lengths_and_a_subclass_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FUSED_RNN_BACKEND", raising=False)
    calls = []

    class Mine(fused_rnn.RNN):
        def check_forward_args(self, input, hidden, batch_sizes):  # noqa: A002 (RNNBase's names)
            calls.append(tuple(input.shape))
            return super().check_forward_args(input, hidden, batch_sizes)

    torch.manual_seed(0)
    m = Mine(4, 6, backend="native")
    ref = nn.RNN(4, 6)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(2, 3, 4)
    select.clear_caches()
    for _ in range(3):
        m(x)
    assert calls == [(2, 3, 4)] * 3  # the overridden check ran on every call, memo or not
    parsed = _long_way_calls(monkeypatch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = m(x), ref(x)
    assert got[0].dtype == want[0].dtype == torch.bfloat16
    _same(got, want)
    m(x, lengths=torch.tensor([2, 1, 2]))
    assert len(parsed) == 2


def test_autocast_asks_the_policy_in_its_own_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    """The memo's fp32 answer is not autocast's: a call under torch.autocast asks the policy about bf16."""
    monkeypatch.delenv("FUSED_RNN_BACKEND", raising=False)
    asked = []
    real = select._policy_decision
    monkeypatch.setattr(select, "_policy_decision", lambda *a: asked.append(a[2]) or real(*a))
    m = fused_rnn.RNN(8, 16)
    x = torch.randn(40, 3, 8)
    with torch.no_grad():
        m(x)
        m(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            m(x)
    assert asked == [torch.float32, torch.bfloat16]


def test_short_way_makes_hx_on_the_input_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """hx=None: the zeros are made on the input's device, not torch's default device (as nn.RNN makes them)."""
    monkeypatch.delenv("FUSED_RNN_BACKEND", raising=False)
    ref, ours = _pair(L=1, bidirectional=False)
    x = torch.randn(4, 3, 5)
    select.clear_caches()
    ours(x)
    parsed = _long_way_calls(monkeypatch)
    with torch.device("meta"):
        got, want = ours(x), ref(x)
    assert not parsed  # the short way ran
    assert got[1].device == x.device
    _same(got, want)
