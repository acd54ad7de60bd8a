"""``python -m fused_rnn`` / ``fused_rnn.show_config()``: the bug-report block, checked on a CPU-only process."""

from __future__ import annotations

import importlib.metadata
import io
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import fused_rnn
from fused_rnn import _config
from fused_rnn.backends import select


def _run_module(tmp_path, *args: str) -> str:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    env.pop("FUSED_RNN_BACKEND", None)
    proc = subprocess.run([sys.executable, "-m", "fused_rnn", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"python -m fused_rnn failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def report_text(tmp_path_factory) -> str:
    return _run_module(tmp_path_factory.mktemp("cfg"))


def test_text_report_on_a_cpu_only_process(report_text: str) -> None:
    text = report_text
    assert text.startswith(f"fused_rnn {fused_rnn.__version__}  (")
    assert f"torch {torch.__version__}, CUDA {torch.version.cuda or '-'}, cuDNN " in text
    triton = None
    try:
        triton = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        pass
    assert f"Triton {triton or '-'}" in text
    for name in select.BACKEND_NAMES:
        assert f"\n  {name:<10} " in text, f"backend {name} missing from the report"
    assert "\n  reference  available" in text
    assert select.GPU_VERIFIED_REPORT in text
    assert "no CUDA device: " in text  # CUDA_VISIBLE_DEVICES="" in the subprocess: it must say why none is listed
    assert "auto picks" in text
    for B, H, dtype in _config.SAMPLE_SHAPES:
        for mode in ("inference", "training "):
            assert f"cpu     B={B:<4} H={H:<5} {str(dtype).removeprefix('torch.'):<9} {mode} -> " in text
    if fused_rnn._ext.LOADED:
        assert "extension fused_rnn._C: loaded" in text
        assert f"built against: torch {torch.__version__}" in text


def test_json_report_agrees_with_the_library(tmp_path) -> None:
    r = json.loads(_run_module(tmp_path, "--json"))
    assert r["fused_rnn"]["version"] == fused_rnn.__version__
    assert r["torch"]["version"] == torch.__version__
    assert r["torch"]["cuda"] == torch.version.cuda
    here = fused_rnn.available_backends()
    assert [b["name"] for b in r["backends"] if b["available"]] == here
    for b in r["backends"]:
        assert b["available"] or b["why_not"], f"backend {b['name']} unavailable without a reason"
    assert r["cuda_tiers_compiled"] == list(fused_rnn.backends.cuda.compiled_tiers())
    assert r["gpu_verified"]["tiers"] == {k: list(v) for k, v in select.GPU_VERIFIED.items()}
    assert r["devices"]["cuda_devices"] == []
    # the picks are what the module's own path choice gives for a call of that shape (explain is wired to it)
    cpu_picks = [(a["B"], a["H"], a["dtype"], a["mode"], a["pick"]) for a in r["auto_picks"] if a["device"] == "cpu"]
    want = []
    for B, H, dtype in _config.SAMPLE_SHAPES:
        for training in (False, True):
            d = select.choose_path("auto", torch.device("cpu"), dtype, B, H, 1, 1, training, record=False)
            want.append((B, H, str(dtype).removeprefix("torch."), "training" if training else "inference", d.path))
    assert cpu_picks == want
    assert all(a["why"].startswith(a["pick"] + ": ") for a in r["auto_picks"])
    assert r["extension"]["loaded"] == fused_rnn._ext.LOADED


def test_environment_overrides_are_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUSED_RNN_BACKEND", "reference")
    out = io.StringIO()
    fused_rnn.show_config(file=out)
    text = out.getvalue()
    assert "FUSED_RNN_BACKEND=reference" in text
    # the override changes what auto runs, and the reason says where it came from
    assert "cpu     B=16   H=256   float32   training  -> reference" in text
    assert "forced by FUSED_RNN_BACKEND=reference" in text


def test_gpu_devices_are_listed_with_capability(monkeypatch: pytest.MonkeyPatch) -> None:
    """The device section on a (faked) two-GPU machine: one verified capability, one not. No GPU is touched."""
    props = [SimpleNamespace(name="NVIDIA H200", major=9, minor=0, total_memory=141 * 2**30, multi_processor_count=132),
             SimpleNamespace(name="NVIDIA A100", major=8, minor=0, total_memory=80 * 2**30, multi_processor_count=108)]
    monkeypatch.setattr(torch.version, "cuda", torch.version.cuda or "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(props))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props[i])
    def cap(d):
        p = props[d if isinstance(d, int) else d.index]
        return p.major, p.minor

    monkeypatch.setattr(torch.cuda, "get_device_capability", cap)
    monkeypatch.setattr(select, "_capability", cap)  # its lru_cache may hold this machine's answer
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_90"])
    monkeypatch.setattr(torch._C, "_cuda_getDriverVersion", lambda: 13000, raising=False)
    text = _config.format_report(_config.collect())
    assert "devices: cpu, cuda:0, cuda:1" in text
    assert "cuda:0  NVIDIA H200, compute capability 9.0, 141.0 GiB, 132 SMs, GPU-verified: yes" in text
    assert "cuda:1  NVIDIA A100, compute capability 8.0, 80.0 GiB, 108 SMs, GPU-verified: no" in text
    for dev in ("cuda:0", "cuda:1"):
        picks = [line for line in text.splitlines() if line.startswith(f"  {dev:<7} B=")]
        assert len(picks) == 2 * len(_config.SAMPLE_SHAPES)  # inference and training per sample shape
    # cuda:1 (sm_80) is not verified: native, and the reason says so
    assert "native: no fused tier is verified on compute capability sm_80" in text


def test_a_failing_probe_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> None:
        raise OSError("probe failed")

    monkeypatch.setattr(_config, "_devices", boom)
    text = _config.format_report(_config.collect())
    assert "<error: OSError: probe failed>" in text
