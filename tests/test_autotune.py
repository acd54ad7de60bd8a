"""Opt-in autotuning (fused_rnn/autotune.py): the switch, the key (T bucketed), one measurement per key under
concurrent callers, no side effects (RNG stream, .grad, tensor hooks), no timing under torch.compile / torch.export /
saved-tensor hooks, only verified candidates, and -- switched off -- exactly the static policy's behaviour."""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterator

import pytest
import torch

import fused_rnn
from fused_rnn import _ext, autotune, policy
from fused_rnn.autotune import TuneKey
from fused_rnn.backends import cuda as cuda_backend
from fused_rnn.backends import select

pytestmark = pytest.mark.skipif(not _ext.has_kernel("CPU"), reason="autotuning on the CPU times native against the "
                                "C++ cpu backend, which is not built here")


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for v in ("FUSED_RNN_BACKEND", "FUSED_RNN_AUTOTUNE", "FUSED_RNN_CUDA_TIER", "FUSED_RNN_TRITON_TIER"):
        monkeypatch.delenv(v, raising=False)
    autotune.set_autotune(None)
    autotune.clear_cache()
    yield
    autotune.set_autotune(None)
    autotune.clear_cache()


class FakeMeasure:
    """Stands in for autotune._measure: counts calls, optionally sleeps, and says ``winner`` is 2× faster."""

    def __init__(self, winner: str = "other", sleep_s: float = 0.0) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.winner, self.sleep_s = winner, sleep_s
        self.lock = threading.Lock()

    def __call__(self, module, call, amp_dtype, training, cands):
        with self.lock:
            self.calls.append(tuple(c.path for c in cands))
        time.sleep(self.sleep_s)
        return tuple(policy.Measured(c.path, c.tier, 1.0 if c.path == self.winner else 2.0, 1.0, 3, 1)
                     for c in cands)


def _static(rnn: fused_rnn.RNN, x: torch.Tensor) -> policy.Decision:
    """The static policy's decision for rnn(x) in the current grad mode (autotuning off while asked)."""
    prev = autotune._SETTING
    autotune.set_autotune(False)
    try:
        return fused_rnn.explain(rnn, x).decision
    finally:
        autotune._SETTING = prev


def _other(path: str) -> str:
    return "cpu" if path == "native" else "native"


# ----------------------------------------------------------------------------------------------------------------
# The switch

@pytest.mark.parametrize(("value", "want"), [("1", True), ("on", True), ("TRUE", True), ("0", False), ("off", False),
                                             ("", False)], ids=["1", "on", "TRUE", "0", "off", "empty"])
def test_environment_switch(value: str, want: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUSED_RNN_AUTOTUNE", value)
    assert autotune.autotune_enabled() is want
    autotune.set_autotune(not want)  # the function wins over the environment
    assert fused_rnn.autotune_enabled() is (not want)
    autotune.set_autotune(None)
    assert autotune.autotune_enabled() is want


def test_bad_switch_values_are_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUSED_RNN_AUTOTUNE", "yes please")
    with pytest.raises(ValueError, match="FUSED_RNN_AUTOTUNE='yes please'"):
        autotune.autotune_enabled()
    with pytest.raises(TypeError, match="True, False or None"):
        fused_rnn.set_autotune(1)  # type: ignore[arg-type]


def test_environment_variable_turns_it_on_for_the_module(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeMeasure()
    monkeypatch.setattr(autotune, "_measure", fake)
    monkeypatch.setenv("FUSED_RNN_AUTOTUNE", "1")
    rnn = fused_rnn.RNN(3, 8)
    with torch.no_grad():
        rnn(torch.randn(5, 2, 3))
    assert len(fake.calls) == 1


# ----------------------------------------------------------------------------------------------------------------
# Off: nothing changes

def test_off_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Switched off (the default): no measurement, the recorded decisions are the static policy's, and the results
    equal bit for bit those of a module forced onto the path the static policy names -- main's behaviour."""
    monkeypatch.setattr(autotune, "_measure", lambda *a: pytest.fail("measured while autotuning is off"))
    for H, B in ((8, 1), (64, 4), (300, 2)):  # off-grid, a measured region, between grid points
        rnn = fused_rnn.RNN(5, H, num_layers=2)
        x = torch.randn(7, B, 5, requires_grad=True)
        for grad in (False, True):
            with torch.set_grad_enabled(grad):
                static = _static(rnn, x)
                with select.record_paths() as log:
                    out, h_n = rnn(x)
            assert [(d.path, d.tier, d.rule) for d in log] == [(static.path, static.tier, static.rule)]
            assert static.rule != "autotune"
            twin = fused_rnn.RNN(5, H, num_layers=2, backend=static.path)
            twin.load_state_dict(rnn.state_dict())
            with torch.set_grad_enabled(grad):
                out2, h2 = twin(x)
            assert torch.equal(out, out2) and torch.equal(h_n, h2)
    # on, then off again: the cached measurement is no longer used
    fake = FakeMeasure()
    monkeypatch.setattr(autotune, "_measure", fake)
    rnn = fused_rnn.RNN(5, 8)
    x = torch.randn(7, 1, 5)
    with torch.no_grad():
        static = _static(rnn, x)
        fake.winner = _other(static.path)
        autotune.set_autotune(True)
        with select.record_paths() as log:
            rnn(x)
        autotune.set_autotune(False)
        with select.record_paths() as log_off:
            rnn(x)
    assert log[0].rule == "autotune" and log[0].path == fake.winner
    assert (log_off[0].path, log_off[0].rule) == (static.path, static.rule)


# ----------------------------------------------------------------------------------------------------------------
# The key

@pytest.mark.parametrize(("T", "bucket"), [(1, 1), (2, 2), (3, 4), (64, 64), (65, 128), (128, 128), (129, 256),
                                           (1000, 1024)], ids=lambda v: str(v))
def test_t_bucket(T: int, bucket: int) -> None:
    assert autotune.t_bucket(T) == bucket


def test_key_fields() -> None:
    rnn = fused_rnn.RNN(5, 12, num_layers=3, bidirectional=True, nonlinearity="relu", bias=False, batch_first=True)
    k = autotune.key_of(rnn, torch.device("cpu"), torch.bfloat16, 4, 100, True, "lengths")
    assert k == TuneKey("cpu", "bf16", 4, 12, 5, 3, 2, "fwd+bwd", torch.get_num_threads(), 128, "relu", False, True,
                        "lengths", (False, False))
    assert "T 65..128" in str(k) and "B=4 H=12 I=5" in str(k)


def test_one_measurement_per_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """T in one power-of-two bucket shares a measurement; a new bucket, mode, B, dtype, thread count or input form
    is a new key; a cached key is never measured again."""
    fake = FakeMeasure()
    monkeypatch.setattr(autotune, "_measure", fake)
    autotune.set_autotune(True)
    rnn = fused_rnn.RNN(3, 8)
    real = autotune.cache_info()["measurements"]

    def call(T: int, B: int = 2, grad: bool = False, dtype=torch.float32, lengths=None) -> None:
        x = torch.randn(T, B, 3, dtype=dtype)
        with torch.set_grad_enabled(grad):
            rnn.to(dtype)(x, lengths=lengths)

    call(65)
    call(100)
    call(128)
    assert len(fake.calls) == 1
    call(129)  # next bucket
    assert len(fake.calls) == 2
    call(100, grad=True)  # mode
    assert len(fake.calls) == 3
    call(100, B=3)  # batch
    assert len(fake.calls) == 4
    call(100, lengths=torch.tensor([100, 50]))  # input form
    assert len(fake.calls) == 5
    call(100, dtype=torch.float64)  # dtype
    assert len(fake.calls) == 6
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if n != 1 else 2)
        call(100)  # intra-op threads
    finally:
        torch.set_num_threads(n)
    assert len(fake.calls) == 7
    call(70)
    call(100, grad=True)
    assert len(fake.calls) == 7
    assert autotune.cache_info() == {"keys": 7, "pending": 0, "measurements": real}  # the fake does not count


# ----------------------------------------------------------------------------------------------------------------
# The lock

@pytest.mark.timeout(60)
def test_concurrent_callers_one_measurement_no_deadlock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight threads call a new key at once (and four more another key): one measurement per key, every caller gets
    the measured path (its results equal the winner's bit for bit), all threads finish."""
    fake = FakeMeasure(sleep_s=0.3)
    monkeypatch.setattr(autotune, "_measure", fake)
    autotune.set_autotune(True)
    rnn = fused_rnn.RNN(3, 8)
    xa, xb = torch.randn(9, 2, 3), torch.randn(9, 3, 3)
    with torch.no_grad():
        fake.winner = _other(_static(rnn, xa).path)
        assert _other(_static(rnn, xb).path) == fake.winner
    results: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(12)

    def worker(i: int) -> None:
        try:
            x = xa if i < 8 else xb
            start.wait(timeout=10)
            with torch.no_grad():
                results[i] = rnn(x)[0]
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "a caller is stuck"
    assert not errors, errors
    assert sorted(len(c) for c in fake.calls) == [2, 2]  # one measurement per key, two candidates each
    twin = fused_rnn.RNN(3, 8, backend=fake.winner)
    twin.load_state_dict(rnn.state_dict())
    with torch.no_grad():
        wa, wb = twin(xa)[0], twin(xb)[0]
    for i, out in results.items():
        assert torch.equal(out, wa if i < 8 else wb), i


@pytest.mark.timeout(60)
def test_a_failing_measurement_warns_and_keeps_the_static_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a):
        time.sleep(0.2)
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(autotune, "_measure", boom)
    autotune.set_autotune(True)
    rnn = fused_rnn.RNN(3, 8)
    x = torch.randn(5, 2, 3)
    with torch.no_grad():
        static = _static(rnn, x)
    twin = fused_rnn.RNN(3, 8, backend=static.path)
    twin.load_state_dict(rnn.state_dict())
    with torch.no_grad():
        want = twin(x)[0]
    seen: list[torch.Tensor] = []

    def waiter() -> None:
        with torch.no_grad():
            seen.append(rnn(x)[0])

    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        t = threading.Thread(target=waiter)
        t.start()
        with torch.no_grad():
            out = rnn(x)[0]
        t.join(timeout=20)
    assert not t.is_alive(), "a caller waits forever on a failed measurement"
    assert len(seen) == 1 and torch.equal(out, want) and torch.equal(seen[0], want)  # the static path ran
    assert sum("autotuning failed" in str(m.message) for m in w) == 1
    with torch.no_grad():
        e = fused_rnn.explain(rnn, x)
    assert e.autotune.state == "failed" and "out of memory (simulated)" in e.autotune.detail


# ----------------------------------------------------------------------------------------------------------------
# No side effects (real measurements)

def _dropout_module() -> fused_rnn.RNN:
    torch.manual_seed(1)
    return fused_rnn.RNN(4, 16, num_layers=2, dropout=0.5).train()


def test_rng_stream_after_a_tuned_call_is_untouched() -> None:
    """Dropout between layers draws from the global RNG. A tuned first call (which times both candidates, each
    drawing dropout masks) leaves the RNG where a plain call of the chosen path leaves it, and gives that call's
    results bit for bit."""
    rnn = _dropout_module()
    x = torch.randn(12, 3, 4, requires_grad=True)
    autotune.set_autotune(True)
    torch.manual_seed(123)
    with select.record_paths() as log:
        out, h_n = rnn(x)
    state_tuned = torch.get_rng_state()
    d = log[0]
    assert d.rule == "autotune" and {m.path for m in d.measured} == {"native", "cpu"}

    autotune.set_autotune(False)
    twin = fused_rnn.RNN(4, 16, num_layers=2, dropout=0.5, backend=d.path).train()
    twin.load_state_dict(rnn.state_dict())
    torch.manual_seed(123)
    out2, h2 = twin(x)
    assert torch.equal(torch.get_rng_state(), state_tuned)
    assert torch.equal(out, out2) and torch.equal(h_n, h2)


def test_grad_and_hooks_untouched_by_the_measurement() -> None:
    """The measurement runs forward + backward (training call) on detached aliases: the parameters' .grad (set or
    None), their tensor hooks, the input's .grad and the caller's graph are untouched; the call's own backward then
    gives the gradients of the chosen path."""
    rnn = _dropout_module().eval()  # no dropout: the gradients below are deterministic
    x = torch.randn(10, 2, 4, requires_grad=True)
    params = dict(rnn.named_parameters())
    preset = {n: torch.full_like(p, 7.0) for n, p in params.items() if "l0" in n}
    for n, g in preset.items():
        params[n].grad = g.clone()
    fired: list[str] = []
    handles = [p.register_hook(lambda g, n=n: fired.append(n)) for n, p in params.items()]
    autotune.set_autotune(True)
    with select.record_paths() as log:
        out, h_n = rnn(x)
    assert log[0].rule == "autotune"
    assert fired == [], "a parameter hook fired during the measurement"
    for n, p in params.items():
        if n in preset:
            assert torch.equal(p.grad, preset[n]), n
        else:
            assert p.grad is None, n
    assert x.grad is None
    (out.sum() + h_n.sum()).backward()
    assert sorted(fired) == sorted(params)  # the user's own backward reaches every parameter once
    for h in handles:
        h.remove()
    twin = fused_rnn.RNN(4, 16, num_layers=2, backend=log[0].path).eval()
    twin.load_state_dict(rnn.state_dict())
    x2 = x.detach().requires_grad_(True)
    o2, h2 = twin(x2)
    (o2.sum() + h2.sum()).backward()
    assert torch.equal(x.grad, x2.grad)
    for n, p in twin.named_parameters():
        want = p.grad + (preset[n] if n in preset else 0)
        assert torch.equal(params[n].grad, want), n


def test_explain_reports_the_measurement() -> None:
    rnn = fused_rnn.RNN(4, 16)
    x = torch.randn(20, 1, 4)
    autotune.set_autotune(True)
    with torch.no_grad():
        before = fused_rnn.explain(rnn, x)
        rnn(x)
        after = fused_rnn.explain(rnn, x)
    assert before.autotune.state == "pending" and "times native and cpu" in before.autotune.detail
    assert after.autotune.state == "measured" and after.rule == "autotune"
    assert {m.path for m in after.autotune.measured} == {"native", "cpu"}
    assert all(m.median_ms > 0 and m.rounds >= autotune.MIN_ROUNDS for m in after.autotune.measured)
    assert after.path == min(after.autotune.measured, key=lambda m: m.median_ms).path or \
        after.path == after.decision.static.path  # the static choice is kept within SWITCH of the fastest
    text = str(after)
    for m in after.autotune.measured:
        assert m.name in text
    assert "autotuned in this process" in after.summary and "the static policy said" in after.summary


# ----------------------------------------------------------------------------------------------------------------
# Where no timing happens

@pytest.fixture
def no_measuring(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(autotune, "_measure", lambda *a: pytest.fail("measured where no timing may happen"))
    autotune.set_autotune(True)


def test_no_timing_under_torch_compile(no_measuring: None) -> None:
    torch._dynamo.reset()
    try:
        rnn = fused_rnn.RNN(3, 8)
        compiled = torch.compile(rnn, fullgraph=True, backend="eager")
        x = torch.randn(6, 2, 3)
        out, _ = compiled(x)
        twin = fused_rnn.RNN(3, 8, backend="cpu")
        twin.load_state_dict(rnn.state_dict())
        torch.testing.assert_close(out, twin(x)[0], rtol=0, atol=0)  # the fused path, as without autotuning
    finally:
        torch._dynamo.reset()
    assert autotune.cache_info()["keys"] == 0


def test_no_timing_under_torch_export(no_measuring: None) -> None:
    rnn = fused_rnn.RNN(3, 8)
    ep = torch.export.export(rnn, (torch.randn(6, 2, 3),))
    assert "fused_rnn.elman_fwd" in str(ep.graph)
    assert autotune.cache_info()["keys"] == 0


def test_no_timing_under_saved_tensor_hooks_or_checkpointing(no_measuring: None) -> None:
    """Non-reentrant activation checkpointing runs the forward under saved-tensor hooks and again in backward: a
    measurement inside would add tensors to its bookkeeping. Nothing is measured, and checkpointing works."""
    from torch.utils.checkpoint import checkpoint

    rnn = fused_rnn.RNN(3, 8)
    x = torch.randn(6, 2, 3, requires_grad=True)
    out = checkpoint(lambda t: rnn(t)[0], x, use_reentrant=False)
    out.sum().backward()
    assert x.grad is not None
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        rnn(x)
    e = None
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        e = fused_rnn.explain(rnn, x)
    assert e.autotune.state == "blocked" and "saved-tensor hooks" in e.autotune.detail


def test_capture_and_nesting_block_measurement(monkeypatch: pytest.MonkeyPatch) -> None:
    rnn = fused_rnn.RNN(3, 8)
    x = torch.randn(6, 2, 3)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert "CUDA-graph capture" in autotune.blocked(rnn, (x,), torch.device("cuda"))
    assert autotune.blocked(rnn, (x,), torch.device("cpu")) == ""  # capture concerns CUDA tensors only
    autotune._LOCAL.measuring = True
    try:
        assert "inside another" in autotune.blocked(rnn, (x,), torch.device("cpu"))
    finally:
        autotune._LOCAL.measuring = False
    parametrized = fused_rnn.RNN(3, 8)
    torch.nn.utils.parametrizations.weight_norm(parametrized, "weight_hh_l0")
    assert "parametrizations" in autotune.blocked(parametrized, (x,), torch.device("cpu"))


def test_forced_paths_are_not_tuned(no_measuring: None, monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(6, 2, 3)
    for backend in ("native", "cpu", "reference"):
        fused_rnn.RNN(3, 8, backend=backend)(x)
    monkeypatch.setenv("FUSED_RNN_BACKEND", "native")
    fused_rnn.RNN(3, 8)(x)
    monkeypatch.delenv("FUSED_RNN_BACKEND")
    from fused_rnn import diagnostics

    with diagnostics.record_bptt():
        out, _ = fused_rnn.RNN(3, 8)(x.requires_grad_(True))
        out.sum().backward()
    assert autotune.cache_info()["keys"] == 0


# ----------------------------------------------------------------------------------------------------------------
# Candidates: only verified ones

def _fake_cuda(monkeypatch: pytest.MonkeyPatch, cap: tuple[int, int]) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: cap)
    monkeypatch.setattr(select, "_capability", lambda index: cap)
    monkeypatch.setattr(cuda_backend, "available", lambda: (True, ""))
    monkeypatch.setattr(cuda_backend, "compiled_tiers", lambda: tuple(cuda_backend.TIERS))


def _static_cuda(rule: str = "measured-loss", path: str = "native", tier: str = "") -> policy.Decision:
    return policy.Decision(path, tier, rule, "test")


def test_cpu_candidates() -> None:
    cands, why = autotune.candidates(_static_cuda(), torch.device("cpu"), torch.float32, 4, 64)
    assert [c.path for c in cands] == ["native", "cpu"] and why == ""


@pytest.mark.parametrize(("cap", "dtype", "rule", "want", "why"), [
    ((8, 0), torch.float32, "unverified-gpu", ["native"], "no fused tier is verified on sm_80"),
    ((9, 0), torch.float64, "fp64-gpu", ["native"], "fp64"),
    ((9, 0), torch.bfloat16, "measured-loss", ["native", "cuda"], ""),
    ((9, 0), torch.float32, "precision", ["cuda"], "test"),
], ids=["unverified-gpu", "fp64", "verified-bf16", "tf32-mismatch"])
def test_cuda_candidates_are_verified_only(monkeypatch: pytest.MonkeyPatch, cap, dtype, rule, want, why) -> None:
    _fake_cuda(monkeypatch, cap)
    cands, got_why = autotune.candidates(_static_cuda(rule), torch.device("cuda", 0), dtype, 16, 256)
    assert [c.path for c in cands] == want
    assert why in got_why
    for c in cands:
        if c.path == "cuda":
            assert c.tier in select.GPU_VERIFIED["cuda"]


def test_unverified_tier_is_never_a_candidate(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_cuda(monkeypatch, (9, 0))
    monkeypatch.setattr(cuda_backend, "pick_tier", lambda H, B, dtype, device: "batch_tiled")
    cands, _ = autotune.candidates(_static_cuda(), torch.device("cuda", 0), torch.bfloat16, 16, 256)
    assert all(c.tier in select.GPU_VERIFIED["cuda"] for c in cands if c.path == "cuda")


# ----------------------------------------------------------------------------------------------------------------
# The winner rule

@pytest.mark.parametrize(("native_ms", "cpu_ms", "static", "want"), [
    (10.0, 1.0, "native", "cpu"),     # clearly faster: replaces the static choice
    (1.0, 10.0, "cpu", "native"),
    (1.0, 1.03, "cpu", "cpu"),        # within SWITCH of the fastest: the static choice stays
    (1.03, 1.0, "native", "native"),
    (1.0, 1.2, "cpu", "native"),
], ids=["switch-to-cpu", "switch-to-native", "keep-cpu", "keep-native", "switch-at-20pct"])
def test_winner_rule(native_ms: float, cpu_ms: float, static: str, want: str) -> None:
    m = (policy.Measured("native", "", native_ms, native_ms, 3, 1), policy.Measured("cpu", "", cpu_ms, cpu_ms, 3, 1))
    key = autotune.key_of(fused_rnn.RNN(3, 8), torch.device("cpu"), torch.float32, 1, 10, False, "padded")
    d = autotune._decide(m, policy.Decision(static, "", "measured-loss", "r"), key)
    assert d.path == want and d.rule == "autotune" and d.static.path == static
    assert [x.path for x in d.measured] == sorted(["native", "cpu"], key=lambda p: native_ms if p == "native"
                                                                                 else cpu_ms)


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no fork on this platform")
def test_a_child_forked_during_a_measurement_does_not_deadlock(monkeypatch: pytest.MonkeyPatch) -> None:
    """fork() while another thread measures (a DataLoader worker, say): the child gets fresh locks and no pending
    entry, so its own call of that key measures instead of waiting forever."""
    import os

    started = threading.Event()
    fake = FakeMeasure()

    def slow(*a):
        out = fake(*a)  # counted (its lock released) before the fork can happen
        started.set()
        time.sleep(1.0)
        return out

    monkeypatch.setattr(autotune, "_measure", slow)
    autotune.set_autotune(True)
    rnn = fused_rnn.RNN(3, 8)
    x = torch.randn(5, 2, 3)

    def first() -> None:
        with torch.no_grad():
            rnn(x)

    t = threading.Thread(target=first)
    t.start()
    assert started.wait(10)
    pid = os.fork()
    if pid == 0:  # the child: the same key must not wait on the parent's measurement
        try:
            torch.set_num_threads(1)  # as DataLoader workers do (OpenMP's pool does not survive a fork)
            n0 = len(fake.calls)
            with torch.no_grad():
                rnn(x)
            os._exit(0 if len(fake.calls) == n0 + 1 else 3)
        except BaseException:
            os._exit(4)
    t.join(timeout=20)
    deadline = time.monotonic() + 20
    status = None
    while time.monotonic() < deadline:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = st
            break
        time.sleep(0.05)
    if status is None:  # the child is stuck: end it (it is ours) so no orphan outlives the test
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child waited forever on the parent's measurement")
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
