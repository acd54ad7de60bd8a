"""The `auto` policy for CUDA tensors: only GPU-verified tiers, only on the compute capability they passed on."""

from __future__ import annotations

import os

import pytest
import torch

from fused_rnn.backends import cuda as cuda_backend
from fused_rnn.backends import select

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_verified_tiers_exist_and_have_a_report() -> None:
    """Every verified tier is a real tier, and the named report exists and mentions it."""
    assert set(select.GPU_VERIFIED["cuda"]) <= set(cuda_backend.TIERS)
    if any(select.GPU_VERIFIED.values()):
        path = os.path.join(ROOT, select.GPU_VERIFIED_REPORT)
        assert os.path.isfile(path), path
        text = open(path, encoding="utf-8").read()
        for tiers in select.GPU_VERIFIED.values():
            for t in tiers:
                assert f"`{t}`" in text, t


@pytest.mark.parametrize(("cap", "expected"), [((9, 0), "cuda"), ((8, 0), "reference"), ((10, 0), "reference")],
                         ids=["sm90", "sm80", "sm100"])
def test_auto_on_cuda_only_on_verified_capability(monkeypatch: pytest.MonkeyPatch, cap: tuple[int, int],
                                                  expected: str) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: cap)
    monkeypatch.setattr(cuda_backend, "available", lambda: (True, ""))
    assert select._auto(torch.device("cuda")) == expected


def test_auto_replaces_an_unverified_tier(monkeypatch: pytest.MonkeyPatch) -> None:
    """If the heuristic picks a tier not on the verified list, auto runs the verified fallback instead."""
    monkeypatch.setattr(select, "_resolve_name", lambda backend, device_type: ("cuda", "", True, True))
    monkeypatch.setattr(cuda_backend, "pick_tier", lambda H, B, dtype, device: "batch_tiled")
    choice = select.resolve("auto", torch.device("cuda"), 64, 1, torch.float32)
    assert choice.backend == "cuda" and choice.tier == "fallback"
    # an explicit backend="cuda" keeps the heuristic's choice
    monkeypatch.setattr(select, "_resolve_name", lambda backend, device_type: ("cuda", "", False, True))
    assert select.resolve("cuda", torch.device("cuda"), 64, 1, torch.float32).tier == "batch_tiled"


# ----------------------------------------------------------------------------------------------------------------
# Module level: select.choose_path (fused stack or native) with this process's facts injected -- no GPU needed.

def _fake_cuda(monkeypatch: pytest.MonkeyPatch, cap: tuple[int, int], cuda_ok: bool) -> None:
    """Pretend a CUDA device of capability ``cap``; the cuda backend usable or not."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: cap)
    monkeypatch.setattr(select, "_capability", lambda index: cap)
    monkeypatch.setattr(cuda_backend, "available", lambda: (True, "") if cuda_ok else (False, "no GPU"))
    monkeypatch.delenv("FUSED_RNN_BACKEND", raising=False)
    monkeypatch.delenv("FUSED_RNN_CUDA_TIER", raising=False)


def _path(d) -> str:
    return d.path + (f":{d.tier}" if d.tier else "")


@pytest.mark.parametrize(("cap", "dtype", "B", "H", "training", "cuda_ok", "want", "rule"), [
    ((8, 0), torch.float32, 1, 256, False, True, "native", "unverified-gpu"),
    ((10, 0), torch.bfloat16, 1, 256, False, True, "native", "unverified-gpu"),
    ((9, 0), torch.float64, 1, 256, True, True, "native", "fp64-gpu"),
    ((9, 0), torch.bfloat16, 1, 256, False, True, "cuda:cluster", "measured-win"),
    ((9, 0), torch.bfloat16, 256, 1024, False, True, "native", "measured-loss"),
    ((9, 0), torch.bfloat16, 1, 256, False, False, "native", "no-fast-fused"),
], ids=["sm80", "sm100-bf16", "fp64", "sm90-bf16-small", "sm90-bf16-large", "sm90-no-cuda-build"])
def test_choose_path_on_cuda_with_injected_capability(monkeypatch, cap, dtype, B, H, training, cuda_ok, want,
                                                      rule) -> None:
    _fake_cuda(monkeypatch, cap, cuda_ok)
    d = select.choose_path("auto", torch.device("cuda"), dtype, B, H, 1, 1, training)
    assert (_path(d), d.rule) == (want, rule), str(d)


def test_choose_path_fp32_follows_the_tf32_settings(monkeypatch) -> None:
    """fp32 on a verified GPU: with cuDNN's TF32 on and fused_rnn's off (torch's defaults) native is no
    same-precision candidate; with both IEEE the committed IEEE figures decide."""
    _fake_cuda(monkeypatch, (9, 0), True)
    monkeypatch.setattr(select, "cudnn_rnn_tf32", lambda: True)
    monkeypatch.setattr("fused_rnn.precision.allow_tf32", lambda: False)
    assert select.choose_path("auto", torch.device("cuda"), torch.float32, 256, 64, 1, 1, False).rule == "precision"
    monkeypatch.setattr(select, "cudnn_rnn_tf32", lambda: False)
    d = select.choose_path("auto", torch.device("cuda"), torch.float32, 1, 1024, 1, 1, False)
    assert _path(d) == "cuda:persistent"


def test_choose_path_forced_and_special_cases(monkeypatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.delenv("FUSED_RNN_BACKEND", raising=False)
    args = (cpu, torch.float32, 1, 64, 1, 1, False)
    assert (select.choose_path("native", *args).path, select.choose_path("native", *args).rule) == ("native",
                                                                                                    "forced")
    assert select.choose_path("reference", *args).path == "reference"
    # record_bptt: auto stays fused, native refuses
    assert select.choose_path("auto", *args, recording_bptt=True).rule == "diagnostics"
    with pytest.raises(RuntimeError, match="record_bptt"):
        select.choose_path("native", *args, recording_bptt=True)
    # under compile auto is fused without asking the policy
    monkeypatch.setattr(select, "_policy_decision", lambda *a: pytest.fail("policy consulted while compiling"))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert select.choose_path("auto", *args).rule == "compile"
    # the environment replaces auto, native included; a bad value is a clear error
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)
    monkeypatch.setenv("FUSED_RNN_BACKEND", "native")
    assert select.choose_path("auto", *args).path == "native"
    monkeypatch.setenv("FUSED_RNN_BACKEND", "nativ")
    with pytest.raises(ValueError, match="FUSED_RNN_BACKEND='nativ'.*'native'"):
        select.choose_path("auto", *args)


def test_a_forced_tier_environment_wins_over_the_policy(monkeypatch) -> None:
    _fake_cuda(monkeypatch, (9, 0), True)
    monkeypatch.setattr(select, "_policy_decision", lambda *a: pytest.fail("policy consulted with a forced tier"))
    monkeypatch.setenv("FUSED_RNN_CUDA_TIER", "fallback")
    d = select.choose_path("auto", torch.device("cuda"), torch.bfloat16, 1, 256, 1, 1, False)
    assert (_path(d), d.rule) == ("cuda:fallback", "forced-tier")


def test_policy_tier_reaches_every_layer_direction(monkeypatch) -> None:
    """A tier the module-level policy picks (e.g. cuda:cluster on an H200) is what each layer-direction's recurrence
    runs: a fake tiered backend on CPU tensors records the tier of every call."""
    import types

    import fused_rnn
    from fused_rnn import policy
    from fused_rnn.backends import reference

    calls: list[str] = []

    def fwd(P, h0, w_hh, lengths, reverse, nonlinearity, tier="", allow_tf32=False):
        calls.append(tier)
        return reference.forward(P, h0, w_hh, lengths, reverse, nonlinearity)

    def bwd(dY, dh_n, Y, w_hh, lengths, reverse, nonlinearity, tier="", allow_tf32=False):
        calls.append("bwd:" + tier)
        return reference.backward(dY, dh_n, Y, w_hh, lengths, reverse, nonlinearity)

    fake = types.SimpleNamespace(NAME="cuda", TIERS=("t_one", "t_two"), available=lambda: (True, ""),
                                 supports_device=lambda device: True, pick_tier=lambda *a: "t_one",
                                 forward=fwd, backward=bwd)
    real_module = select._module
    monkeypatch.setattr(select, "_module", lambda name: fake if name == "cuda" else real_module(name))
    monkeypatch.setattr(select, "_decide_cached", lambda *a: policy.Decision("cuda", "t_two", "test", "test"))
    m = fused_rnn.RNN(3, 4, num_layers=2, bidirectional=True).double()
    ref = torch.nn.RNN(3, 4, num_layers=2, bidirectional=True).double()
    ref.load_state_dict(m.state_dict())
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    out, h_n = m(x)
    (out.sum() + h_n.sum()).backward()
    assert sorted(calls) == sorted(["t_two"] * 4 + ["bwd:t_two"] * 4)
    want, want_h = ref(x)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(h_n, want_h)
