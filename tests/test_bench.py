"""Tests of the benchmark suite (bench/): the CLI end to end on the tiny preset, the correctness gate (outputs, h_n,
dx and every weight gradient; native bit for bit; auto's path), interleaved timing and the verdict rule, the auto
summary, the provider discovery, argument errors, the environment left alone, and the FLOP / floor arithmetic."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import cli, report  # noqa: E402
from bench import timing as bench_timing  # noqa: E402
from bench.cases import PRESET_CONFIG, Case, preset_cases  # noqa: E402
from bench.floor import floor_us_per_step, model_flops  # noqa: E402
from bench.providers import Provider, discover  # noqa: E402
from bench.runner import Runner  # noqa: E402
from fused_rnn import _ext, policy  # noqa: E402
from fused_rnn._config import _CPU_FLAGS, cpu_identity, cpu_kind  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run_cli(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("FUSED_RNN_BACKEND", None)
    env.pop("OMP_WAIT_POLICY", None)  # the bench must leave it unset (and say so in the JSON)
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("bench_tiny")
    proc = _run_cli(["--preset", "tiny", "--out", str(out), "--device", "cpu"])
    return proc, out


def test_tiny_exit_status_and_files(tiny_run):
    proc, out = tiny_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in (report.JSON_NAME, report.MD_NAME):
        assert (out / name).is_file(), f"{name} not written"


def test_tiny_plot_written(tiny_run):
    pytest.importorskip("matplotlib")  # without it the bench says so on stderr and writes no plot
    _, out = tiny_run
    assert (out / report.PNG_NAME).read_bytes()[:8] == PNG_MAGIC
    assert (out / report.PNG_NAME).stat().st_size > 1000


# /proc/cpuinfo excerpts (first CPU block, then a second block that must be ignored). The family/model pairs are
# AMD's published cpuid values: 25/1 EPYC Milan (Zen 3), 25/17 EPYC Genoa (Zen 4), 26/2 the AMD VM of 2026-12-01
# (Zen 5, reported as model name "AMD EPYC" only), 23/49 EPYC Rome (Zen 2); Intel's 6/143 Sapphire Rapids (AMX),
# 6/207 Emerald Rapids (the 2026-12-07 VM, whose hypervisor hides AMX) and 6/183 Raptor Lake (a client part, left
# unnamed).
_CPUINFO = """processor\t: 0
vendor_id\t: {vendor}
cpu family\t: {family}
model\t\t: {model}
model name\t: {name}
stepping\t: 1
flags\t\t: fpu sse2 avx2 fma {flags}

processor\t: 1
vendor_id\t: GenuineNotThisOne
cpu family\t: 99
"""


@pytest.mark.parametrize("vendor,family,model,flags,core", [
    ("AuthenticAMD", 25, 1, "", "Zen 3"),
    ("AuthenticAMD", 25, 17, "avx512f avx512_bf16", "Zen 4"),
    ("AuthenticAMD", 25, 97, "avx512f", "Zen 4"),
    ("AuthenticAMD", 26, 2, "avx512f avx512_bf16 avx_vnni", "Zen 5"),
    ("AuthenticAMD", 23, 49, "", "Zen/Zen+/Zen 2"),
    ("GenuineIntel", 6, 143, "avx512f avx512_bf16 avx512_fp16 amx_tile amx_bf16", "Sapphire Rapids"),
    ("GenuineIntel", 6, 207, "avx512f avx512_bf16 avx512_fp16", "Emerald Rapids"),
    ("GenuineIntel", 6, 183, "avx_vnni", None),
], ids=["zen3", "zen4-genoa", "zen4-raphael", "zen5", "zen2", "intel-spr", "intel-emr-no-amx-exposed",
        "intel-client-unnamed"])
def test_cpu_identity_names_the_machine_from_family_and_model(vendor, family, model, flags, core):
    info = cpu_identity(_CPUINFO.format(vendor=vendor, family=family, model=model, name="X", flags=flags))
    assert (info["vendor"], info["family"], info["model"], info["stepping"]) == (vendor, family, model, 1)
    assert info["core"] == core
    assert info["flags"] == ["avx2", "fma"] + [f for f in _CPU_FLAGS if f in flags.split()]


@pytest.mark.parametrize("vendor,family,model,kind", [
    ("AuthenticAMD", 26, 2, "AMD Zen 5"),
    ("GenuineIntel", 6, 207, "Intel Emerald Rapids"),
    ("GenuineIntel", 6, 183, "Intel family 6 model 183"),
    ("HygonGenuine", 24, 1, "HygonGenuine family 24 model 1"),
], ids=["zen5", "intel-emr", "intel-unnamed", "other-vendor"])
def test_cpu_kind_distinguishes_vendor_and_generation(vendor, family, model, kind):
    # auto's tables are keyed by this kind (fused_rnn/policy.py rule 4): two generations must never share a name
    assert cpu_kind(cpu_identity(_CPUINFO.format(vendor=vendor, family=family, model=model, name="X",
                                                  flags=""))) == kind


def test_cpu_kind_names_old_records_like_new_ones():
    # a run recorded before Intel generations were named (core None) is the same kind as the machine today
    assert cpu_kind({"vendor": "GenuineIntel", "family": 6, "model": 207, "core": None}) == "Intel Emerald Rapids"


def test_cpu_kind_of_nothing_is_empty():
    assert cpu_kind(None) == "" and cpu_kind(cpu_identity("processor\t: 0\n")) == ""


def test_cpu_identity_tolerates_missing_fields():
    info = cpu_identity("processor\t: 0\nmodel name\t: something\n")
    assert info["family"] is None and info["core"] is None and info["flags"] == []
    assert info["model_name"] == "something"


def test_tiny_json_environment_and_checks(tiny_run):
    proc, out = tiny_run
    data = json.loads((out / report.JSON_NAME).read_text())
    env = data["env"]
    for key in ("device_name", "torch", "cuda", "cudnn", "triton", "git_commit", "date_utc", "tf32_default",
                "available_backends", "cpu_threads", "cpu"):
        assert key in env, key
    assert env["torch"] == torch.__version__
    assert env["device"] == "cpu"
    assert data["finished"] is True
    rows = data["rows"]
    cases = preset_cases("tiny", "cpu")
    # every case × mode has a timed nn.RNN baseline
    for c in cases:
        for mode in c.modes:
            base = [r for r in rows if r["case"]["label"] == c.label() and r["mode"] == mode
                    and r["provider"] == "nn.RNN"]
            assert len(base) == 1 and base[0]["status"] == "ok" and base[0]["time_ms"]["median"] > 0
    # every judged provider passed its check, and the JSON says so
    judged = [r for r in rows if "check" in r and r["check"]["status"] != "baseline"]
    assert judged, "no provider was checked"
    assert data["n_checks"] == len(judged)
    for r in judged:
        assert r["check"]["status"] == "ok", r
        assert r["status"] == "ok", r
        for k, err in r["check"]["errors"].items():
            assert err <= r["check"]["tolerances"][k]
    assert data["all_checks_passed"] is True
    # the reference is checked on every tiny case (both are within its step cap)
    assert {r["case"]["label"] for r in judged if r["provider"] == "reference"} == {c.label() for c in cases}
    # so are auto and native, and -- when the extension is built -- the forced cpu backend (issue #26)
    labels = {c.label() for c in cases}
    for prov in ["auto", "native"] + (["cpu"] if _ext.has_kernel("CPU") else []):
        assert {r["case"]["label"] for r in judged if r["provider"] == prov} == labels, prov
    if _ext.has_kernel("CPU"):
        assert "cpu" in env["available_backends"]
        assert all(r["check"]["status"] == "ok" for r in judged if r["provider"] == "cpu")
    # the environment is left alone and recorded
    assert env["omp_wait_policy"] == "unset (OpenMP's default)" and env["threads_flag"] is None
    assert env["cpu_isa"] in policy.ISA_CLASSES
    # auto: every row has its path; the summary is in the JSON and on stdout
    autos = [r for r in rows if r["provider"] == "auto"]
    assert autos and all(r["path"] and r["path_rule"] and r["path_reason"] for r in autos)
    summ = data["summary"]
    assert summ["rows"] == len(autos) and summ["native_asserted"] + summ["timed"] == len(autos)
    assert summ["verdict"] in ("PASS", "FAIL") and summ["worst"] <= summ["geomean"]
    assert "auto vs nn.RNN: worst ×" in proc.stdout and "geometric mean ×" in proc.stdout


def test_tiny_derived_columns_follow_their_definitions(tiny_run):
    _, out = tiny_run
    rows = json.loads((out / report.JSON_NAME).read_text())["rows"]
    timed = [r for r in rows if "time_ms" in r]
    assert timed
    for r in timed:
        c, ms = r["case"], r["time_ms"]["median"]
        assert r["time_ms"]["p20"] <= ms <= r["time_ms"]["p80"]
        assert r["tokens_per_s"] == pytest.approx(c["B"] * c["T"] / (ms / 1e3), rel=1e-9)
        steps = c["T"] * c["layers"] * (2 if c["bidirectional"] else 1)
        assert r["us_per_layer_step"] == pytest.approx(ms * 1e3 / steps, rel=1e-9)
        base = next(b for b in rows if b["provider"] == "nn.RNN" and b["mode"] == r["mode"]
                    and b["case"]["label"] == c["label"])
        assert r["speedup_vs_nn_rnn"] == pytest.approx(base["time_ms"]["median"] / ms, rel=1e-9)
        assert r["tflops"] > 0 and r["floor_ratio"] > 0  # the CPU's measured peaks give a floor too
        assert r["time_ms"]["n"] == PRESET_CONFIG["tiny"].rounds
        if r["provider"] != "nn.RNN":
            rr = r["ratio_rounds"]
            assert len(rr["all"]) == PRESET_CONFIG["tiny"].rounds and rr["p20"] <= rr["median"]
            if r["provider"] == "auto" and r["path"] == "native":  # nn.RNN's kernel: the native rule
                from bench.timing import quantile

                p80 = quantile(rr["all"], 0.8)
                assert r["verdict"] == ("native" if rr["median"] >= 0.97 or p80 >= 1.0 else "native, slower")
            else:
                assert r["verdict"] == ("≥ nn.RNN" if rr["median"] >= 1.0 and rr["p20"] >= 0.95 else "slower")
    data = json.loads((out / report.JSON_NAME).read_text())
    assert data["peaks"]["bw_TBps"] > 0 and data["peaks"]["tflops"]["fp32"] > 0


def test_tiny_table_printed_and_written(tiny_run):
    proc, out = tiny_run
    md = (out / report.MD_NAME).read_text()
    assert "| case | dtype | mode | provider |" in md
    assert "all checks passed" in md
    assert "| case | dtype | mode | provider |" in proc.stdout
    n_rows = sum(1 for line in md.splitlines() if line.startswith("| T"))
    rows = json.loads((out / report.JSON_NAME).read_text())["rows"]
    assert n_rows == sum(1 for r in rows if r["status"] != "skipped")  # skipped rows are summarized in the notes
    assert "[" in proc.stderr and "/" in proc.stderr  # the progress bar went to stderr
    # auto's reason beside each auto row: fused_rnn.explain's summary (it names the path the row took), numbered
    autos = [r for r in rows if r["provider"] == "auto"]
    reasons = list(dict.fromkeys((r["path"], r["path_reason"]) for r in autos))
    assert reasons and all(why.startswith(path + ": ") for path, why in reasons)
    for i, (path, why) in enumerate(reasons, 1):
        assert f"\n{i}. {why}\n" in md
        assert any(line.startswith("| T") and f"| auto → {path} [{i}] |" in line for line in md.splitlines())


class _Perturbed(nn.Module):
    """Wraps a correct module and scales its output by (1 + eps): a wrong kernel, in miniature."""

    def __init__(self, inner: nn.Module, eps: float) -> None:
        super().__init__()
        self.inner = inner
        self.eps = eps

    def forward(self, x):
        out, h = self.inner(x)
        return out * (1 + self.eps), h

    def named_parameters(self, *a, **k):  # nn.RNN's names, as the bench's gradient check expects
        return self.inner.named_parameters(*a, **k)


class _BrokenProvider(Provider):
    def build(self, state_dict, case, device):
        return _Perturbed(Provider("x", "fused", backend="reference").build(state_dict, case, device), 1e-3)


class _RaisingProvider(Provider):
    def build(self, state_dict, case, device):
        raise RuntimeError("kernel exploded")


CHECK_CASES = [pytest.param(Case(T=7, B=3, H=5, modes=("fwd", "fwd+bwd")), id="T7-B3-H5"),
               pytest.param(Case(T=4, B=1, H=9, layers=2, bidirectional=True, modes=("fwd",)), id="T4-B1-H9-L2bi")]


@pytest.mark.parametrize("case", CHECK_CASES)
def test_check_fails_a_wrong_provider_and_passes_a_right_one(case):
    providers = [Provider("nn.RNN", "baseline"),
                 Provider("good", "fused", backend="reference"),
                 _BrokenProvider("broken", "fused", backend="reference"),
                 _RaisingProvider("raising", "fused", backend="reference")]
    runner = Runner(torch.device("cpu"), providers, PRESET_CONFIG["tiny"])
    runner.run_case(case)
    by = {(r.provider, r.mode): r for r in runner.rows}
    for mode in case.modes:
        good, broken, raising = by[("good", mode)], by[("broken", mode)], by[("raising", mode)]
        assert good.status == "ok" and good.timing is not None and good.timing.median_ms > 0
        # the tolerance is 2 × the reference's own error + the fp32 floor, so a 1e-3 relative error is far over it
        assert all(t < 1e-4 for t in good.check.tolerances.values())
        assert broken.status == "FAILED" and broken.timing is None
        assert broken.check.errors["out"] == pytest.approx(1e-3, rel=0.05)
        assert "mismatch" in broken.note
        assert raising.status == "ERROR" and raising.timing is None and "kernel exploded" in raising.note
    assert {r.provider for r in report.failures(runner.rows)} == {"broken", "raising"}


def test_cli_exits_nonzero_on_a_failed_check(tmp_path, monkeypatch, capsys):
    import bench.providers as bp

    real = bp.discover

    def with_broken(device, wanted, with_flashrnn):
        provs, notes = real(device, wanted, with_flashrnn)
        return provs + [_BrokenProvider("broken", "fused", backend="reference")], notes

    monkeypatch.setattr(bp, "discover", with_broken)
    rc = cli.main(["--preset", "tiny", "--out", str(tmp_path), "--device", "cpu", "--backends", "reference"])
    assert rc == 1
    data = json.loads((tmp_path / report.JSON_NAME).read_text())
    assert data["all_checks_passed"] is False
    assert {r["provider"] for r in data["rows"] if r["status"] == "FAILED"} == {"broken"}
    assert "FAILED" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without a GPU skips")
def test_unavailable_providers_are_skipped_with_a_note(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # triton on CPU tensors only under the interpreter
    provs, notes = discover(torch.device("cpu"), ["cuda", "triton", "cuda:persistent"], with_flashrnn=True)
    assert [p.name for p in provs] == ["nn.RNN", "auto"]  # the baseline and auto are always kept
    joined = "\n".join(notes)
    for name in ("cuda:", "triton:", "flashrnn:"):
        assert name in joined


@pytest.mark.parametrize("argv", [["--preset", "nope"], ["--backends", "bogus"], ["--budget-s", "0"]],
                         ids=["bad-preset", "bad-backend", "zero-budget"])
def test_bad_arguments_are_clear_errors(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.parse_args(argv)
    assert e.value.code == 2
    assert "error" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_device_cuda_without_gpu_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as e:
        cli.parse_args(["--device", "cuda"])
    assert e.value.code == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_bad_case_is_rejected():
    with pytest.raises(ValueError, match="sizes"):
        Case(T=0, B=1, H=4)
    with pytest.raises(ValueError, match="dtype"):
        Case(T=1, B=1, H=4, dtype="fp8")
    with pytest.raises(ValueError, match="modes"):
        Case(T=1, B=1, H=4, modes=("bwd",))


def test_flops_and_floor_by_hand():
    c = Case(T=10, B=2, H=4, layers=2, bidirectional=True)
    # layer 0: 2 dirs · 10 steps · (2·2·4·4 + 2·2·4·4) = 2560; layer 1 (input 8): 2 · 10 · (2·2·8·4 + 64) = 3840
    assert model_flops(c, "fwd") == 6400
    assert model_flops(c, "fwd+bwd") == 3 * 6400
    # fp32, 1 TFLOP/s, 1 TB/s: flops 2·2·16 = 64 -> 64 ps; bytes 4·(16 + 2·2·4) = 128 -> 128 ps; max = 1.28e-4 µs
    assert floor_us_per_step(c, "fwd", 1.0, 1.0) == pytest.approx(1.28e-4)
    assert floor_us_per_step(c, "fwd+bwd", 1.0, 1.0) == pytest.approx(2.56e-4)
    big = Case(T=1, B=256, H=2048, dtype="bf16")
    # compute-bound: 2·256·2048² = 2.147e9 FLOP at 1000 TFLOP/s = 2.147 µs; bytes 2·(2048² + 2·256·2048) = 10.5 MB
    # at 3.35 TB/s = 3.13 µs -> the bytes term wins
    assert floor_us_per_step(big, "fwd", 1000.0, 3.35) == pytest.approx(2 * (2048**2 + 2 * 256 * 2048) / 3.35e6)


def test_presets_hold_the_required_shapes():
    grid = preset_cases("grid", "cpu")
    assert {(c.B, c.H, c.dtype) for c in grid} == {(b, h, d) for b in (1, 4, 16, 64, 256, 512)
                                                   for h in (16, 64, 256, 1024, 2048) for d in ("fp32", "bf16", "fp16")}
    assert len(grid) == 90 and all(c.modes == ("fwd", "fwd+bwd") for c in grid)
    assert all(c.target_s == (0.05 if c.H < 64 else 0.2) for c in grid)
    assert PRESET_CONFIG["grid"].rounds >= 10 and set(PRESET_CONFIG["grid"].providers) == {"auto", "cpu", "native"}
    quick = preset_cases("quick", "cpu")
    # a few shapes from every region of the grid, losing ones included, both dtypes, a stack and an off-grid shape
    small = {(c.B, c.H) for c in quick if c.layers == 1 and not c.compile}
    assert (1, 64) in small and (64, 1024) in small and (256, 256) in small
    assert {c.dtype for c in quick} >= {"fp32", "bf16"}
    assert any(c.layers == 2 and c.bidirectional for c in quick) and any("off-grid" in c.tags for c in quick)
    assert PRESET_CONFIG["quick"].rounds >= 10
    full = preset_cases("full", "cuda")
    assert {c.B for c in full} == {1, 8, 16, 64, 256} and {c.H for c in full} == {256, 512, 1024, 2048}
    assert {c.dtype for c in full} >= {"fp32", "fp32-tf32", "fp16", "bf16"}
    assert any(c.layers == 2 and c.bidirectional for c in full)
    gpu = preset_cases("gpu", "cuda")
    assert {c.T for c in gpu if not c.compile} == {1024}
    assert all(c.T <= 64 for c in gpu if c.compile)  # torch.compile of the unrolled loop only at short T


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tiny_on_gpu_reports_floor(tmp_path):
    proc = _run_cli(["--preset", "tiny", "--out", str(tmp_path), "--device", "cuda"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / report.JSON_NAME).read_text())
    assert data["env"]["device"] == "cuda" and data["peaks"]["bw_TBps"] > 0
    timed = [r for r in data["rows"] if "time_ms" in r]
    assert timed and all(r["tflops"] > 0 and r["floor_ratio"] > 0 for r in timed)
    assert data["all_checks_passed"] is True


def test_budget_drops_cases_and_says_so(tmp_path):
    rc = cli.main(["--preset", "tiny", "--out", str(tmp_path), "--device", "cpu", "--budget-s", "1e-9"])
    assert rc == 0
    data = json.loads((tmp_path / report.JSON_NAME).read_text())
    assert len(data["dropped_cases"]) == len(preset_cases("tiny", "cpu"))
    assert data["rows"] == [] and data["n_checks"] == 0
    assert "time budget reached" in (tmp_path / report.MD_NAME).read_text()


def _fake_tiered_backend(calls: list[str]):
    """A stand-in for a tiered GPU backend, on the CPU: the reference's math, recording the tier each call got."""
    import types

    from fused_rnn.backends import reference

    def forward(P, h0, w_hh, lengths, reverse, nonlinearity, tier="", allow_tf32=False):
        calls.append(tier)
        return reference.forward(P, h0, w_hh, lengths, reverse, nonlinearity)

    def backward(dY, dh_n, Y, w_hh, lengths, reverse, nonlinearity, tier="", allow_tf32=False):
        return reference.backward(dY, dh_n, Y, w_hh, lengths, reverse, nonlinearity)

    return types.SimpleNamespace(
        NAME="cuda", TIERS=("t_one", "t_two", "t_three"), available=lambda: (True, ""),
        supports_device=lambda device: True, pick_tier=lambda H, B, dtype, device: "t_two",
        compiled_tiers=lambda: ("t_one", "t_two"), forward=forward, backward=backward)


def test_tiers_are_forced_one_by_one_and_the_heuristic_pick_is_marked(monkeypatch):
    from fused_rnn.backends import select

    calls: list[str] = []
    fake = _fake_tiered_backend(calls)
    real_module = select._module
    monkeypatch.setattr(select, "_module", lambda name: fake if name == "cuda" else real_module(name))
    monkeypatch.setenv("FUSED_RNN_CUDA_TIER", "t_one")  # the caller's setting: overridden per provider, restored

    provs, notes = discover(torch.device("cpu"), ["cuda"], with_flashrnn=False)
    assert [p.name for p in provs] == ["nn.RNN", "auto", "cuda:t_one", "cuda:t_two"]
    assert any("t_three" in n and "not compiled" in n for n in notes)

    case = Case(T=5, B=3, H=6, modes=("fwd", "fwd+bwd"))
    runner = Runner(torch.device("cpu"), provs, PRESET_CONFIG["tiny"])
    runner.run_case(case)
    rows = {(r.provider, r.mode): r for r in runner.rows}
    for mode in case.modes:
        assert rows[("cuda:t_one", mode)].status == "ok" and not rows[("cuda:t_one", mode)].heuristic
        assert rows[("cuda:t_two", mode)].status == "ok" and rows[("cuda:t_two", mode)].heuristic
    assert set(calls) == {"t_one", "t_two"}  # each provider's forced tier reached the backend
    assert os.environ["FUSED_RNN_CUDA_TIER"] == "t_one"


def test_unverified_tiers_are_timed_on_a_gpu_only_when_named(monkeypatch):
    """On a CUDA device a tier off the GPU-verified list (csrc/cuda/gpu_verified.h) is skipped with a note unless
    named as backend:tier -- naming the backend is not enough; a listed tier comes with the backend's name. On the
    CPU nothing changes."""
    from fused_rnn.backends import select, verified

    fake = _fake_tiered_backend([])
    fake.supports_device = lambda device: True
    real_module = select._module
    monkeypatch.setattr(select, "_module", lambda name: fake if name == "cuda" else real_module(name))
    monkeypatch.setattr(verified, "GPU_VERIFIED", {"cuda": ("t_two",), "triton": ()})
    names = lambda provs: [p.name for p in provs if p.backend == "cuda"]

    provs, notes = discover(torch.device("cuda"), ["cuda"], with_flashrnn=False)
    assert names(provs) == ["cuda:t_two", "cuda:t_two+streams"]
    assert any("cuda:t_one" in n and "GPU-verified" in n for n in notes), notes
    provs, notes = discover(torch.device("cuda"), None, with_flashrnn=False)
    assert names(provs) == ["cuda:t_two", "cuda:t_two+streams"]
    provs, notes = discover(torch.device("cuda"), ["cuda", "cuda:t_one"], with_flashrnn=False)
    assert names(provs) == ["cuda:t_one", "cuda:t_one+streams", "cuda:t_two", "cuda:t_two+streams"]
    assert not any("GPU-verified" in n for n in notes)
    provs, notes = discover(torch.device("cuda"), ["cuda:t_two"], with_flashrnn=False)  # t_one not asked for: no note
    assert names(provs) == ["cuda:t_two"] and not any("GPU-verified" in n for n in notes)
    provs, _ = discover(torch.device("cpu"), ["cuda"], with_flashrnn=False)
    assert names(provs) == ["cuda:t_one", "cuda:t_two"]


def test_streams_twins_only_on_cuda_and_only_for_bidirectional_cases(monkeypatch):
    """A `<tier>+streams` twin per tier on a CUDA device (none on the CPU); it runs only bidirectional cases, with
    FUSED_RNN_CONCURRENT_DIRECTIONS=1, and every other provider runs with it 0; the caller's value is restored."""
    from fused_rnn.backends import select

    fake = _fake_tiered_backend([])
    real_module = select._module
    monkeypatch.setattr(select, "_module", lambda name: fake if name == "cuda" else real_module(name))
    monkeypatch.setenv("FUSED_RNN_CONCURRENT_DIRECTIONS", "auto")
    fake.supports_device = lambda device: True  # pretend the fake tiers run on a CUDA device
    # on a GPU, tiers off the verified list are timed only when named (the fake ones are on no list)
    provs, _ = discover(torch.device("cuda"), ["cuda", "cuda:t_one", "cuda:t_two"], with_flashrnn=False)
    assert [p.name for p in provs] == ["nn.RNN", "auto", "cuda:t_one", "cuda:t_one+streams", "cuda:t_two",
                                       "cuda:t_two+streams"]
    cpu_provs, _ = discover(torch.device("cpu"), ["cuda"], with_flashrnn=False)
    assert not any(p.streams for p in cpu_provs)

    twin = next(p for p in provs if p.name == "cuda:t_one+streams")
    plain = next(p for p in provs if p.name == "cuda:t_one")
    assert twin.applicable(Case(T=3, B=2, H=4, layers=1, bidirectional=True), 10**6) == (True, "")
    ok, why = twin.applicable(Case(T=3, B=2, H=4), 10**6)
    assert not ok and "bidirectional" in why
    assert plain.applicable(Case(T=3, B=2, H=4), 10**6)[0]
    for p, want in ((twin, "1"), (plain, "0")):
        with p.environment():
            assert os.environ["FUSED_RNN_CONCURRENT_DIRECTIONS"] == want
            assert os.environ["FUSED_RNN_CUDA_TIER"] == "t_one"
    assert os.environ["FUSED_RNN_CONCURRENT_DIRECTIONS"] == "auto"
    assert twin.heuristic_tier(Case(T=3, B=2, H=4, bidirectional=True), torch.device("cpu")) is None


def test_precision_sets_both_tf32_flags_and_restores_them():
    from bench.runner import precision, tf32_flags

    before = tf32_flags()
    for on in (True, False):
        with precision(on):
            assert tf32_flags() == {"cudnn.allow_tf32": on, "cuda.matmul.allow_tf32": on,
                                    "fused_rnn.allow_tf32()": on}
    assert tf32_flags() == before


def test_watchdog_reports_a_stall_and_exits_3():
    import threading

    stalls, exits, fired = [], [], threading.Event()

    def on_exit(code):
        exits.append(code)
        fired.set()

    wd = cli.Watchdog(0.3, lambda what, idle: stalls.append((what, idle)), exit_fn=on_exit)
    wd.beat("timing cuda:persistent fwd")
    assert fired.wait(5.0), "the watchdog did not fire"
    wd.stop()
    assert exits == [3]
    assert stalls[0][0] == "timing cuda:persistent fwd" and stalls[0][1] > 0.3


def test_watchdog_stays_quiet_while_beats_come():
    import time

    exits = []
    wd = cli.Watchdog(0.5, lambda what, idle: None, exit_fn=exits.append)
    for i in range(8):
        wd.beat(f"step {i}")
        time.sleep(0.1)
    wd.stop()
    assert exits == []


HANGING_RUN = """
import sys, time
import bench.providers as bp
from bench import cli

class Hanging(bp.Provider):
    def build(self, state_dict, case, device):
        time.sleep(60)  # a kernel that never returns, as far as the bench can tell

real = bp.discover
bp.discover = lambda d, w, f: (real(d, w, f)[0] + [Hanging("hanging", "fused", backend="reference")], [])
sys.exit(cli.main(sys.argv[1:]))
"""


def test_a_hang_ends_the_run_with_status_3_and_a_report(tmp_path):
    proc = subprocess.run([sys.executable, "-c", HANGING_RUN, "--preset", "tiny", "--out", str(tmp_path),
                           "--device", "cpu", "--backends", "reference", "--stall-s", "8"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "STALLED" in proc.stderr and "checking hanging" in proc.stderr
    data = json.loads((tmp_path / report.JSON_NAME).read_text())
    assert data["finished"] is False
    assert any("STALLED" in n for n in data["env"]["provider_notes"])
    assert "STALLED" in (tmp_path / report.MD_NAME).read_text()


# ------------------------------------------------------------------ the gate: h_n, dx, each weight gradient (#26)

class _GradScale(torch.autograd.Function):
    """Identity forward; the gradient scaled by s (a backward that is wrong in one place only)."""

    @staticmethod
    def forward(ctx, t, s):
        ctx.s = s
        return t.clone()

    @staticmethod
    def backward(ctx, g):
        return g * ctx.s, None


class _ValueScale(torch.autograd.Function):
    """Forward scaled by s; the gradient passed through unchanged (a value that is wrong in one place only)."""

    @staticmethod
    def forward(ctx, t, s):
        return t * s

    @staticmethod
    def backward(ctx, g):
        return g, None


class _Tampered(nn.Module):
    """A correct module (the reference backend) with exactly one thing wrong, by a relative 1e-3."""

    def __init__(self, inner: nn.Module, what: str, eps: float = 1e-3) -> None:
        super().__init__()
        self.inner, self.what, self.s = inner, what, 1 + eps

    def forward(self, x):
        if self.what == "dx":
            x = _GradScale.apply(x, self.s)
        if self.what == "weight":
            params = dict(self.inner.named_parameters())
            params["weight_hh_l1_reverse"] = _GradScale.apply(params["weight_hh_l1_reverse"], self.s)
            out, h = torch.func.functional_call(self.inner, params, (x,))
        else:
            out, h = self.inner(x)
        if self.what == "h_n":
            h = _ValueScale.apply(h, self.s)
        if self.what == "h_n-grad":
            h = h.detach() + 0.0 * h  # right values, a zero gradient through h_n
        return out, h

    def named_parameters(self, *a, **k):  # nn.RNN's names, as the bench's gradient check expects
        return self.inner.named_parameters(*a, **k)


class _TamperedProvider(Provider):
    def build(self, state_dict, case, device):
        inner = Provider("x", "fused", backend="reference").build(state_dict, case, device)
        return _Tampered(inner, self.name)


GATE_CASE = Case(T=5, B=3, H=6, layers=2, bidirectional=True, modes=("fwd", "fwd+bwd"))


@pytest.mark.parametrize(("what", "caught_in"), [("h_n", {"h_n"}), ("h_n-grad", {"dx", "dW"}), ("dx", {"dx"}),
                                                 ("weight", {"dW"})],
                         ids=["h_n-value", "h_n-gradient-path", "dx", "one-weight-gradient"])
def test_gate_catches_a_provider_wrong_in_one_place(what: str, caught_in: set[str]):
    """Each provider is wrong in exactly one place; the check fails it there and nowhere else (so it is that
    quantity, not noise, that the gate judged)."""
    runner = Runner(torch.device("cpu"), [Provider("nn.RNN", "baseline"), _TamperedProvider(what, "fused",
                                                                                          backend="reference")],
                    PRESET_CONFIG["tiny"])
    runner.run_case(GATE_CASE)
    rows = [r for r in runner.rows if r.provider == what]
    assert rows and all(r.status == "FAILED" and r.timing is None for r in rows)
    c = rows[0].check
    over = {k for k in c.errors if c.errors[k] > c.tolerances[k]}
    assert over == caught_in, (c.errors, c.tolerances)


def test_gate_passes_the_untampered_module():
    runner = Runner(torch.device("cpu"), [Provider("nn.RNN", "baseline"), _TamperedProvider("none", "fused",
                                                                                          backend="reference")],
                    PRESET_CONFIG["tiny"])
    runner.run_case(GATE_CASE)
    assert all(r.status == "ok" for r in runner.rows)


class _RefusingTier(Provider):
    def build(self, state_dict, case, device):
        raise ValueError(f"tier {self.tier!r} cannot take H={case.H}")


def test_a_forced_tier_raising_value_error_is_unsupported_not_a_failure(tmp_path, monkeypatch):
    """A forced tier that refuses the shape with ValueError is reported as unsupported (no failure, exit 0); the same
    ValueError from a provider with no forced tier is an ERROR."""
    runner = Runner(torch.device("cpu"), [Provider("nn.RNN", "baseline"),
                                          _RefusingTier("cuda:t_x", "fused", backend="cuda", tier="t_x"),
                                          _RefusingTier("plain", "fused", backend="reference")],
                    PRESET_CONFIG["tiny"])
    runner.run_case(Case(T=4, B=2, H=5))
    by = {(r.provider, r.mode): r for r in runner.rows}
    for mode in ("fwd", "fwd+bwd"):
        assert by[("cuda:t_x", mode)].status == "unsupported" and "cannot take H=5" in by[("cuda:t_x", mode)].note
        assert by[("plain", mode)].status == "ERROR"
    assert {r.provider for r in report.failures(runner.rows)} == {"plain"}

    import bench.providers as bp

    real = bp.discover
    monkeypatch.setattr(bp, "discover", lambda d, w, f: (real(d, w, f)[0] + [
        _RefusingTier("cuda:t_x", "fused", backend="cuda", tier="t_x")], []))
    assert cli.main(["--preset", "tiny", "--out", str(tmp_path), "--device", "cpu", "--backends", "reference"]) == 0
    rows = json.loads((tmp_path / report.JSON_NAME).read_text())["rows"]
    assert {r["status"] for r in rows if r["provider"] == "cuda:t_x"} == {"unsupported"}


class _OffByOneUlp(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        out, h = self.inner(x)
        return torch.nextafter(out, torch.full_like(out, 2.0)), h

    def named_parameters(self, *a, **k):
        return self.inner.named_parameters(*a, **k)


class _NearlyNative(Provider):
    def build(self, state_dict, case, device):
        return _OffByOneUlp(Provider("n", "native", backend="native").build(state_dict, case, device))


def test_native_must_equal_nn_rnn_bit_for_bit():
    """One ulp off passes the tolerance rule but not native's bit-for-bit check; the real native passes both."""
    runner = Runner(torch.device("cpu"), [Provider("nn.RNN", "baseline"), Provider("native", "native",
                                                                                   backend="native"),
                                          _NearlyNative("ulp", "native", backend="native")], PRESET_CONFIG["tiny"])
    runner.run_case(Case(T=6, B=3, H=7, layers=2))
    by = {(r.provider, r.mode): r for r in runner.rows}
    for mode in ("fwd", "fwd+bwd"):
        assert by[("native", mode)].status == "ok" and by[("native", mode)].timing is not None
        bad = by[("ulp", mode)]
        assert bad.status == "FAILED" and "differs from nn.RNN" in bad.note and "out" in bad.note
        assert bad.check.worst_ratio <= 1  # the tolerance alone would have passed it


def test_auto_rows_native_asserted_fused_timed(monkeypatch):
    """Where auto runs native (forward here) its row is asserted and timed, judged by the native rule (fused_rnn's
    per-call cost); where it runs fused (training here) it is timed in the interleaved rounds with per-round ratios and
    the fused verdict; the summary counts both with their measured ratios."""
    from fused_rnn import policy
    from fused_rnn.backends import select

    def fake(device_type, dtype, B, H, layers, directions, training, *rest):
        if training:
            return policy.Decision("reference", "", "test-fused", "fused for the test")
        return policy.Decision("native", "", "test-native", "native for the test")

    monkeypatch.setattr(select, "_decide_cached", fake)
    runner = Runner(torch.device("cpu"), [Provider("nn.RNN", "baseline"), Provider("auto", "auto", backend="auto")],
                    PRESET_CONFIG["tiny"])
    runner.run_case(Case(T=4, B=2, H=5))
    from bench.runner import derive

    derive(runner.rows, None)
    by = {(r.provider, r.mode): r for r in runner.rows}
    fwd, train = by[("auto", "fwd")], by[("auto", "fwd+bwd")]
    assert (fwd.path, fwd.path_rule) == ("native", "test-native") and fwd.timing is not None
    assert len(fwd.ratios) == PRESET_CONFIG["tiny"].rounds
    assert fwd.verdict in ("native", "native, slower")
    assert train.path == "reference" and train.path_rule == "test-fused" and train.timing is not None
    assert len(train.ratios) == PRESET_CONFIG["tiny"].rounds and train.verdict in ("≥ nn.RNN", "slower")
    s = report.summary(runner.rows)
    assert (s["rows"], s["native_asserted"], s["timed"]) == (2, 1, 1)
    assert s["worst"] == pytest.approx(min(fwd.ratio_median, train.ratio_median))
    assert s["geomean"] == pytest.approx((fwd.ratio_median * train.ratio_median) ** 0.5)
    md = report.markdown({"device": "cpu", "device_name": "x", "date_utc": "2026-12-01", "preset": "tiny",
                          "torch": "t", "cuda": None, "cudnn": None, "triton": None, "python": "3",
                          "cpu_threads": 2, "git_commit": None, "git_dirty": False, "available_backends": []},
                         runner.rows, None, [])
    assert "auto → native" in md and f"{fwd.ratio_median:.2f}× (native)" in md and "native for the test" in md


@pytest.mark.parametrize("native_when_short", [True, False],
                         ids=["check-native-timed-fused", "check-fused-timed-native"])
def test_auto_row_follows_the_path_at_the_timed_T(monkeypatch, native_when_short: bool):
    """The policy looks at T (rule 7), and the check runs at check_T < T: the row must report, and time or assert,
    the path of the timed call. A T-dependent stand-in policy sends T < 8 one way and T >= 8 the other; check_T = 4,
    T = 16 -- so the check's call and the timed call take different paths, either way round."""
    from fused_rnn import policy
    from fused_rnn.backends import select

    def fake(device_type, dtype, B, H, layers, directions, training, fused, isa, threads, capability, fused_tf32,
             cudnn_tf32, T=None, core=""):
        short = T is not None and T < 8  # select passes T = None from rule 7's floor on (one cache entry)
        if short == native_when_short:
            return policy.Decision("native", "", "test-native", "native for the test")
        return policy.Decision("reference", "", "test-fused", "fused for the test")

    monkeypatch.setattr(select, "_decide_cached", fake)
    runner = Runner(torch.device("cpu"), [Provider("nn.RNN", "baseline"), Provider("auto", "auto", backend="auto")],
                    PRESET_CONFIG["tiny"])
    runner.run_case(Case(T=16, B=2, H=5, check_T=4))
    by = {(r.provider, r.mode): r for r in runner.rows}
    for mode in ("fwd", "fwd+bwd"):
        r = by[("auto", mode)]
        assert r.status == "ok", r.note
        if native_when_short:  # the timed call (T = 16) runs fused although the check's (T = 4) ran native: timed
            assert (r.path, r.path_rule) == ("reference", "test-fused") and r.timing is not None
        else:  # the timed call runs native although the check's ran fused: asserted bit for bit, timed as native
            assert (r.path, r.path_rule, r.verdict) == ("native", "test-native", "native")
            assert r.timing is not None and r.ratios


def test_summary_and_verdict_rule():
    from bench.runner import Row, verdict

    assert verdict([1.0] * 10)[2] == "≥ nn.RNN"
    assert verdict([1.2] * 7 + [0.5] * 3)[2] == "slower"       # p20 drops below 0.95
    assert verdict([0.99] * 10)[2] == "slower"                 # median below 1.0
    assert verdict([0.96] * 2 + [1.1] * 8)[2] == "≥ nn.RNN"
    assert verdict([0.98] * 10, native=True)[2] == "native"   # a native row: fused_rnn's cost within 3%
    assert verdict([0.95] * 10, native=True)[2] == "native, slower"  # below 0.97, and slower in every round
    assert verdict([0.9] * 6 + [1.1] * 4, native=True)[2] == "native"  # median 0.9 but p80 1.1: noise, not a cost
    c = Case(T=4, B=2, H=5)
    rows = [Row(c, "fwd", "auto", "ok", verdict="native"),
            Row(c, "fwd+bwd", "auto", "ok", ratio_median=4.0, ratio_p20=3.0, verdict="≥ nn.RNN"),
            Row(Case(T=4, B=3, H=5), "fwd", "auto", "ok", ratio_median=0.5, ratio_p20=0.4, verdict="slower"),
            Row(c, "fwd", "cpu", "ok", ratio_median=0.1, ratio_p20=0.1, verdict="slower")]  # not auto: not counted
    s = report.summary(rows)
    assert (s["worst"], s["rows"], s["verdict"]) == (0.5, 3, "FAIL")
    assert s["geomean"] == pytest.approx((1.0 * 4.0 * 0.5) ** (1 / 3))
    assert "T4 B3 H5 fp32 fwd" in s["failing"][0]
    line = report.summary_line(s)
    assert line.startswith("auto vs nn.RNN: worst ×0.50, geometric mean ×1.26 over 3 rows") and "FAIL" in line
    assert report.summary(rows[:2])["verdict"] == "PASS"
    # timed native rows count with their measured ratio; one below the native rule fails the map
    timed = [Row(c, "fwd", "auto", "ok", ratio_median=0.98, ratio_p20=0.9, verdict="native"),
             Row(c, "fwd+bwd", "auto", "ok", ratio_median=0.9, ratio_p20=0.8, verdict="native, slower")]
    s = report.summary(timed)
    assert (s["worst"], s["native_asserted"], s["timed"], s["verdict"]) == (0.9, 2, 0, "FAIL")
    assert len(s["failing"]) == 1 and "(native): median ×0.90" in s["failing"][0]
    assert report.summary(timed[:1])["verdict"] == "PASS"


def test_interleaved_timing_rotates_repeats_and_drops_a_failure():
    calls: list[str] = []

    def make(name, fail_at=None):
        def fn():
            calls.append(name)
            if fail_at is not None and calls.count(name) >= fail_at:
                raise RuntimeError("boom")
        return fn

    import contextlib

    entered = []

    @contextlib.contextmanager
    def ctx():
        entered.append(1)
        yield

    fns = {"a": make("a"), "b": make("b"), "c": make("c", fail_at=4)}
    samples, errors = bench_timing.time_interleaved(fns, rounds=3, min_sample_s=0.0, device=torch.device("cpu"),
                                                    contexts={"a": ctx})
    assert errors == {"c": "RuntimeError: boom"}
    # min_sample_s=0: one warm-up call each, one call per sample; round r starts at the r-th function; c raises on
    # its 4th call (round 3) and is dropped, the others finish their rounds
    assert calls == ["a", "b", "c"] + ["a", "b", "c"] + ["b", "c", "a"] + ["c", "a", "b"]
    assert len(samples["a"]) == len(samples["b"]) == 3 and len(samples["c"]) == 2
    assert len(entered) == 1 + 3  # a's context around its warm-up and each of its samples
    # a slow-enough sample repeats a fast call
    calls.clear()
    samples, _ = bench_timing.time_interleaved({"a": make("a")}, rounds=2, min_sample_s=0.05,
                                               device=torch.device("cpu"))
    assert len(samples["a"]) == 2 and len(calls) > 4


def test_calibrate_sizes_T_from_nn_rnn():
    runner = Runner(torch.device("cpu"), [Provider("nn.RNN", "baseline")], PRESET_CONFIG["tiny"])
    c = Case(T=16, B=2, H=8, target_s=1e-9, check_T=4)
    got = runner.calibrate(c)
    assert got.T == 8 and got.key == c.key and got.check_T == 4  # clamped at the smallest T
    assert runner.calibrate(Case(T=16, B=2, H=8)).T == 16  # no target: unchanged


def test_flags_set_threads_and_omp_wait_policy(tmp_path):
    """Only on request: --threads and --omp-wait-policy are applied (OMP before torch loads) and recorded."""
    proc = _run_cli(["--preset", "tiny", "--out", str(tmp_path), "--device", "cpu", "--backends", "nn.RNN",
                     "--threads", "1", "--omp-wait-policy", "PASSIVE"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    env = json.loads((tmp_path / report.JSON_NAME).read_text())["env"]
    assert env["cpu_threads"] == 1 and env["threads_flag"] == 1
    assert env["omp_wait_policy"] == "PASSIVE" and env["omp_wait_policy_flag"] == "PASSIVE"
    assert any("set by --omp-wait-policy before torch loaded" in n for n in env["provider_notes"])
