"""bf16 and fp16 on the C++ CPU backend (issue 19), every kernel variant this CPU runs, against the reference backend
in the same dtype by DESIGN.md's tolerance rule (error vs the fp64 oracle <= 2 x the reference's own error in that
dtype, plus a floor of 2 eps).

Variants: "avx512bf16" runs the bf16 forward and backward with vdpbf16ps on bf16 data (W_hh packed in bf16 pairs; the
backward multiplies the stored bf16 dA_t, its carry stays fp32); "avx512bf16fma" the same with the pairs widened in
registers and fp32 FMAs instead of vdpbf16ps (auto's choice on Intel CPUs); "avx512amx" runs the same with the matvec
on AMX tiles (tdpbf16ps), and "avx512amx_emu" the AMX code with the tile instructions emulated in software (any
AVX512-BF16 CPU: the tiles' indexing, configuration, K tails and scattered rows are tested where no AMX exists);
"generic", "avx2" and "avx512" run bf16 (and every variant runs fp16) on the fp32 kernels with the state rounded to
the storage dtype each step. A variant this machine lacks is skipped with the flag it misses (tests/cpu_common.py
reads /proc/cpuinfo: where the CPU lists the flags, the variant must be built, or the test fails). "avx512amx" has not
yet run on AMX hardware, so where the CPU has AMX its tests run under `make amx-check` (FUSED_RNN_AMX_CHECK=1), in a
child process (test_avx512amx_in_a_child_process): a fault fails that test with the child's output instead of killing
the session; `make test` skips them there, saying so, until they have passed once.
Shapes: T time, B batch, H hidden.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cpu_common import ISAS, amx_missing, bf16_isa_missing, built, contract_inputs, forced, last_run, num_threads

from fused_rnn.backends import cpu as cpu_backend
from fused_rnn.backends import reference

pytestmark = pytest.mark.skipif(not built(), reason="the C++ CPU backend is not built")

ALL_VARIANTS = ("generic", "avx2", "avx512", "avx512bf16", "avx512bf16fma", "avx512amx_emu", "avx512amx")
# the sets with bf16-native kernels (their fp16 is avx512's, on converted data)
BF16_NATIVE = ("avx512bf16", "avx512bf16fma", "avx512amx_emu", "avx512amx")
AMX_CHILD_ENV = "FUSED_RNN_TEST_AMX_CHILD"  # set in the child process that runs the avx512amx tests
# `make amx-check` sets this: the real AMX kernels, never yet run on AMX hardware, are verified by an explicit run (as
# the GPU tiers not yet proven run in a stage of their own), so that `make test` on an AMX machine does not depend on
# them before they have passed once; `auto` never picks them either.
AMX_CHECK_ENV = "FUSED_RNN_AMX_CHECK"


def _variant(name: str) -> str:
    """Skips (saying which variant and why) where this CPU cannot run `name`."""
    if name in ("avx512bf16", "avx512bf16fma", "avx512amx_emu"):
        why = bf16_isa_missing()
        if why is not None:
            pytest.skip(f"variant {name} (bf16 kernels on AVX512-BF16) not tested: {why}")
    elif name == "avx512amx":
        why = amx_missing()
        if why is not None:
            pytest.skip(f"variant avx512amx (bf16 matvec on AMX tiles) not tested: {why}")
        if os.environ.get(AMX_CHILD_ENV) != "1":
            pytest.skip("variant avx512amx runs in a child process: see test_avx512amx_in_a_child_process")
    elif name not in ISAS:
        pytest.skip(f"variant {name} not tested: the CPU lacks its instruction set (/proc/cpuinfo)")
    return name


def _inputs(T: int, B: int, H: int, dtype: torch.dtype, lengths: bool, seed: int):
    return contract_inputs(T, B, H, seed, lengths, dtype)


def _err(a: torch.Tensor, oracle: torch.Tensor) -> float:
    return float((a.double() - oracle).abs().max()) if a.numel() else 0.0


# (T, B, H, lengths, reverse, act): odd H (1, 17, 99 -- an odd last k pair), a partial panel (H=130: 64+64+2),
# one row (the two-panel tile), full and partial 6-row tiles (B=8, 13), lengths, reverse, tanh and relu.
CASES = [
    (5, 1, 1, False, True, "tanh"),
    (9, 1, 130, True, False, "tanh"),
    (7, 5, 17, True, False, "relu"),
    (12, 3, 99, True, True, "tanh"),
    (6, 13, 130, True, True, "relu"),
    (8, 8, 64, False, False, "tanh"),
    (4, 17, 33, True, False, "tanh"),  # two row tiles of an AMX matvec (9 + 8 rows), a 1-value K tail
    (3, 35, 70, False, True, "relu"),  # three (12 + 12 + 11)
    (3, 4, 515, False, False, "tanh"),  # avx512bf16fma's state widened in three blocks (128 + 128 + 2 pairs, odd H)
]
IDS = [f"T{T}-B{B}-H{H}{'-len' if lk else ''}{'-rev' if rv else ''}-{a}" for T, B, H, lk, rv, a in CASES]


# fp16 on the bf16-native sets runs avx512's kernels on converted data (the same code as variant avx512): not generated.
LOW_PRECISION = [(dt, v) for dt in ("bf16", "fp16") for v in ALL_VARIANTS if dt == "bf16" or v not in BF16_NATIVE]


@pytest.mark.parametrize("threads", [1, 2], ids=["1t", "2t"])
@pytest.mark.parametrize(("dkey", "variant"), LOW_PRECISION, ids=[f"{d}-{v}" for d, v in LOW_PRECISION])
def test_low_precision_every_variant(dkey: str, variant: str, threads: int) -> None:
    """Forward and backward of each case against the reference in the same dtype (tolerance rule), the padded steps
    exactly 0, and the variant asked for is what ran."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[dkey]
    _variant(variant)
    eps = torch.finfo(dtype).eps
    with num_threads(threads), forced(isa=variant):
        for i, (T, B, H, lk, reverse, act) in enumerate(CASES):
            P, h0, w, L, dY, dh = _inputs(T, B, H, dtype, lk, seed=100 + i)
            d = lambda t: t.double()  # noqa: E731
            Y64, hn64 = reference.forward(d(P), d(h0), d(w), L, reverse, act)
            dA64, dh064 = reference.backward(d(dY), d(dh), Y64, d(w), L, reverse, act)
            Y_ref, hn_ref = reference.forward(P, h0, w, L, reverse, act)
            dA_ref, dh0_ref = reference.backward(dY, dh, Y_ref, w, L, reverse, act)
            Y, hn = cpu_backend.forward(P, h0, w, L, reverse, act)
            assert last_run()["isa"] == variant, last_run()
            dA, dh0 = cpu_backend.backward(dY, dh, Y, w, L, reverse, act)
            assert last_run()["isa"] == variant, last_run()
            tag = f"{IDS[i]} {variant} {threads}t"
            for name, got, ref, oracle in (("Y", Y, Y_ref, Y64), ("h_n", hn, hn_ref, hn64),
                                           ("dA", dA, dA_ref, dA64), ("dh0", dh0, dh0_ref, dh064)):
                assert got.dtype == dtype and got.shape == oracle.shape, f"{tag} {name}"
                floor = 2 * eps * max(1.0, float(oracle.abs().max()))
                e_cpu, e_ref = _err(got, oracle), _err(ref, oracle)
                assert e_cpu <= 2 * e_ref + floor, (f"{tag} {name}: cpu err {e_cpu:.3g} > 2 x reference err "
                                                    f"{e_ref:.3g} + {floor:.3g}")
            if L is not None:
                pad = torch.arange(T).unsqueeze(1) >= L.unsqueeze(0)  # [T, B]
                assert not Y[pad].any() and not dA[pad].any(), f"{tag}: padded steps not 0"


@pytest.mark.parametrize("variant", BF16_NATIVE)
@pytest.mark.parametrize("T,B,H,lengths,reverse,act", [
    pytest.param(6, 13, 200, True, False, "tanh", id="T6-B13-H200-len-tanh"),
    pytest.param(5, 1, 333, False, True, "relu", id="T5-B1-H333-rev-relu"),
])
def test_bf16_bitwise_every_path_and_thread_count(T: int, B: int, H: int, lengths: bool, reverse: bool,
                                                 act: str, variant: str) -> None:
    """The bf16-native forward and backward give the same bits serially on one thread, and with the hidden and the
    batch split on 1 and 2 threads (every output is the same instruction sequence whichever worker computes it, and
    an AMX row tile's rows do not depend on which other rows share the tile)."""
    _variant(variant)
    P, h0, w, L, dY, dh = _inputs(T, B, H, torch.bfloat16, lengths, seed=7)

    def run() -> tuple[tuple[torch.Tensor, ...], list[dict[str, str]]]:
        Y, hn = cpu_backend.forward(P, h0, w, L, reverse, act)
        ran = [last_run()]
        dA, dh0 = cpu_backend.backward(dY, dh, Y, w, L, reverse, act)
        return (Y, hn, dA, dh0), ran + [last_run()]

    with num_threads(1), forced(isa=variant, path="serial"):
        want, _ = run()
    ran_threads = set()
    for threads in (1, 2):
        with num_threads(threads):
            for path in ("serial", "hidden", "batch"):
                # a few tries on 2 threads: on a loaded machine a worker that starts late is left out by design
                for _ in range(20 if threads == 2 else 1):
                    with forced(isa=variant, path=path):
                        got, ran = run()
                    assert all(r["isa"] == variant for r in ran), ran
                    ran_threads |= {r["threads"] for r in ran}
                    for name, a, b in zip(("Y", "h_n", "dA", "dh0"), got, want, strict=True):
                        assert torch.equal(a, b), f"{name}: {path} on {threads} threads ({ran}) differs from serial"
                    if all(r["threads"] == "2" for r in ran):
                        break
    # the splits really ran on 2 workers somewhere (B=13 allows the batch split, H=200/333 the hidden one)
    assert "2" in ran_threads, ran_threads


@pytest.mark.parametrize("H", [131, 517])
@pytest.mark.parametrize("variant", BF16_NATIVE)
def test_bf16_forward_is_the_reference_on_exact_sums(variant: str, H: int) -> None:
    """Where every partial sum is exact in fp32 (small integers times powers of two), the bf16-native forward must
    equal the reference bit for bit: a wrong pair order, a dropped odd k, a misplaced column or tile shows as a wrong
    value, not as a rounding difference. relu keeps the values exact (no tanh)."""
    _variant(variant)
    g = torch.Generator().manual_seed(3)
    T, B = 3, 7
    w = (torch.randint(-3, 4, (H, H), generator=g) / 64.0).bfloat16()
    P = (torch.randint(-8, 9, (T, B, H), generator=g) / 8.0).bfloat16()
    h0 = (torch.randint(0, 5, (B, H), generator=g) / 4.0).bfloat16()
    with forced(isa=variant):
        Y, hn = cpu_backend.forward(P, h0, w, None, False, "relu")
        assert last_run()["isa"] == variant
    Y_ref, hn_ref = reference.forward(P, h0, w, None, False, "relu")
    assert torch.equal(Y, Y_ref) and torch.equal(hn, hn_ref)


@pytest.mark.parametrize("variant", BF16_NATIVE)
def test_bf16_nan_stays_in_its_row(variant: str) -> None:
    """A NaN in one batch row of P stays in that row (and reaches all its later states); the other rows are finite."""
    _variant(variant)
    P, h0, w, _, _, _ = _inputs(4, 8, 70, torch.bfloat16, False, seed=9)
    P[1, 3, 5] = float("nan")
    with forced(isa=variant):
        Y, hn = cpu_backend.forward(P, h0, w, None, False, "tanh")
    assert torch.isnan(Y[1, 3, 5]) and torch.isnan(Y[2:, 3]).all() and torch.isnan(hn[3]).all()
    others = [b for b in range(8) if b != 3]
    assert torch.isfinite(Y[:, others]).all() and torch.isfinite(hn[others]).all()


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_variant_is_built_where_the_cpu_has_it(variant: str) -> None:
    """Where /proc/cpuinfo lists a variant's flags, the build has it and the automatic choice can use it; else the
    test is skipped with the missing flags (so a report shows which variants this machine did not test)."""
    _variant(variant)
    with forced(isa=variant):
        P, h0, w, _, _, _ = _inputs(3, 2, 5, torch.bfloat16, False, seed=1)
        cpu_backend.forward(P, h0, w, None, False, "tanh")
        assert last_run()["isa"] == variant


def test_avx512amx_in_a_child_process() -> None:
    """Where the CPU has AMX, every avx512amx test of this file, in a child process: the tile kernels have passed in
    emulation (variant avx512amx_emu) but not yet on AMX hardware, and a fault there (say the OS's tile permission
    misread) must fail this test with the child's output rather than end the session. The child must pass them all
    and skip none."""
    why = amx_missing()
    if why is not None:
        pytest.skip(f"variant avx512amx (bf16 matvec on AMX tiles) not tested: {why}")
    if os.environ.get(AMX_CHECK_ENV) != "1":
        pytest.skip("this CPU has AMX, and variant avx512amx has not yet run on AMX hardware: `make amx-check` runs "
                    "it (kept out of `make test` until it has passed once; `auto` never picks it)")
    here = Path(__file__).resolve()
    env = dict(os.environ, **{AMX_CHILD_ENV: "1"})
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(here),
                        "-k", "avx512amx and not emu and not child_process"],
                       cwd=here.parent.parent, env=env, capture_output=True, text=True, timeout=1200)
    out = f"exit {r.returncode}\n{r.stdout[-6000:]}\n{r.stderr[-3000:]}"
    assert r.returncode == 0, out
    assert " passed" in r.stdout and " skipped" not in r.stdout, out


def test_avx512amx_request_says_why_not() -> None:
    """Asking for avx512amx where it cannot run is an error that names the reason; where the CPU has AMX the request
    succeeds (in the child process, with the OS's tile permission granted)."""
    why = amx_missing()
    if why is None:
        if os.environ.get(AMX_CHILD_ENV) != "1":
            pytest.skip("this CPU has AMX: the request runs in test_avx512amx_in_a_child_process")
        with forced(isa="avx512amx"):
            assert torch.ops.fused_rnn.cpu_isa("") == "avx512amx"
        return
    with pytest.raises(RuntimeError, match="cannot run avx512amx: .+"):
        torch.ops.fused_rnn.cpu_isa("avx512amx")
    assert torch.ops.fused_rnn.cpu_isa("") != "avx512amx"


_ASAN_CHILD = """
import sys, torch
sys.path.insert(0, {tests!r})
from cpu_common import contract_inputs, last_run
from fused_rnn.backends import cpu as cpu_backend
torch.set_num_threads(2)
assert torch.ops.fused_rnn.cpu_isa("avx512amx_emu") == "avx512amx_emu"
ran = set()
for i, (T, B, H, lk, rv, act) in enumerate({cases!r}):
    for path in ("serial", "hidden", "batch"):
        torch.ops.fused_rnn.cpu_path(path)
        P, h0, w, L, dY, dh = contract_inputs(T, B, H, i, lk, torch.bfloat16)
        Y, hn = cpu_backend.forward(P, h0, w, L, rv, act)
        ran.add(last_run()["isa"])
        dA, dh0 = cpu_backend.backward(dY, dh, Y, w, L, rv, act)
        ran.add(last_run()["isa"])
print("ran", sorted(ran))
"""


def test_avx512amx_emu_reads_no_byte_outside_its_buffers() -> None:
    """The emulated tile loads read exactly the bytes the hardware's would (rows x colsb from base + r·stride), so
    under AddressSanitizer (libasan preloaded into a child Python: torch's tensors come from malloc, the emulation's
    copies go through the memcpy interceptor) a tile that reads past a state row, a panel or an output fails here --
    e.g. loading the K tail straight from the rows, which a mutation run showed as a heap-buffer-overflow. Shapes at
    the edges: H 1, 17, 33 (tails of 1..31 values), 130 (a 2-column last panel), B 1 / 17 / 35 (1-3 row tiles),
    lengths and reverse (scattered rows), on every path at 2 threads."""
    why = bf16_isa_missing()
    if why is not None:
        pytest.skip(f"variant avx512amx_emu not tested: {why}")
    try:
        asan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True,
                              timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"no gcc to find libasan: {e}")
    if not os.path.isabs(asan) or not os.path.exists(asan):
        pytest.skip("gcc has no libasan.so here (AddressSanitizer run not possible)")
    cases = [(3, 1, 1, False, True, "tanh"), (4, 5, 17, True, False, "relu"), (3, 17, 33, True, True, "tanh"),
             (3, 35, 130, False, False, "tanh"), (2, 3, 300, True, False, "relu")]
    tests_dir = Path(__file__).resolve().parent
    code = _ASAN_CHILD.format(tests=str(tests_dir), cases=cases)
    env = dict(os.environ, LD_PRELOAD=asan, ASAN_OPTIONS="detect_leaks=0:halt_on_error=1")
    env["PYTHONPATH"] = os.pathsep.join([str(tests_dir.parent), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    r = subprocess.run([sys.executable, "-c", code], cwd=tests_dir.parent, env=env, capture_output=True, text=True,
                       timeout=600)
    out = f"exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    assert r.returncode == 0 and "AddressSanitizer" not in r.stderr, out
    assert "ran ['avx512amx_emu']" in r.stdout, out
