"""`auto`'s policy (fused_rnn/policy.py) as a pure function: ISA class, threads, GPU capability and TF32 settings are
arguments, the evidence tables are injected, so every rule is checked on any machine. Also: the committed data
loads and names its evidence, and ``python -m bench.policy`` turns a grid run into that data."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
import torch

from fused_rnn import policy, policy_data
from fused_rnn.policy import CpuTable, GpuCell, GpuTable, decide

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import policy as gen  # noqa: E402

WIN, LOSS, EDGE = (3.0, 2.6), (0.6, 0.5), (1.5, 1.3)  # (median, p20): a clear win, a loss, a win only at MARGIN


def _table(isa: str = "avx512", threads: int = 2, cells: dict | None = None, core: str = "") -> CpuTable:
    """A 3 × 3 grid, B (1, 16, 256) × H (64, 256, 1024): fp32 forward wins at small B·H, loses at large;
    fp32 fwd+bwd wins everywhere but B=256; bf16 only at B=1."""
    if cells is None:
        cells = {}
        for b in (1, 16, 256):
            for h in (64, 256, 1024):
                cells[("fp32", "fwd", b, h)] = WIN if b * h <= 16 * 256 else LOSS
                cells[("fp32", "fwd+bwd", b, h)] = WIN if b < 256 else LOSS
                if b == 1:
                    cells[("bf16", "fwd", b, h)] = EDGE
        cells[("fp32", "fwd", 1, 1024)] = EDGE
    return CpuTable(isa=isa, threads=threads, B=(1, 16, 256), H=(64, 256, 1024), cells=cells,
                    machine="test machine", date="2026-12-01", run_file="bench/results/none.json", core=core)


def cpu(dtype="fp32", B=1, H=64, training=False, isa="avx512", threads=2, tables=None, layers=1, directions=1,
        fused="cpu", core=""):
    return decide("cpu", dtype, B, H, layers, directions, training, fused_backend=fused, isa=isa, threads=threads,
                  cpu_tables=(_table(),) if tables is None else tables, core=core)


@pytest.mark.parametrize(("B", "H", "training", "path", "rule"), [
    (1, 64, False, "cpu", "measured-win"),            # on a grid point, a win
    (256, 1024, False, "native", "measured-loss"),    # on a grid point, a loss
    (8, 100, False, "cpu", "measured-win"),           # between four winning corners
    (8, 300, False, "native", "measured-loss"),       # corner (16, 1024) loses
    (100, 64, False, "native", "measured-loss"),      # between B=16 (win) and B=256 (loss)
    (100, 64, True, "native", "measured-loss"),       # fwd+bwd: B=256 loses
    (16, 1024, True, "cpu", "measured-win"),          # fwd+bwd wins where forward loses (mode is in the key)
    (16, 1024, False, "native", "measured-loss"),
    (512, 64, False, "native", "outside-grid"),       # above the largest measured B
    (1, 32, False, "native", "outside-grid"),         # below the smallest measured H
    (1, 2048, True, "native", "outside-grid"),
], ids=["on-grid-win", "on-grid-loss", "between-wins", "corner-loses", "B-between-win-and-loss",
        "training-B-between", "training-win-where-fwd-loses", "fwd-loss", "B-above-grid", "H-below-grid",
        "H-above-grid"])
def test_cpu_grid_and_off_grid(B, H, training, path, rule):
    d = cpu(B=B, H=H, training=training)
    assert (d.path, d.rule) == (path, rule), str(d)
    assert d.tier == "" and d.native == (path == "native")
    if rule.startswith("measured"):
        # the evidence is exactly the bracketing cells, each judged against the normal margin
        bs = policy.bracket((1, 16, 256), B)
        hs = policy.bracket((64, 256, 1024), H)
        assert sorted((e.B, e.H) for e in d.evidence) == sorted((b, h) for b in bs for h in hs)
        assert all(e.mode == ("fwd+bwd" if training else "fwd") for e in d.evidence)
        assert "test machine" in d.source and "none.json" in d.source


def test_margin_is_applied_to_median_and_p20():
    # EDGE (1.5, 1.3) clears MARGIN; just under either bound does not, exactly on both does
    assert EDGE[0] >= policy.MARGIN[0] and EDGE[1] >= policy.MARGIN[1]
    assert policy.MARGIN[0] > 1.0 and policy.MARGIN[1] > 0.95  # stricter than the bench's pass rule
    assert cpu(B=1, H=1024).path == "cpu"
    m, p = policy.MARGIN
    assert cpu(B=1, H=1024, tables=(_table(cells={("fp32", "fwd", 1, 1024): (m, p)}),)).path == "cpu"
    for cell in ((m - 0.01, p + 0.5), (m + 0.5, p - 0.01)):
        t = _table(cells={("fp32", "fwd", 1, 1024): cell})
        assert cpu(B=1, H=1024, tables=(t,)).path == "native", cell


def test_missing_cell_means_native():
    t = _table()
    cells = dict(t.cells)
    del cells[("fp32", "fwd", 16, 256)]
    t2 = CpuTable(**{**t.__dict__, "cells": cells})
    d = cpu(B=8, H=100, tables=(t2,))
    assert (d.path, d.rule) == ("native", "not-measured")


@pytest.mark.parametrize("dtype", ["fp16", "fp64", torch.float16, torch.float64], ids=["fp16", "fp64", "t16", "t64"])
def test_unmeasured_dtype_is_native(dtype):
    assert cpu(dtype=dtype).path == "native"


def test_torch_dtypes_map_to_keys():
    assert cpu(dtype=torch.float32).path == cpu(dtype="fp32").path == "cpu"
    assert cpu(dtype=torch.bfloat16, B=1, H=256).path == "cpu"


def test_unmeasured_threads_need_the_strong_margin():
    """EDGE cells (×1.5) win on the measured thread count only; WIN cells (×3) carry to other counts."""
    assert cpu(B=1, H=1024, threads=2).path == "cpu"
    for threads in (1, 4, 64):
        d = cpu(B=1, H=1024, threads=threads)
        assert d.path == "native" and "strong margin" in d.reason, str(d)
        assert cpu(B=1, H=64, threads=threads).path == "cpu"


def test_nearest_thread_table_is_used():
    t1 = _table(threads=1, cells={("fp32", "fwd", b, h): LOSS for b in (1, 16, 256) for h in (64, 256, 1024)})
    t8 = _table(threads=8)
    assert cpu(B=1, H=64, threads=1, tables=(t1, t8)).path == "native"  # exact table: a loss
    assert cpu(B=1, H=64, threads=2, tables=(t1, t8)).path == "native"  # nearer to 1 (log scale) than to 8
    assert cpu(B=1, H=64, threads=6, tables=(t1, t8)).path == "cpu"     # nearer to 8: strong-margin win


@pytest.mark.parametrize(("H", "training", "floor"), [(64, False, 16), (256, False, 16), (257, False, 64),
                                                      (1024, False, 64), (64, True, 8), (1024, True, 8)],
                         ids=["H64-fwd", "H256-fwd", "H257-fwd", "H1024-fwd", "H64-train", "H1024-train"])
def test_short_sequences_run_native(H: int, training: bool, floor: int) -> None:
    """Rule 7: a CPU call shorter than the floor runs native even where its grid cell is a fused win; from the floor
    on (and with T unknown) the cell decides."""
    assert policy.short_sequence_floor(H, training) == floor
    win = _table(cells={(dt, mode, b, h): WIN for dt in ("fp32",) for mode in ("fwd", "fwd+bwd")
                        for b in (1, 16, 256) for h in (64, 256, 1024)})

    def at(T):
        return decide("cpu", "fp32", 1, H, 1, 1, training, fused_backend="cpu", isa="avx512", threads=2,
                      cpu_tables=(win,), T=T)

    for T in (1, floor - 1):
        d = at(T)
        assert (d.path, d.rule) == ("native", "short-sequence") and f"T={T} < {floor}" in d.reason, d
        assert d.evidence, "the cell that would have run cpu stays in the evidence"
    for T in (floor, 10 * floor, None):
        assert at(T).path == "cpu", T


def test_short_sequence_rule_leaves_other_decisions_alone() -> None:
    # a measured loss keeps its own reason; CUDA takes no T rule
    d = cpu(B=256, H=1024, training=False)
    assert decide("cpu", "fp32", 256, 1024, 1, 1, False, fused_backend="cpu", isa="avx512", threads=2,
                  cpu_tables=(_table(),), T=1).rule == d.rule == "measured-loss"
    g = decide("cuda", "fp64", 1, 64, 1, 1, False, fused_backend="cuda", capability=(9, 0), T=1)
    assert g.rule == "fp64-gpu"


def test_module_short_call_runs_native_and_long_call_runs_cpu() -> None:
    """Through the module: the path recorded for a T=1 inference call on a measured-win shape is native (rule 7),
    bit for bit nn.RNN; the same module at a long T runs the fused cpu path."""
    import fused_rnn
    from fused_rnn.backends import select

    if "cpu" not in fused_rnn.available_backends():
        pytest.skip("the C++ CPU backend is not built")
    rnn = fused_rnn.RNN(64, 64)
    ref = torch.nn.RNN(64, 64)
    ref.load_state_dict(rnn.state_dict())
    long_d = select.choose_path("auto", torch.device("cpu"), torch.float32, 1, 64, 1, 1, False, record=False)
    if long_d.path != "cpu":
        pytest.skip(f"this machine kind's policy runs native at B=1 H=64 anyway: {long_d.summary}")
    x = torch.randn(1, 1, 64)
    with torch.no_grad(), select.record_paths() as log:
        out, h = rnn(x)
        want, want_h = ref(x)
    assert [(d.path, d.rule) for d in log] == [("native", "short-sequence")]
    assert torch.equal(out, want) and torch.equal(h, want_h)
    with torch.no_grad(), select.record_paths() as log:
        rnn(torch.randn(64, 1, 64))
    assert [d.path for d in log] == ["cpu"]


def test_isa_rules():
    # another x86 class borrows with the strong margin
    assert cpu(B=1, H=64, isa="avx2").path == "cpu"
    assert cpu(B=1, H=1024, isa="avx2").path == "native"
    # the same class is preferred over another one with the exact thread count
    t_avx2 = _table(isa="avx2", threads=4, cells={("fp32", "fwd", b, h): LOSS for b in (1, 16, 256)
                                                  for h in (64, 256, 1024)})
    assert cpu(B=1, H=64, isa="avx2", threads=2, tables=(_table(), t_avx2)).path == "native"
    # no AVX2: never fused
    assert cpu(B=1, H=64, isa="other").rule == "unmeasured-isa"
    # half precision is not carried across an AMX difference, fp32 is
    d = cpu(dtype="bf16", B=1, H=256, isa="avx512_amx")
    assert d.path == "native" and "AMX" in d.reason
    assert cpu(B=1, H=64, isa="avx512_amx").path == "cpu"
    # nor across the fused kernels' BF16 dot product (avx512_bf16 vs plain avx512), in either direction; fp32 is
    t_bf = _table(isa="avx512_bf16")
    for isa, tables in (("avx512_bf16", None), ("avx512", (t_bf,))):
        d = cpu(dtype="bf16", B=1, H=256, isa=isa, tables=tables)
        assert d.path == "native" and d.rule == "unmeasured-isa" and "BF16" in d.reason, (isa, d)
        assert cpu(B=1, H=64, isa=isa, tables=tables).path == "cpu", isa
    assert cpu(dtype="bf16", B=1, H=256, isa="avx512_bf16", tables=(t_bf,)).path == "cpu"  # measured there: exact


def test_the_core_kind_is_part_of_the_machine_kind():
    """A table holds at the normal margin only on the core it was measured on (rule 4): the same ISA class and thread
    count on another vendor or generation borrows it with the strong margin."""
    zen5 = _table(core="AMD Zen 5")
    assert cpu(B=1, H=1024, core="AMD Zen 5", tables=(zen5,)).path == "cpu"  # EDGE cell, exact kind
    for other in ("Intel Emerald Rapids", ""):  # another core, or one /proc/cpuinfo could not name
        d = cpu(B=1, H=1024, core=other, tables=(zen5,))
        assert d.path == "native" and d.rule == "measured-loss" and "strong margin" in d.reason, (other, d)
        assert "AMD Zen 5" in d.reason and (other or "an unknown core") in d.reason, d.reason
        assert cpu(B=1, H=64, core=other, tables=(zen5,)).path == "cpu"  # a WIN cell clears the strong margin
    # with a table of its own, each core runs by its own cells, whatever the other says
    emr = _table(core="Intel Emerald Rapids",
                 cells={("fp32", "fwd", b, h): LOSS for b in (1, 16, 256) for h in (64, 256, 1024)})
    assert cpu(B=1, H=64, core="Intel Emerald Rapids", tables=(zen5, emr)).path == "native"
    assert cpu(B=1, H=64, core="AMD Zen 5", tables=(emr, zen5)).path == "cpu"
    # the same core at another thread count is preferred over another core at the exact count
    emr8 = _table(core="Intel Emerald Rapids", threads=8)
    assert cpu(B=1, H=64, core="Intel Emerald Rapids", threads=2, tables=(zen5, emr8)).path == "cpu"
    assert cpu(B=1, H=64, core="Intel Emerald Rapids", threads=2, tables=(zen5, emr)).path == "native"


def test_no_tables_or_no_fast_backend_is_native():
    assert cpu(tables=()).rule == "no-data"
    d = cpu(fused="reference")
    assert d.path == "native" and d.rule == "no-fast-fused"


def test_stacks_are_judged_by_their_cell():
    d1 = cpu(B=1, H=64)
    d2 = cpu(B=1, H=64, layers=3, directions=2)
    assert d1.path == d2.path == "cpu"
    assert "rule 3" in d2.reason and "rule 3" not in d1.reason


def test_decision_string_names_path_reason_and_evidence():
    s = str(cpu(B=8, H=100))
    assert s.startswith("cpu -- ")
    assert "evidence from test machine, 2 thread(s), 2026-12-01, bench/results/none.json, PRELIMINARY" in s
    assert "fp32 fwd B=16 H=256: ×3.00 (p20 ×2.60) win" in s


# ---------------------------------------------------------------------------------------------------------- CUDA

def gpu(dtype="bf16", B=1, H=256, training=False, cap=(9, 0), fused="cuda", fused_tf32=False, cudnn_tf32=False,
        tables=None):
    return decide("cuda", dtype, B, H, 1, 1, training, fused_backend=fused, capability=cap,
                  verified_capabilities=((9, 0),), fused_tf32=fused_tf32, cudnn_tf32=cudnn_tf32,
                  gpu_tables=tables)


@pytest.mark.parametrize("cap", [(8, 0), (8, 9), (10, 0), (12, 0), None], ids=["sm80", "sm89", "sm100", "sm120",
                                                                               "unknown"])
def test_unverified_gpu_is_native(cap):
    for dtype in ("bf16", "fp32", "fp16", "fp64"):
        d = gpu(dtype=dtype, cap=cap)
        assert (d.path, d.rule) == ("native", "unverified-gpu"), str(d)


def test_unverified_gpu_says_when_cudnn_precision_differs():
    d = gpu(dtype="fp32", cap=(8, 0), fused_tf32=False, cudnn_tf32=True)
    assert d.native and "TF32" in d.reason


def test_fp64_on_cuda_is_native():
    assert gpu(dtype="fp64", B=1, H=256).rule == "fp64-gpu"
    assert gpu(dtype=torch.float64, B=16, H=1024, training=True).native


def test_fp32_precision_mismatch_runs_the_verified_fused_tiers():
    d = gpu(dtype="fp32", B=256, H=64, fused_tf32=False, cudnn_tf32=True)
    assert (d.path, d.tier, d.rule) == ("cuda", "", "precision")
    d = gpu(dtype="fp32", B=256, H=64, fused_tf32=True, cudnn_tf32=False)
    assert (d.path, d.rule) == ("cuda", "precision")


@pytest.mark.parametrize(("dtype", "B", "H", "training", "tf32", "want"), [
    ("bf16", 1, 256, False, False, "cuda:cluster"),     # 12.76 µs vs 1.31 + GEMM
    ("bf16", 16, 1024, False, False, "cuda:cluster"),   # 17.77 vs 6.47 + GEMM: 2.7×
    ("bf16", 4, 512, False, False, "cuda:cluster"),     # all four corners (1|16, 256|1024) win with cluster
    ("bf16", 64, 1024, False, False, "native"),         # cluster 20.3 µs vs cuDNN 12.65
    ("bf16", 32, 1024, False, False, "native"),         # between 16 (win) and 64 (loss)
    ("bf16", 16, 512, True, False, "cuda:cluster"),     # training at B=16 between H=256 and 1024
    ("bf16", 8, 512, True, False, "native"),            # training at B=1 was never measured
    ("fp32", 1, 1024, False, False, "cuda:persistent"),  # 14.26 vs 2.42 + GEMM
    ("fp32", 16, 1024, False, False, "cuda:persistent"),  # 19.77 vs 8.39 + 1.32 (GEMM): 2.04×
    ("fp32", 1, 256, False, False, "native"),           # 1.75 vs 1.30: 1.3×, under 2×
    ("fp32", 1, 512, False, False, "native"),           # a losing corner (H=256)
    ("fp32", 16, 1024, False, True, "native"),          # TF32 on both: 17.06 vs 8.39 + GEMM: 1.99×
    ("fp32", 16, 1024, True, True, "native"),           # training TF32: 31.77 vs 16.94 + GEMM: 1.8×
    ("fp16", 1, 256, False, False, "native"),           # no committed fp16 pair
    ("bf16", 1, 64, False, False, "native"),            # below the committed H range
], ids=lambda v: str(v))
def test_gpu_committed_figures(dtype, B, H, training, tf32, want):
    d = gpu(dtype=dtype, B=B, H=H, training=training, fused_tf32=tf32, cudnn_tf32=tf32)
    got = d.path + (f":{d.tier}" if d.tier else "")
    assert got == want, str(d)
    if not d.native:
        assert all(e.ratio >= policy.GPU_MARGIN for e in d.evidence)
        assert "H200" in d.source


def test_gpu_ratio_counts_the_input_gemm_by_hand():
    t = policy.GPU_TABLES[0]
    cell = t.cells[("fp32", "fwd", 16, 1024)]
    # 2·16·1024² FLOPs at half of 50.7 TFLOP/s = 1.3235 µs; bytes 4·16·2·1024 at half of 4.22 TB/s = 0.0621 µs
    gemm = 2 * 16 * 1024**2 / (0.5 * 50.7e12) * 1e6 + 4 * 16 * 2 * 1024 / (0.5 * 4.22e12) * 1e6
    assert policy.gpu_gemm_us("fp32", "fwd", 16, 1024, t) == pytest.approx(gemm)
    assert policy.gpu_ratio("fp32", "fwd", 16, 1024, cell, t) == pytest.approx(19.77 / (8.39 + gemm))
    # training: fused forward + backward kernels and four GEMMs
    c = t.cells[("bf16", "fwd+bwd", 16, 1024)]
    g4 = 4 * (2 * 16 * 1024**2 / (0.5 * 791.8e12) + 2 * 16 * 2 * 1024 / (0.5 * 4.22e12)) * 1e6
    assert policy.gpu_ratio("bf16", "fwd+bwd", 16, 1024, c, t) == pytest.approx(37.41 / (6.47 + 6.53 + g4))


def test_gpu_cells_of_different_tiers_do_not_combine():
    t = GpuTable(capability=(9, 0), B=(1,), H=(256, 1024), peaks_tflops={"bf16": 800.0}, bw_tbps=4.0,
                 cells={("bf16", "fwd", 1, 256): GpuCell("cluster", 1.0, 1.0, 20.0),
                        ("bf16", "fwd", 1, 1024): GpuCell("persistent", 1.0, 1.0, 20.0)},
                 source="test")
    assert gpu(B=1, H=256, tables=(t,)).tier == "cluster"
    d = gpu(B=1, H=512, tables=(t,))
    assert d.native and "different tiers" in d.reason


def test_gpu_without_the_cuda_backend_is_native():
    assert gpu(fused="reference").rule == "no-fast-fused"


def test_other_device_is_native():
    assert decide("mps", "fp32", 1, 64, 1, 1, False, fused_backend="reference").native


def test_bracket():
    ax = (1, 4, 16)
    assert policy.bracket(ax, 1) == (1,) and policy.bracket(ax, 16) == (16,)
    assert policy.bracket(ax, 5) == (4, 16) and policy.bracket(ax, 2) == (1, 4)
    assert policy.bracket(ax, 0) is None and policy.bracket(ax, 17) is None and policy.bracket((), 3) is None


def test_cpu_isa_is_a_known_class():
    assert policy.cpu_isa() in policy.ISA_CLASSES


def test_cpu_core_is_this_machines_kind():
    from fused_rnn._config import cpu_kind, read_cpu_identity

    assert policy.cpu_core() == cpu_kind(read_cpu_identity())


# ---------------------------------------------------------------------------------------------- the data itself

def test_committed_cpu_tables_load_and_name_their_evidence():
    for raw in policy_data.CPU_TABLES:
        t = CpuTable(**raw)
        assert t.isa in policy.ISA_CLASSES[:-1] and t.threads >= 1
        assert t.core, "every committed table names the core it was measured on (rule 4)"
        assert (ROOT / t.run_file).is_file(), t.run_file
        run = json.loads((ROOT / t.run_file).read_text())
        assert run["env"]["cpu_isa"] == t.isa and run["env"]["cpu_threads"] == t.threads
        if run["env"].get("cpu"):  # runs before 2026-12-01's cpuid record name the core in the table alone
            from fused_rnn._config import cpu_kind

            assert cpu_kind(run["env"]["cpu"]) == t.core, (t.run_file, t.core)
        assert list(t.B) == sorted(t.B) and list(t.H) == sorted(t.H)
        for (dt, mode, b, h), val in t.cells.items():
            assert dt in ("fp32", "bf16", "fp16", "fp64") and mode in ("fwd", "fwd+bwd")
            assert b in t.B and h in t.H
            assert val[1] <= val[0], "p20 above the median"
        assert t.date and t.machine


def test_gpu_tables_only_for_verified_capabilities():
    from fused_rnn.backends import select

    for t in policy.GPU_TABLES:
        assert t.capability in select.GPU_VERIFIED_CAPABILITY
        for (_, _, _, _), c in t.cells.items():
            assert c.tier in select.GPU_VERIFIED["cuda"]
    for f in ("bench/results/H200-2026-11-27-cudnn-baseline.json", "csrc/cuda/NOTES_persistent.md"):
        assert (ROOT / f).is_file() and f in policy.GPU_TABLES[0].source


# ------------------------------------------------------------------------------------------ the data generator

def _run_json(rows: list[dict], **env) -> dict:
    e = {"device": "cpu", "cpu_isa": "avx2", "cpu_threads": 4, "device_name": "Test CPU 9000",
         "date_utc": "2026-12-02T10:00:00+00:00"}
    e.update(env)
    return {"env": e, "finished": True, "all_checks_passed": True, "rows": rows}


def _row(provider, dtype, mode, B, H, med, p20, status="ok", layers=1, bi=False):
    return {"provider": provider, "dtype": dtype, "mode": mode, "status": status,
            "case": {"B": B, "H": H, "T": 100, "layers": layers, "bidirectional": bi},
            "ratio_rounds": {"median": med, "p20": p20}}


def test_generator_builds_a_table_from_forced_cpu_rows():
    rows = [_row("cpu", "fp32", "fwd", 1, 64, 4.0, 3.5), _row("cpu", "fp32", "fwd", 16, 64, 0.9, 0.8),
            _row("auto", "fp32", "fwd", 1, 64, 9.0, 9.0),                # not the forced-cpu column
            _row("cpu", "fp32", "fwd+bwd", 1, 64, 2.0, 1.8, status="FAILED"),  # not ok: left out
            _row("cpu", "fp32", "fwd", 4, 64, 5.0, 4.0, layers=2)]       # not a 1 × 1 cell
    t = gen.table_from_run(_run_json(rows), run_file="bench/results/x.json")
    assert (t["isa"], t["threads"], t["B"], t["H"]) == ("avx2", 4, (1, 16), (64,))
    assert t["cells"] == {("fp32", "fwd", 1, 64): (4.0, 3.5, 100), ("fp32", "fwd", 16, 64): (0.9, 0.8, 100)}
    assert t["preliminary"] is True and t["date"] == "2026-12-02" and t["machine"] == "Test CPU 9000"
    assert t["core"] == ""  # the run recorded no cpuid
    assert gen.table_from_run(_run_json(rows), final=True)["preliminary"] is False
    ident = {"vendor": "GenuineIntel", "family": 6, "model": 207, "core": "Emerald Rapids"}
    assert gen.table_from_run(_run_json(rows, cpu=ident))["core"] == "Intel Emerald Rapids"


@pytest.mark.parametrize("bad", ["cuda-run", "unfinished", "failed", "no-isa", "no-rows"])
def test_generator_refuses_unusable_runs(bad):
    data = _run_json([_row("cpu", "fp32", "fwd", 1, 64, 4.0, 3.5)])
    if bad == "cuda-run":
        data["env"]["device"] = "cuda"
    elif bad == "unfinished":
        data["finished"] = False
    elif bad == "failed":
        data["all_checks_passed"] = False
    elif bad == "no-isa":
        del data["env"]["cpu_isa"]
    else:
        data["rows"] = []
    with pytest.raises(ValueError, match="bench.policy"):
        gen.table_from_run(data)


def test_generator_cli_writes_data_that_loads_and_keeps_other_tables(tmp_path):
    data_file = tmp_path / "policy_data.py"
    results = tmp_path / "results"
    first = tmp_path / "a.json"
    first.write_text(json.dumps(_run_json([_row("cpu", "fp32", "fwd", 1, 64, 4.0, 3.5)])))
    assert gen.main([str(first), "--data", str(data_file), "--results-dir", str(results)]) == 0
    second = tmp_path / "b.json"
    second.write_text(json.dumps(_run_json([_row("cpu", "bf16", "fwd+bwd", 16, 256, 1.1, 0.9)], cpu_threads=1)))
    assert gen.main([str(second), "--data", str(data_file), "--results-dir", str(results), "--final"]) == 0
    # rerunning a machine kind replaces its table
    assert gen.main([str(first), "--data", str(data_file), "--results-dir", str(results)]) == 0
    tables = runpy.run_path(str(data_file))["CPU_TABLES"]
    assert [(t["isa"], t["threads"], t["preliminary"]) for t in tables] == [("avx2", 1, False), ("avx2", 4, True)]
    assert sorted(p.name for p in results.iterdir()) == ["cpu-grid-Test-CPU-9000-avx2-1t-2026-12-02.json",
                                                         "cpu-grid-Test-CPU-9000-avx2-4t-2026-12-02.json"]
    # the generated tables drive the policy
    cpu_tables = tuple(CpuTable(**t) for t in tables)
    d = decide("cpu", "fp32", 1, 64, 1, 1, False, fused_backend="cpu", isa="avx2", threads=4,
               cpu_tables=cpu_tables)
    assert d.path == "cpu" and "cpu-grid-Test-CPU-9000-avx2-4t" in d.source
    assert gen.main([str(tmp_path / "missing.json"), "--data", str(data_file)]) == 2
    # the same ISA class and threads on another core is another machine kind: both tables are kept
    third = tmp_path / "c.json"
    third.write_text(json.dumps(_run_json([_row("cpu", "fp32", "fwd", 1, 64, 0.5, 0.4)],
                                          cpu={"vendor": "AuthenticAMD", "family": 26, "model": 2, "core": "Zen 5"})))
    assert gen.main([str(third), "--data", str(data_file), "--results-dir", str(results)]) == 0
    kinds = [(t["core"], t["threads"]) for t in runpy.run_path(str(data_file))["CPU_TABLES"]]
    assert kinds == [("", 1), ("", 4), ("AMD Zen 5", 4)], kinds
    cpu_tables = tuple(CpuTable(**t) for t in runpy.run_path(str(data_file))["CPU_TABLES"])
    assert decide("cpu", "fp32", 1, 64, 1, 1, False, fused_backend="cpu", isa="avx2", threads=4,
                  cpu_tables=cpu_tables, core="AMD Zen 5").path == "native"  # its own (losing) cell
    assert (results / "cpu-grid-Test-CPU-9000-AMD-Zen-5-avx2-4t-2026-12-02.json").is_file()  # not over a's file
    # a final run can drop the preliminary tables of other machine kinds
    assert gen.main([str(second), "--data", str(data_file), "--results-dir", str(results), "--final",
                     "--drop-preliminary"]) == 0
    assert [(t["threads"], t["preliminary"]) for t in runpy.run_path(str(data_file))["CPU_TABLES"]] == [(1, False)]
    # a tagged rerun of one kind on the same day keeps the first run's file and names its own
    assert gen.main([str(second), "--data", str(data_file), "--results-dir", str(results), "--final",
                     "--tag", "stop34"]) == 0
    assert (results / "cpu-grid-Test-CPU-9000-avx2-1t-2026-12-02.json").is_file()
    tagged = results / "cpu-grid-Test-CPU-9000-avx2-1t-2026-12-02-stop34.json"
    assert tagged.is_file()
    assert runpy.run_path(str(data_file))["CPU_TABLES"][0]["run_file"].endswith(tagged.name)


@pytest.mark.parametrize("training", [False, True], ids=["fwd", "train"])
def test_short_sequence_rule_yields_to_cells_measured_as_short(training: bool) -> None:
    """Rule 7's exception: where every cell the decision rests on was measured at a T no longer than the call's, the
    cells decide (their ratio paid the per-call cost at that T); one longer cell, or a cell without its T, and the
    floor holds."""
    mode = "fwd+bwd" if training else "fwd"
    floor = policy.short_sequence_floor(1024, training)
    Tm = floor // 2  # the cells' own T, below the floor
    cells = {("fp32", mode, b, h): WIN + (Tm,) for b in (1, 16, 256) for h in (64, 256, 1024)}

    def at(T, table, B=16):
        return decide("cpu", "fp32", B, 1024, 1, 1, training, fused_backend="cpu", isa="avx512", threads=2,
                      cpu_tables=(table,), T=T)

    d = at(Tm, _table(cells=cells))
    assert (d.path, d.rule) == ("cpu", "measured-win") and "below rule 7's floor" in d.reason, d
    assert [e.T for e in d.evidence] == [Tm]
    d = at(Tm - 1, _table(cells=cells))  # shorter than the cell
    assert (d.path, d.rule) == ("native", "short-sequence"), d
    # off-grid B=100 is bracketed by B=16 and B=256: both cells must be this short
    longer = dict(cells)
    longer[("fp32", mode, 256, 1024)] = WIN + (floor,)
    assert at(Tm, _table(cells=longer), B=100).rule == "short-sequence"
    d = at(Tm, _table(cells=cells), B=100)
    assert d.path == "cpu" and sorted(e.T for e in d.evidence) == [Tm, Tm], d
    # cells without their T (2-tuples): the floor holds
    bare = {k: v[:2] for k, v in cells.items()}
    assert at(floor - 1, _table(cells=bare)).rule == "short-sequence"
