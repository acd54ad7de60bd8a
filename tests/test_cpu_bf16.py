"""bf16 and fp16 on the C++ CPU backend (issue 19), every kernel variant this CPU runs, against the reference backend
in the same dtype by DESIGN.md's tolerance rule (error vs the fp64 oracle <= 2 x the reference's own error in that
dtype, plus a floor of 2 eps).

Variants: "avx512bf16" runs the bf16 forward and backward with vdpbf16ps on bf16 data (W_hh packed in bf16 pairs; the
backward multiplies the stored bf16 dA_t, its carry stays fp32); "generic", "avx2" and "avx512" run bf16 (and every
variant runs fp16) on the fp32 kernels with the state rounded to the storage dtype each step. A variant this
machine lacks is skipped with the flag it misses (tests/cpu_common.py reads /proc/cpuinfo: where the CPU lists the
flags, the variant must be built, or the test fails). Shapes: T time, B batch, H hidden.
"""

from __future__ import annotations

import pytest
import torch
from cpu_common import ISAS, bf16_isa_missing, built, contract_inputs, forced, last_run, num_threads

from fused_rnn.backends import cpu as cpu_backend
from fused_rnn.backends import reference

pytestmark = pytest.mark.skipif(not built(), reason="the C++ CPU backend is not built")

ALL_VARIANTS = ("generic", "avx2", "avx512", "avx512bf16")


def _variant(name: str) -> str:
    """Skips (saying which variant and why) where this CPU cannot run `name`."""
    if name == "avx512bf16":
        why = bf16_isa_missing()
        if why is not None:
            pytest.skip(f"variant avx512bf16 (vdpbf16ps bf16 forward) not tested: {why}")
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
]
IDS = [f"T{T}-B{B}-H{H}{'-len' if lk else ''}{'-rev' if rv else ''}-{a}" for T, B, H, lk, rv, a in CASES]


# fp16 on avx512bf16 runs avx512's kernels on converted data (the same code as variant avx512): not generated.
LOW_PRECISION = [(dt, v) for dt in ("bf16", "fp16") for v in ALL_VARIANTS if (dt, v) != ("fp16", "avx512bf16")]


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


@pytest.mark.parametrize("T,B,H,lengths,reverse,act", [
    pytest.param(6, 13, 200, True, False, "tanh", id="T6-B13-H200-len-tanh"),
    pytest.param(5, 1, 333, False, True, "relu", id="T5-B1-H333-rev-relu"),
])
def test_bf16_bitwise_every_path_and_thread_count(T: int, B: int, H: int, lengths: bool, reverse: bool,
                                                 act: str) -> None:
    """The vdpbf16ps forward and backward give the same bits serially on one thread, and with the hidden and the
    batch split on 1 and 2 threads (every output is the same instruction sequence whichever worker computes it)."""
    _variant("avx512bf16")
    P, h0, w, L, dY, dh = _inputs(T, B, H, torch.bfloat16, lengths, seed=7)

    def run() -> tuple[tuple[torch.Tensor, ...], list[dict[str, str]]]:
        Y, hn = cpu_backend.forward(P, h0, w, L, reverse, act)
        ran = [last_run()]
        dA, dh0 = cpu_backend.backward(dY, dh, Y, w, L, reverse, act)
        return (Y, hn, dA, dh0), ran + [last_run()]

    with num_threads(1), forced(isa="avx512bf16", path="serial"):
        want, _ = run()
    ran_threads = set()
    for threads in (1, 2):
        with num_threads(threads):
            for path in ("serial", "hidden", "batch"):
                # a few tries on 2 threads: on a loaded machine a worker that starts late is left out by design
                for _ in range(20 if threads == 2 else 1):
                    with forced(isa="avx512bf16", path=path):
                        got, ran = run()
                    assert all(r["isa"] == "avx512bf16" for r in ran), ran
                    ran_threads |= {r["threads"] for r in ran}
                    for name, a, b in zip(("Y", "h_n", "dA", "dh0"), got, want, strict=True):
                        assert torch.equal(a, b), f"{name}: {path} on {threads} threads ({ran}) differs from serial"
                    if all(r["threads"] == "2" for r in ran):
                        break
    # the splits really ran on 2 workers somewhere (B=13 allows the batch split, H=200/333 the hidden one)
    assert "2" in ran_threads, ran_threads


def test_bf16_forward_is_the_reference_on_exact_sums() -> None:
    """Where every partial sum is exact in fp32 (small integers times powers of two), the vdpbf16ps forward must
    equal the reference bit for bit: a wrong pair order, a dropped odd k or a misplaced column shows as a wrong
    value, not as a rounding difference. relu keeps the values exact (no tanh)."""
    _variant("avx512bf16")
    g = torch.Generator().manual_seed(3)
    T, B, H = 3, 7, 131
    w = (torch.randint(-3, 4, (H, H), generator=g) / 64.0).bfloat16()
    P = (torch.randint(-8, 9, (T, B, H), generator=g) / 8.0).bfloat16()
    h0 = (torch.randint(0, 5, (B, H), generator=g) / 4.0).bfloat16()
    with forced(isa="avx512bf16"):
        Y, hn = cpu_backend.forward(P, h0, w, None, False, "relu")
        assert last_run()["isa"] == "avx512bf16"
    Y_ref, hn_ref = reference.forward(P, h0, w, None, False, "relu")
    assert torch.equal(Y, Y_ref) and torch.equal(hn, hn_ref)


def test_bf16_nan_stays_in_its_row() -> None:
    """A NaN in one batch row of P stays in that row (and reaches all its later states); the other rows are finite."""
    _variant("avx512bf16")
    P, h0, w, _, _, _ = _inputs(4, 8, 70, torch.bfloat16, False, seed=9)
    P[1, 3, 5] = float("nan")
    with forced(isa="avx512bf16"):
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
