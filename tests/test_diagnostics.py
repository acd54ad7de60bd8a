"""BPTT diagnostics (fused_rnn.diagnostics): recorded per-step norms equal autograd's, and nothing when off.

The oracle is a hand-written differentiable Elman loop in fp64 (plain torch ops, autograd does the BPTT) over the
same parameters as the module; ``retain_grad`` on every per-step state h_t and pre-activation a_t gives ∂L/∂h_t and
∂L/∂a_t, whose Frobenius norms over [B, H] are compared with what ``record_bptt`` recorded.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import fused_rnn
from fused_rnn import diagnostics
from fused_rnn.backends.select import backend_module


def _autograd_oracle(rnn: fused_rnn.RNN, x: Tensor, h0: Tensor, lengths: Tensor | None, w_out: Tensor,
                     w_hn: Tensor) -> tuple[dict, dict]:
    """x [T, B, I], h0 [L·D, B, H], lengths [B] | None -> ({(layer, dir): ‖∂L/∂h_t‖ [T]}, same for ∂L/∂a_t).

    L = Σ output ⊙ w_out + Σ h_n ⊙ w_hn, the same loss the module test uses. Padded steps keep the state and output
    0, as the backend contract says; a state computed at a padded step feeds nothing, so its gradient is 0.
    """
    T, B, _ = x.shape
    D = 2 if rnn.bidirectional else 1
    f = torch.tanh if rnn.nonlinearity == "tanh" else torch.relu
    valid = torch.ones(T, B, dtype=torch.bool) if lengths is None else torch.arange(T)[:, None] < lengths[None, :]
    hs: dict = {}
    As: dict = {}
    layer_in = x
    h_n = []
    for layer in range(rnn.num_layers):
        outs = []
        for d in range(D):
            sfx = f"_l{layer}{'_reverse' if d else ''}"
            w_ih, w_hh = getattr(rnn, "weight_ih" + sfx), getattr(rnn, "weight_hh" + sfx)
            b = getattr(rnn, "bias_ih" + sfx) + getattr(rnn, "bias_hh" + sfx)
            h = h0[layer * D + d]
            ys: list[Tensor | None] = [None] * T
            hs[(layer, d)], As[(layer, d)] = [None] * T, [None] * T
            for t in (range(T - 1, -1, -1) if d else range(T)):
                a = layer_in[t] @ w_ih.T + b + h @ w_hh.T
                a.retain_grad()
                h_t = f(a)
                h_t.retain_grad()
                hs[(layer, d)][t], As[(layer, d)][t] = h_t, a
                m = valid[t].unsqueeze(1)
                ys[t] = torch.where(m, h_t, torch.zeros_like(h_t))
                h = torch.where(m, h_t, h)
            outs.append(torch.stack(ys))
            h_n.append(h)
        layer_in = torch.cat(outs, 2) if D == 2 else outs[0]
    loss = (layer_in * w_out).sum() + (torch.stack(h_n) * w_hn).sum()
    loss.backward()
    norm = lambda ts: torch.stack([v.grad.norm() for v in ts])  # noqa: E731
    return {k: norm(v) for k, v in hs.items()}, {k: norm(v) for k, v in As.items()}


CASES = [
    pytest.param(1, False, None, id="L1-uni-T7-B3-H5"),
    pytest.param(1, True, [7, 3, 1], id="L1-bidir-lengths"),
    pytest.param(2, True, [7, 3, 1], id="L2-bidir-lengths"),
    pytest.param(2, True, None, id="L2-bidir-full"),
]


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("num_layers,bidirectional,lens", CASES)
def test_recorded_norms_equal_autograd(cpu_backend: str, num_layers: int, bidirectional: bool, lens, nonlinearity):
    T, B, I, H = 7, 3, 4, 5  # noqa: E741 (DESIGN.md's shape letters)
    rnn = fused_rnn.RNN(I, H, num_layers=num_layers, bidirectional=bidirectional, nonlinearity=nonlinearity,
                        backend=cpu_backend).double()
    D = 2 if bidirectional else 1
    x = torch.randn(T, B, I, dtype=torch.float64)
    h0 = torch.randn(num_layers * D, B, H, dtype=torch.float64)  # nonzero h0: the reverse scatter matters
    lengths = None if lens is None else torch.tensor(lens)
    w_out = torch.randn(T, B, D * H, dtype=torch.float64)
    w_hn = torch.randn(num_layers * D, B, H, dtype=torch.float64)

    want_h, want_a = _autograd_oracle(rnn, x, h0, lengths, w_out, w_hn)
    with diagnostics.record_bptt() as rec:
        out, h_n = rnn(x, h0, lengths=lengths)
        ((out * w_out).sum() + (h_n * w_hn).sum()).backward()
    got_h, got_a = rec.grad_h_norms(), rec.grad_a_norms()
    assert sorted(got_h) == sorted(want_h)
    assert len(rec.entries) == num_layers * D
    for key in want_h:
        torch.testing.assert_close(got_h[key], want_h[key], rtol=1e-10, atol=1e-12, msg=f"grad_h {key}")
        torch.testing.assert_close(got_a[key], want_a[key], rtol=1e-10, atol=1e-12, msg=f"grad_a {key}")


# the fast backends that take CPU tensors (conftest's list, less the reference)
FAST_CPU = [n for n in fused_rnn.available_backends()
            if n != "reference" and backend_module(n).supports_device(torch.device("cpu"))]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("backend", FAST_CPU or [pytest.param("cpu", marks=pytest.mark.skip(reason="cpu not built"))])
def test_low_precision_norms_within_reference_error(backend: str, dtype: torch.dtype):
    """DESIGN.md's tolerance rule: error vs the fp64 recording ≤ 2 × the reference backend's error in that dtype,
    plus a floor. The low-precision dA is what the norms are built from, so this judges dA and the rebuilt g."""
    T, B, I, H = 11, 3, 4, 17  # noqa: E741 (DESIGN.md's shape letters)
    base = fused_rnn.RNN(I, H, num_layers=2, bidirectional=True).double()
    x = torch.randn(T, B, I, dtype=torch.float64)
    lengths = torch.tensor([11, 6, 2])

    def record(name: str, dt: torch.dtype) -> dict:
        rnn = fused_rnn.RNN(I, H, num_layers=2, bidirectional=True, backend=name).to(dt)
        rnn.load_state_dict(base.state_dict())
        with diagnostics.record_bptt() as rec:
            out, h_n = rnn(x.to(dt), lengths=lengths)
            (out.double().square().sum() + h_n.double().sum()).backward()
        return {**{("h",) + k: v.double() for k, v in rec.grad_h_norms().items()},
                **{("a",) + k: v.double() for k, v in rec.grad_a_norms().items()}}

    oracle, ref, got = record("reference", torch.float64), record("reference", dtype), record(backend, dtype)
    for key in oracle:
        err_ref = (ref[key] - oracle[key]).abs().max().item()
        err = (got[key] - oracle[key]).abs().max().item()
        floor = 1e-3 * oracle[key].abs().max().item()
        assert err <= 2 * err_ref + floor, f"{key}: {backend} err {err:.3e} vs reference err {err_ref:.3e}"


def test_padded_steps_are_zero_and_reverse_last_step_is_dh_n():
    """Step t >= every L_b is padding for all elements: its norm is exactly 0. Reverse: g_0 = dY_0 + dh_n."""
    T, B, H = 6, 2, 3
    rnn = fused_rnn.RNN(2, H, bidirectional=True, backend="reference").double()
    x = torch.randn(T, B, 2, dtype=torch.float64)
    with diagnostics.record_bptt() as rec:
        out, h_n = rnn(x, lengths=torch.tensor([4, 2]))
        (out.sum() + 3.0 * h_n.sum()).backward()
    for (_, d), g in rec.grad_h_norms().items():
        assert torch.all(g[4:] == 0), (d, g)
        assert torch.all(g[:4] > 0), (d, g)
    # reverse direction, t = 0: dY_0 (ones, both elements valid) + dh_n (3s) -> every entry 4 over [B=2, H=3]
    torch.testing.assert_close(rec.grad_h_norms()[(0, 1)][0], torch.tensor(4.0 * 6 ** 0.5, dtype=torch.float64))


def test_functional_recurrence_is_recorded_without_layer():
    """Called outside fused_rnn.RNN, an entry has layer None and the direction from ``reverse``."""
    P = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.zeros(2, 3, dtype=torch.float64)
    w = torch.randn(3, 3, dtype=torch.float64)
    with diagnostics.record_bptt() as rec:
        Y, _ = fused_rnn.recurrence(P, h0, w, reverse=True)
    Y.sum().backward()  # after the block: still recorded (decided at forward)
    assert [(e.layer, e.direction) for e in rec.entries] == [(None, 1)]
    torch.testing.assert_close(rec.entries[0].grad_a, P.grad.norm(dim=(1, 2)))


def test_records_nothing_when_off(monkeypatch: pytest.MonkeyPatch):
    """Forward outside a block -> no tag, the record hook is never called, even if backward runs inside one."""
    calls = []
    monkeypatch.setattr(diagnostics._Tag, "record", lambda self, *a: calls.append(a))
    rnn = fused_rnn.RNN(3, 4, num_layers=2, bidirectional=True).double()
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    out, _ = rnn(x)
    assert not diagnostics.is_recording()
    with diagnostics.record_bptt() as rec:
        out.sum().backward()
    assert calls == [] and rec.entries == []
    with diagnostics.record_bptt():  # the hook does fire when on (so the check above can fail)
        rnn(x)[0].sum().backward()
    assert len(calls) == 4 and not diagnostics.is_recording()


def test_nested_blocks_record_innermost_and_restore():
    rnn = fused_rnn.RNN(3, 4).double()
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    with diagnostics.record_bptt() as outer:
        with diagnostics.record_bptt() as inner:
            rnn(x)[0].sum().backward()
        rnn(x)[0].sum().backward()
    assert len(inner.entries) == 1 and len(outer.entries) == 1


def test_compiled_module_records_nothing_and_still_runs():
    """Under torch.compile(fullgraph=True) recording is off by design (module docstring); it must not break the
    trace, and the gradients equal eager's."""
    rnn = fused_rnn.RNN(3, 4, bidirectional=True).double()
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    compiled = torch.compile(rnn, fullgraph=True, backend="eager")
    with diagnostics.record_bptt() as rec:
        compiled(x)[0].sum().backward()
    assert rec.entries == []
    g = rnn.weight_hh_l0.grad.clone()
    rnn.zero_grad()
    rnn(x)[0].sum().backward()
    torch.testing.assert_close(rnn.weight_hh_l0.grad, g)


def test_plot_grad_norms_writes_png(tmp_path):  # matplotlib: a dev requirement (requirements-dev.txt)
    path = diagnostics.plot_grad_norms({"a": torch.tensor([1.0, 0.5, 0.0, 0.1]), "b": [2.0, 1.0]},
                                       str(tmp_path / "g.png"))
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.gpu
@pytest.mark.gpu_quick
def test_recorded_norms_on_gpu_backends_equal_reference():
    """Every backend that takes CUDA tensors records the norms the reference records (fp32, bidirectional, lengths).

    Tolerance: the dA both norms derive from differs by fp32 rounding of two recurrences (≈ 1e-6 relative at T=9,
    H=33); 1e-4 relative leaves room for that and fails on any wrong term (a missing dh_n or shift is O(1)).
    """
    dev = torch.device("cuda")
    names = [n for n in fused_rnn.available_backends() if n != "reference" and backend_module(n).supports_device(dev)]
    assert names, "no CUDA-capable backend available although CUDA is"
    T, B, I, H = 9, 5, 6, 33  # noqa: E741 (DESIGN.md's shape letters)
    x = torch.randn(T, B, I, device=dev)
    h0 = torch.randn(2, B, H, device=dev)
    lengths = torch.tensor([9, 4, 1, 7, 9])
    results = {}
    for name in ["reference", *names]:
        torch.manual_seed(1)
        rnn = fused_rnn.RNN(I, H, bidirectional=True, backend=name).to(dev)
        with diagnostics.record_bptt() as rec:
            out, h_n = rnn(x, h0, lengths=lengths)
            (out.square().sum() + h_n.sum()).backward()
        results[name] = (rec.grad_h_norms(), rec.grad_a_norms())
    ref_h, ref_a = results["reference"]
    for name in names:
        got_h, got_a = results[name]
        for key in ref_h:
            torch.testing.assert_close(got_h[key], ref_h[key], rtol=1e-4, atol=1e-6, msg=f"{name} grad_h {key}")
            torch.testing.assert_close(got_a[key], ref_a[key], rtol=1e-4, atol=1e-6, msg=f"{name} grad_a {key}")
