"""The C++ CPU backend's threads: the hidden split (workers own columns of W_hh, computed step by step), the batch
split, nesting inside another parallel region, one thread, concurrent callers on a busy machine, every ISA -- and
the promise that ties them together: the own loops give bitwise the same Y, h_n, dA and dh0 for every path and
thread count, and across the FMA builds (csrc/cpu/elman_cpu_kernels.inc, "Determinism"). Also the fp32 tanh at its
extremes, bitwise the same in every build.

Shapes: T time, B batch, H hidden. Every test runs under a timeout: a split that could deadlock fails, it does not
hang the suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
import torch
from cpu_common import (  # tests/cpu_common.py
    ISAS,
    OWN_PATHS,
    built,
    contract_inputs,
    cpu_vendor,
    forced,
    last_run,
    num_threads,
)

from fused_rnn.backends import cpu as cpu_backend
from fused_rnn.backends import reference

Tensor = torch.Tensor
pytestmark = pytest.mark.skipif(not built(), reason="test_cpu_backend.py::test_extension_is_built reports it")

MANY_THREADS = 2 * (os.cpu_count() or 1) + 1  # more threads than cores
FMA_ISAS = ("avx2", "avx512")  # the builds whose matvec uses fused multiply-adds


_inputs = contract_inputs  # (T, B, H, seed, lengths, dtype=fp32)


def _run(args, reverse: bool, act: str) -> tuple[tuple[Tensor, ...], list[dict[str, str]]]:
    """Forward, then backward from the forward's Y: ((Y, h_n, dA, dh0), [what each ran])."""
    P, h0, w, L, dY, dh = args
    Y, hn = cpu_backend.forward(P, h0, w, L, reverse, act)
    ran = [last_run()]
    dA, dh0 = cpu_backend.backward(dY, dh, Y, w, L, reverse, act)
    ran.append(last_run())
    return (Y, hn, dA, dh0), ran


def _assert_bitwise(name: str, got: tuple[Tensor, ...], want: tuple[Tensor, ...]) -> None:
    for what, a, b in zip(("Y", "h_n", "dA", "dh0"), got, want, strict=True):
        if not torch.equal(a, b):
            diff = (a.double() - b.double()).abs().nan_to_num(nan=float("inf")).max()
            pytest.fail(f"{name}: {what} differs (max |diff| {float(diff):.3g})")


def _assert_close_ref(name: str, got: tuple[Tensor, ...], args, reverse: bool, act: str) -> None:
    """Against the reference backend (the oracle), at the contract tests' fp32 tolerance."""
    P, h0, w, L, dY, dh = args
    Y_ref, hn_ref = reference.forward(P, h0, w, L, reverse, act)
    dA_ref, dh0_ref = reference.backward(dY, dh, got[0], w, L, reverse, act)
    for what, a, b in zip(("Y", "h_n", "dA", "dh0"), got, (Y_ref, hn_ref, dA_ref, dh0_ref), strict=True):
        scale = max(1.0, float(b.abs().max()))
        torch.testing.assert_close(a, b, atol=2e-5 * scale, rtol=0, msg=lambda m, what=what: f"{name} {what}: {m}")


# ---- odd sizes: every ISA against the reference, every ISA x path x thread count bitwise ------------------------
# (T, B, H, lengths, reverse, act): H 1, 17, 100, 500, 1000 and B 1, 3, 5, 17, with lengths, reverse, tanh and relu.
ODD = [
    (5, 1, 1, False, False, "tanh"),
    (6, 3, 17, True, True, "relu"),
    (4, 5, 100, True, False, "tanh"),
    (3, 17, 100, False, True, "tanh"),
    (3, 1, 500, False, False, "tanh"),
    (3, 5, 500, True, True, "tanh"),
    (2, 17, 500, True, False, "relu"),
    (2, 1, 1000, False, True, "tanh"),
    (2, 3, 1000, True, False, "tanh"),
]
ODD_IDS = [f"T{T}-B{B}-H{H}{'-len' if lk else ''}{'-rev' if rv else ''}-{a}" for T, B, H, lk, rv, a in ODD]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("T,B,H,lengths,reverse,act", ODD, ids=ODD_IDS)
def test_odd_sizes_every_isa_path_and_thread_count(T: int, B: int, H: int, lengths: bool, reverse: bool,
                                                   act: str) -> None:
    """Each ISA serially on one thread against the reference; then every (own path, threads in 1, 2 and more than
    the cores) bitwise equal to it; and the FMA builds (AVX2, AVX-512) bitwise equal to each other -- the same
    fused multiply-adds in the same order per output, and the same tanh operations (a compiler contraction, or a
    different order in one build, would show here)."""
    args = _inputs(T, B, H, seed=T * 7919 + B * 104729 + H, lengths=lengths)
    wants = {}
    for isa in ISAS:
        with num_threads(1), forced(isa=isa, path="serial"):
            wants[isa], _ = _run(args, reverse, act)
        _assert_close_ref(f"{isa} serial", wants[isa], args, reverse, act)
    fma = [isa for isa in ISAS if isa in FMA_ISAS]
    for isa in fma[1:]:
        _assert_bitwise(f"{isa} vs {fma[0]}", wants[isa], wants[fma[0]])
    for threads in (1, 2, MANY_THREADS):
        with num_threads(threads):
            for isa in ISAS:
                for path in OWN_PATHS:
                    with forced(isa=isa, path=path):
                        got, ran = _run(args, reverse, act)
                    assert all(r["isa"] == isa for r in ran), ran
                    _assert_bitwise(f"{isa} {path} threads={threads} ran {ran}", got, wants[isa])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("isa", ISAS)
def test_every_isa_against_reference(isa: str) -> None:
    """Each instruction set on its own, with the automatic path, against the reference: a case with a full register
    tile and partial tiles, a partial panel, lengths and reverse, in fp32 and fp64."""
    for dtype in (torch.float32, torch.float64):
        for reverse, act in ((False, "tanh"), (True, "relu")):
            args = _inputs(9, 7, 77, seed=5, lengths=True, dtype=dtype)
            with forced(isa=isa):
                got, ran = _run(args, reverse, act)
            assert ran[0]["isa"] == ran[1]["isa"] == isa
            P, h0, w, L, dY, dh = args
            tol = 2e-5 if dtype == torch.float32 else 1e-12
            Y_ref, hn_ref = reference.forward(P, h0, w, L, reverse, act)
            dA_ref, dh0_ref = reference.backward(dY, dh, Y_ref, w, L, reverse, act)
            for what, a, b in zip(("Y", "h_n", "dA", "dh0"), got, (Y_ref, hn_ref, dA_ref, dh0_ref), strict=True):
                torch.testing.assert_close(a, b, atol=tol * max(1.0, float(b.abs().max())), rtol=0,
                                           msg=lambda m, what=what, dt=dtype: f"{isa} {dt} {what}: {m}")


# ---- the splits really run where they can, and one thread runs serially ------------------------------------------
@pytest.mark.timeout(120)
@pytest.mark.parametrize("threads", [2, MANY_THREADS], ids=["2-threads", "more-threads-than-cores"])
@pytest.mark.parametrize("path", ["hidden", "batch"])
def test_split_uses_the_threads(path: str, threads: int) -> None:
    """With 2 (or more than the cores') threads and a shape that gives each worker something to do (H = 300: 5+
    panels; B = 17: 3+ row tiles), the split runs on 2 (3+) workers -- at least once in a few tries: on a loaded
    machine a worker that starts late is left out by design, and the call runs on fewer -- and the results are
    bitwise those of one thread."""
    args = _inputs(6, 17, 300, seed=1, lengths=True)
    with num_threads(1), forced(path="serial"):
        want, _ = _run(args, True, "tanh")
    need = min(threads, 3)
    seen = {0}
    with num_threads(threads), forced(path=path):
        for _ in range(20):
            got, ran = _run(args, True, "tanh")
            _assert_bitwise(f"{path} ran {ran}", got, want)
            assert all(r["path"] == path for r in ran), ran
            seen |= {int(r["threads"]) for r in ran}
            if max(seen) >= need:
                break
    assert max(seen) >= need, f"the {path} split never ran on {need}+ workers with {threads} threads: {seen}"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("path", ["auto", "hidden", "batch"])
def test_one_thread_runs_serially(path: str) -> None:
    """torch.set_num_threads(1): whatever path is asked for, the call runs on one worker with the same bits."""
    args = _inputs(5, 9, 200, seed=2, lengths=False)
    with num_threads(2), forced(path=path):
        want, _ = _run(args, False, "tanh")
    with num_threads(1), forced(path=path):
        got, ran = _run(args, False, "tanh")
    assert all(r["path"] == "serial" and r["threads"] == "1" for r in ran), ran
    _assert_bitwise("one thread", got, want)


@pytest.mark.timeout(60)
def test_late_worker_is_left_out() -> None:
    """A hidden-split worker that arrives after the gate has closed does nothing, and the others never wait for it:
    the test hook "hidden-late" makes the last worker of each call start only once the gate has timed out. The call
    completes on fewer workers with bitwise the same results (this is what keeps a shared or busy thread pool from
    deadlocking a split)."""
    args = _inputs(4, 2, 300, seed=3, lengths=False)
    with num_threads(1):
        want, _ = _run(args, False, "tanh")
    with num_threads(2), forced(path="hidden-late"):
        got, ran = _run(args, False, "tanh")
    assert all(r["path"] == "hidden" and r["threads"] == "1" for r in ran), ran
    _assert_bitwise("late worker", got, want)


@pytest.mark.timeout(60)
def test_descheduled_worker_is_taken_over() -> None:
    """A hidden-split worker that stops while it holds a panel (the test hook "hidden-stall": worker 1 sleeps 1 ms in
    round 3, as a descheduled thread would) makes the other wait past 250 µs; that one then runs the call alone and
    the sleeper follows the rounds when it wakes. The results stay bitwise those of one thread, forward and
    backward."""
    args = _inputs(40, 2, 300, seed=6, lengths=False)
    with num_threads(1):
        want, _ = _run(args, True, "tanh")
    seen = set()
    with num_threads(2), forced(path="hidden-stall"):
        # up to 60 calls: on a machine loaded beyond its cores (a CUDA build beside this suite on 2 cores) the waiting
        # worker can itself be descheduled through the sleeper's whole 1 ms, and then no round waits; 20 calls once
        # saw no takeover that way (stop 34); a quiet machine takes over in the first
        for _ in range(60):
            got, ran = _run(args, True, "tanh")
            _assert_bitwise(f"stalled worker, ran {ran}", got, want)
            seen |= {int(r.get("takeover", "0")) for r in ran if r["threads"] == "2"}
            if max(seen) >= 1:
                break
    assert max(seen) >= 1, f"no call was taken over: {seen}"


@pytest.mark.timeout(120)
def test_taken_over_call_is_handed_back() -> None:
    """The takeover is a lease (1 ms, doubling per takeover of the call), not the rest of the call: in a call long
    enough to outlast it, the stalled worker claims panels again after following the holder ("rejoin=" in
    cpu_last_run; a call left to one worker for good ran up to 3x slower at B=1 H=1024 on the Emerald Rapids VM,
    where one core's L2 holds only half of W_hh). Bitwise the one-thread results all the same."""
    args = _inputs(3000, 1, 300, seed=7, lengths=False)
    with num_threads(1):
        want, _ = _run(args, True, "tanh")
    seen = []
    with num_threads(2), forced(path="hidden-stall"):
        # up to 60 calls: on a machine loaded beyond its cores (a CUDA build beside this suite on 2 cores) the waiting
        # worker can itself be descheduled through the sleeper's whole 1 ms, and then no round waits; 20 calls once
        # saw no takeover that way (stop 34); a quiet machine takes over in the first
        for _ in range(60):
            got, ran = _run(args, True, "tanh")
            _assert_bitwise(f"stalled worker, ran {ran}", got, want)
            seen += [(int(r.get("takeover", "0")), int(r.get("rejoin", "0"))) for r in ran if r["threads"] == "2"]
            if any(t >= 1 and j >= 1 for t, j in seen):
                break
    assert any(t >= 1 and j >= 1 for t, j in seen), f"no taken-over call was handed back: {seen}"


# ---- nested inside another parallel region -------------------------------------------------------------------------
@pytest.mark.timeout(120)
@pytest.mark.parametrize("path", ["auto", "hidden", "batch"])
def test_nested_in_parallel_region(path: str) -> None:
    """torch.ops.fused_rnn.cpu_nested runs elman_fwd + elman_bwd inside at::parallel_for (one copy per chunk), as an
    op that parallelises over something else would. Each nested call must see the region, run serially (a split
    sized by the outer chunk count would deadlock: at::parallel_for runs nested bodies inline) and give the
    top-level results bitwise."""
    P, h0, w, _, _, _ = _inputs(7, 3, 300, seed=4, lengths=False)
    with num_threads(1):
        Y1, _ = cpu_backend.forward(P, h0, w, None, False, "tanh")
        dA1, _ = cpu_backend.backward(P, h0, Y1, w, None, False, "tanh")
    with num_threads(2), forced(path=path):
        Ys, dAs, runs = torch.ops.fused_rnn.cpu_nested(P, h0, w, 4)
    assert len(runs) == 4
    for run in runs:
        fwd, bwd, nested = (part.strip() for part in run.split("|"))
        assert nested == "nested=1", run
        for part in (fwd, bwd):
            assert "path=serial" in part and "threads=1" in part, run
    for i in range(4):
        assert torch.equal(Ys[i], Y1) and torch.equal(dAs[i], dA1), f"copy {i}"


# ---- concurrent callers on a busy machine --------------------------------------------------------------------------
@pytest.mark.timeout(180)
def test_two_python_threads_with_a_busy_core() -> None:
    """Two Python threads call forward + backward with the hidden split at once (each call its own team of workers
    meeting at per-step barriers) while another process keeps a core busy: every call finishes (the barrier yields and
    naps instead of spinning against a descheduled partner) with bitwise the single-threaded results."""
    cases = [_inputs(40, 2, 320, seed=10 + i, lengths=(i == 1)) for i in range(2)]
    with num_threads(1):
        wants = [_run(a, i == 1, "tanh")[0] for i, a in enumerate(cases)]
    busy = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time() + 120\nwhile time.time() < t: pass"])
    errors: list[str] = []

    def worker(i: int) -> None:
        try:
            for _ in range(5):
                got, ran = _run(cases[i], i == 1, "tanh")
                _assert_bitwise(f"python thread {i} ran {ran}", got, wants[i])
        except BaseException as e:  # noqa: BLE001 -- reported below, in the test's own thread
            errors.append(f"thread {i}: {e!r}")

    try:
        with num_threads(2), forced(path="hidden"):
            threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=150)
            assert not any(t.is_alive() for t in threads), "a call did not finish"
    finally:
        busy.kill()
        busy.wait()
    assert not errors, errors


# ---- the fp32 tanh at its extremes ---------------------------------------------------------------------------------
TANH_MAX_ULP = 1.54  # elman_cpu_kernels.inc, tanh_vec: "max 1.54 ulp"


def _ulp_error(y: Tensor, x: Tensor) -> Tensor:
    """|y - tanh(x)| in units of the fp32 spacing at tanh(x), tanh in fp64."""
    ref = torch.tanh(x.double())
    ref32 = ref.float().abs()
    ulp = (torch.nextafter(ref32, torch.tensor(float("inf"))) - ref32).double()
    return (y.double() - ref).abs() / ulp


def _tanh_through_kernel(x: Tensor, isa: str) -> Tensor:
    """tanh of every value of x [N] by the forward kernel: P [1, B, 37] (zero-padded), w_hh = 0 and h0 = -0, so each
    pre-activation is P + Σ(-0·0) = P bit for bit (-0 included), and Y = tanh(P)."""
    H = 37  # two full AVX-512 vectors and a tail, so the vector body and the padded tail both run
    B = -(-x.numel() // H)
    P = torch.zeros(B * H)
    P[: x.numel()] = x
    with forced(isa=isa, path="serial"):
        Y, _ = cpu_backend.forward(P.reshape(1, B, H), torch.full((B, H), -0.0), torch.zeros(H, H), None, False, "tanh")
        assert last_run()["isa"] == isa
    return Y.reshape(-1)[: x.numel()]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("isa", ISAS)
def test_tanh_extremes(isa: str) -> None:
    """The fp32 tanh at its extremes, on every ISA: ±{20, 100, 3e38, inf} give exactly ±1 (as torch.tanh: tanh
    rounds to ±1 in fp32 beyond |x| ≈ 9.011), ±6 and ±9 are within the kernel's claimed error, ±0 gives ±0 and NaN
    gives NaN; a sweep of [-12, 12] (both branches, the 0.625 switch, the clamp at 9) and of tiny values stays
    within the claimed error too. Without the clamp to 9, the exponent construction breaks at 3e38 and inf (NaN)."""
    special = torch.tensor([6.0, 9.0, 20.0, 100.0, 3e38, float("inf")])
    x = torch.cat([special, -special, torch.tensor([0.0, -0.0, float("nan")])])
    y = _tanh_through_kernel(x, isa)
    ones = x.abs() >= 20
    assert torch.equal(y[ones], torch.tanh(x[ones])) and torch.equal(y[ones], torch.sign(x[ones])), y[ones]
    zero = x == 0
    assert torch.equal(y[zero], x[zero]) and torch.equal(torch.signbit(y[zero]), torch.signbit(x[zero])), y[zero]
    assert torch.isnan(y[x.isnan()]).all(), y[x.isnan()]
    sweep = torch.cat([torch.linspace(-12, 12, 20011), torch.linspace(-0.7, 0.7, 4001), torch.logspace(-30, 1, 997),
                       -torch.logspace(-30, 1, 997), special[:2], -special[:2],
                       torch.tensor([0.625, -0.625, 0.62499994, 8.999999, 9.000001, 9.02, -9.02])]).float()
    ys = _tanh_through_kernel(sweep, isa)
    err = _ulp_error(ys, sweep)
    print(f"{isa}: max error {float(err.max()):.3f} ulp over {sweep.numel()} points")
    assert float(err.max()) <= TANH_MAX_ULP, f"{isa}: {float(err.max()):.3f} ulp at x = {float(sweep[err.argmax()])}"
    if isa != "generic":  # the same operations per lane in every build: the same bits
        assert torch.equal(ys, _tanh_through_kernel(sweep, "generic")), f"{isa} tanh differs from the generic build"


@pytest.mark.parametrize(("dtype", "B", "H", "intel", "other"), [
    (torch.float32, 16, 1024, "hidden", "batch"),  # W_hh 4 MB: over half of any L2 we know
    (torch.bfloat16, 32, 1024, "hidden", "batch"),  # 2 MB of bf16 pairs
    (torch.float32, 48, 768, "hidden", "batch"),  # 2.4 MB
    (torch.float32, 64, 1024, "batch", "batch"),  # B >= 64: the batch split everywhere
    (torch.float32, 16, 256, "batch", "batch"),  # W_hh 256 KB: fits
    (torch.float32, 8, 1024, "hidden", "hidden"),  # B < 16 at H > 512: the hidden split everywhere
], ids=["fp32-B16-H1024", "bf16-B32-H1024", "fp32-B48-H768", "fp32-B64-H1024", "fp32-B16-H256", "fp32-B8-H1024"])
def test_automatic_split_by_vendor_and_cache(dtype: torch.dtype, B: int, H: int, intel: str, other: str) -> None:
    """elman_cpu.cpp auto_path on 2 threads (torch's count, which the op reads whatever the CPU count): on Intel
    cores the hidden split for B < 64 once W_hh's packed bytes exceed half a core's L2 (measured ahead of the batch
    split there, 2026-12-07); elsewhere the batch split from B = 16."""
    P = torch.zeros(20, B, H, dtype=dtype)
    with num_threads(2), forced():
        cpu_backend.forward(P, torch.zeros(B, H, dtype=dtype), torch.zeros(H, H, dtype=dtype), None, False, "tanh")
        got = last_run()["path"]
    assert got == (intel if cpu_vendor() == "GenuineIntel" else other), last_run()
