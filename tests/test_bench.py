"""Tests of the benchmark suite (bench/): the CLI end to end on the tiny preset, the correctness gate, the
provider discovery, argument errors and the FLOP / floor arithmetic."""

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
from bench.cases import PRESET_CONFIG, Case, preset_cases  # noqa: E402
from bench.floor import floor_us_per_step, model_flops  # noqa: E402
from bench.providers import Provider, discover  # noqa: E402
from bench.runner import Runner  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run_cli(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("FUSED_RNN_BACKEND", None)
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


def test_tiny_json_environment_and_checks(tiny_run):
    proc, out = tiny_run
    data = json.loads((out / report.JSON_NAME).read_text())
    env = data["env"]
    for key in ("device_name", "torch", "cuda", "cudnn", "triton", "git_commit", "date_utc", "tf32_default",
                "available_backends", "cpu_threads"):
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
        assert r["tflops"] is None  # GPU-only column


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
    assert [p.name for p in provs] == ["nn.RNN"]  # the baseline is always kept
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
    quick = {(c.T, c.B, c.H) for c in preset_cases("quick", "cpu") if c.dtype == "fp32"}
    assert {(512, 1, 128), (256, 16, 256), (128, 64, 512)} <= quick
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
    assert [p.name for p in provs] == ["nn.RNN", "cuda:t_one", "cuda:t_two"]
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


def test_streams_twins_only_on_cuda_and_only_for_bidirectional_cases(monkeypatch):
    """A `<tier>+streams` twin per tier on a CUDA device (none on the CPU); it runs only bidirectional cases, with
    FUSED_RNN_CONCURRENT_DIRECTIONS=1, and every other provider runs with it 0; the caller's value is restored."""
    from fused_rnn.backends import select

    fake = _fake_tiered_backend([])
    real_module = select._module
    monkeypatch.setattr(select, "_module", lambda name: fake if name == "cuda" else real_module(name))
    monkeypatch.setenv("FUSED_RNN_CONCURRENT_DIRECTIONS", "auto")
    fake.supports_device = lambda device: True  # pretend the fake tiers run on a CUDA device
    provs, _ = discover(torch.device("cuda"), ["cuda"], with_flashrnn=False)
    assert [p.name for p in provs] == ["nn.RNN", "cuda:t_one", "cuda:t_one+streams", "cuda:t_two",
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
