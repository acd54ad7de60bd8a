"""``RNN.step(x_t, hx) -> (y_t, h_next)``: one time step through every layer, for autoregressive decoding.

It must equal ``forward`` run on the same inputs (the whole sequence at once, and one step at a time), gradients
included, with dropout between layers in training; refuse bidirectional modules and bad shapes clearly; and read
nothing on the host (checked by a fullgraph torch.compile on CPU, and by CUDA graph capture / sync debug mode on GPU).
"""

from __future__ import annotations

import pytest
import torch

import fused_rnn

I, H = 7, 13  # noqa: E741 (DESIGN.md's shape letters); awkward sizes on purpose

CFGS = {
    "L1-tanh": dict(num_layers=1),
    "L2-relu": dict(num_layers=2, nonlinearity="relu"),
    "L3-nobias": dict(num_layers=3, bias=False),
    "L2-batch_first": dict(num_layers=2, batch_first=True),
}
TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=2e-5, atol=2e-6)}


def _decode(model: fused_rnn.RNN, xs: torch.Tensor, h: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """xs [T, B, I] (or [T, I]) through T calls of step -> (ys [T, B, H], h_n [L, B, H])."""
    ys = []
    for t in range(xs.shape[0]):
        y, h = model.step(xs[t], h)
        ys.append(y)
    return torch.stack(ys, 0), h


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("cfg", list(CFGS.values()), ids=list(CFGS))
def test_step_loop_equals_forward(cpu_backend: str, cfg: dict, dtype: torch.dtype) -> None:
    """T=5 steps, B=3: every y_t equals forward's output at t, the last state equals h_n, and the gradients of
    the input, h0 and every parameter are equal too."""
    model = fused_rnn.RNN(I, H, backend=cpu_backend, **cfg).to(dtype)
    L = model.num_layers
    x = torch.randn(5, 3, I, dtype=dtype, requires_grad=True)  # time-major for step; forward gets its own layout
    h0 = torch.randn(L, 3, H, dtype=dtype, requires_grad=True)
    w = torch.randn(5, 3, H, dtype=dtype)

    ys, h_n = _decode(model, x, h0)
    ((ys * w).sum() + h_n.square().sum()).backward()
    got = [ys.detach(), h_n.detach(), x.grad.clone(), h0.grad.clone()] + [p.grad.clone() for p in model.parameters()]
    x.grad = h0.grad = None
    model.zero_grad()

    xf = x.transpose(0, 1) if model.batch_first else x
    out, h_f = model(xf, h0)
    out = out.transpose(0, 1) if model.batch_first else out
    ((out * w).sum() + h_f.square().sum()).backward()
    want = [out.detach(), h_f.detach(), x.grad, h0.grad] + [p.grad for p in model.parameters()]
    names = ["y", "h_n", "grad x", "grad h0"] + [n for n, _ in model.named_parameters()]
    for name, g, w_ in zip(names, got, want):
        torch.testing.assert_close(g, w_, **TOL[dtype], msg=lambda m, name=name: f"{name}: {m}")


def test_step_unbatched_and_default_state(cpu_backend: str) -> None:
    """x_t [I] with hx [L, H] gives y [H], h [L, H]; hx=None is a zero state; matches forward on [T, I] input."""
    model = fused_rnn.RNN(I, H, num_layers=2, backend=cpu_backend).double()
    x = torch.randn(4, I, dtype=torch.float64)
    y0, h = model.step(x[0])
    assert y0.shape == (H,) and h.shape == (2, H)
    ys = [y0]
    for t in range(1, 4):
        y, h = model.step(x[t], h)
        ys.append(y)
    out, h_n = model(x)
    torch.testing.assert_close(torch.stack(ys), out, **TOL[torch.float64])
    torch.testing.assert_close(h, h_n, **TOL[torch.float64])


def test_step_dropout_in_training_matches_forward(cpu_backend: str) -> None:
    """With dropout between layers in training, step draws the same mask as forward on a length-1 sequence
    (same RNG state, same number of elements); in eval mode there is no dropout at all."""
    model = fused_rnn.RNN(I, H, num_layers=3, dropout=0.4, backend=cpu_backend).double().train()
    x = torch.randn(6, I, dtype=torch.float64)
    h = torch.randn(3, 6, H, dtype=torch.float64)
    torch.manual_seed(123)
    y_s, h_s = model.step(x, h)
    torch.manual_seed(123)
    out, h_f = model(x.unsqueeze(0), h)
    torch.testing.assert_close(y_s, out[0], **TOL[torch.float64])
    torch.testing.assert_close(h_s, h_f, **TOL[torch.float64])
    torch.manual_seed(7)
    y_other, _ = model.step(x, h)
    assert not torch.allclose(y_other, y_s), "dropout must be active in training (another seed, another mask)"
    model.eval()
    a, _ = model.step(x, h)
    b, _ = model.step(x, h)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_step_under_fullgraph_compile_reads_nothing_on_the_host() -> None:
    """A host read (``.item()``, ``int(tensor)``, data-dependent branching) would break a fullgraph trace."""
    torch._dynamo.reset()
    model = fused_rnn.RNN(I, H, num_layers=2).double()
    compiled = torch.compile(model.step, fullgraph=True, backend="aot_eager")
    x = torch.randn(3, I, dtype=torch.float64)
    h = torch.randn(2, 3, H, dtype=torch.float64)
    for got, want in zip(compiled(x, h), model.step(x, h)):
        torch.testing.assert_close(got, want, **TOL[torch.float64])
    torch._dynamo.reset()


BAD = {
    "x_3d": (lambda: torch.randn(1, 2, I), None, ValueError, r"x_t of shape \[B, I\] or \[I\]"),
    "x_0d": (lambda: torch.tensor(1.0), None, ValueError, r"x_t of shape"),
    "wrong_input_size": (lambda: torch.randn(2, I + 1), None, RuntimeError, r"input_size \(7\), got 8"),
    "hx_wrong_batch": (lambda: torch.randn(2, I), lambda: torch.randn(2, 3, H), RuntimeError,
                       r"hx of shape \[2, 2, 13\]"),
    "hx_missing_layer": (lambda: torch.randn(2, I), lambda: torch.randn(1, 2, H), RuntimeError, r"hx of shape"),
    "hx_batched_for_unbatched": (lambda: torch.randn(I), lambda: torch.randn(2, 1, H), RuntimeError, r"\[2, 13\]"),
    "hx_dtype": (lambda: torch.randn(2, I), lambda: torch.randn(2, 2, H, dtype=torch.float64), RuntimeError,
                 r"hx dtype"),
    "x_dtype": (lambda: torch.randn(2, I, dtype=torch.float64), None, ValueError, r"does not match weight dtype"),
    "x_not_tensor": (lambda: [[0.0] * I], None, TypeError, r"expects x_t to be a Tensor"),
    "hx_not_tensor": (lambda: torch.randn(2, I), lambda: 0.0, TypeError, r"hx to be a Tensor or None"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_step_bad_input_raises_clearly(case: str) -> None:
    make_x, make_h, exc, pattern = BAD[case]
    model = fused_rnn.RNN(I, H, num_layers=2)
    with pytest.raises(exc, match=pattern):
        model.step(make_x(), None if make_h is None else make_h())


def test_step_refuses_bidirectional() -> None:
    model = fused_rnn.RNN(I, H, bidirectional=True)
    with pytest.raises(RuntimeError, match="unidirectional"):
        model.step(torch.randn(2, I))


@pytest.mark.gpu
@pytest.mark.gpu_quick
def test_step_cuda_graph_capture_and_no_sync() -> None:
    """On CUDA: no host synchronisation (sync debug mode "error"), and a captured CUDA graph replays the same step."""
    dev = torch.device("cuda")
    model = fused_rnn.RNN(I, H, num_layers=2).to(dev).eval()
    x = torch.randn(4, I, device=dev)
    h = torch.randn(2, 4, H, device=dev)
    with torch.no_grad():
        model.step(x, h)  # warm-up outside the checked region (lazy cuBLAS init may sync)
        torch.cuda.set_sync_debug_mode("error")
        try:
            want_y, want_h = model.step(x, h)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                model.step(x, h)
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            got_y, got_h = model.step(x, h)
        graph.replay()
        torch.cuda.synchronize()
    torch.testing.assert_close(got_y, want_y)
    torch.testing.assert_close(got_h, want_h)
