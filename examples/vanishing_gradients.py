"""Vanishing and exploding gradients, measured: ‖∂L/∂h_t‖ against t for tanh vs relu and several scales of W_hh
(the deck's "Gradient Vanishing by TanH" slide, with fused_rnn.diagnostics.record_bptt doing the measuring).

A many-to-one loss reads only the last state (L = ⟨h_{T-1}, v⟩), so everything ∂L/∂h_t holds for t < T-1 came back
through the recurrence: g_t = (f'(a_{t+1}) ⊙ g_{t+1}) @ W_hh. Each factor shrinks the gradient when tanh saturates
(f' = 1 - h² < 1) or when W_hh is small, and grows it when W_hh is large and relu keeps f' = 1 -- so ‖g_t‖ decays
or grows geometrically in T - t. W_hh is drawn N(0, scale²/H) (spectral radius ≈ scale), W_ih N(0, 1/I), no bias,
inputs N(0, 1); fp64 so that the exploding curves stay finite.

Then the curves are put to work: a tanh RNN at scale 1 trains on a memory task whose target is the first feature of
the input d steps before the end, read from the last state (MSE; predicting 0 scores ≈ 1). The gradient that
carries x_{T-d} into the loss has travelled d - 1 steps back: for small d the loss falls, for d = T it cannot, because
that gradient has vanished (see the curve).

    python examples/vanishing_gradients.py            # ~16 s on a 2-core CPU -> examples/out/vanishing_gradients.png
    python examples/vanishing_gradients.py --smoke    # tiny (what tests/test_examples.py runs)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

try:
    import fused_rnn
    from fused_rnn import diagnostics
except ImportError:  # run from a source checkout without installing: python examples/NAME.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import fused_rnn
    from fused_rnn import diagnostics

OUT_DIR = Path(__file__).resolve().parent / "out"
CONFIGS: list[tuple[str, float]] = [("tanh", 0.5), ("tanh", 1.0), ("tanh", 3.0), ("relu", 0.5), ("relu", 1.0),
                                    ("relu", 2.0)]


def make_rnn(nonlinearity: str, scale: float, I: int, H: int, backend: str, seed: int  # noqa: E741 (shape letters)
             ) -> fused_rnn.RNN:
    """One layer, fp64, W_hh ~ N(0, scale²/H), W_ih ~ N(0, 1/I), biases 0."""
    torch.manual_seed(seed)
    rnn = fused_rnn.RNN(I, H, nonlinearity=nonlinearity, backend=backend).double()
    with torch.no_grad():
        rnn.weight_hh_l0.normal_(0.0, scale / H ** 0.5)
        rnn.weight_ih_l0.normal_(0.0, 1.0 / I ** 0.5)
        rnn.bias_ih_l0.zero_()
        rnn.bias_hh_l0.zero_()
    return rnn


def grad_norms_over_time(rnn: fused_rnn.RNN, x: Tensor, v: Tensor) -> Tensor:
    """x [T, B, I], v [B, H] -> ‖∂L/∂h_t‖ [T] for L = Σ h_{T-1} ⊙ v, recorded by fused_rnn.diagnostics."""
    with diagnostics.record_bptt() as rec:
        _, h_n = rnn(x)
        (h_n[0] * v).sum().backward()
    rnn.zero_grad()
    return rec.grad_h_norms()[(0, 0)].detach().cpu()


def train_memory_task(rnn: fused_rnn.RNN, T: int, delay: int, B: int, steps: int, gen: torch.Generator
                      ) -> list[float]:
    """Target = x_{T-delay}[0] (the first feature, delay steps before the end) read linearly from h_{T-1};
    returns the MSE per step (predicting 0 scores ≈ 1)."""
    I, H = rnn.input_size, rnn.hidden_size  # noqa: E741 (DESIGN.md's shape letters)
    readout = nn.Linear(H, 1).double()
    opt = torch.optim.Adam(list(rnn.parameters()) + list(readout.parameters()), lr=3e-3)
    losses = []
    for _ in range(steps):
        x = torch.randn(T, B, I, generator=gen, dtype=torch.float64)
        _, h_n = rnn(x)
        loss = nn.functional.mse_loss(readout(h_n[0]).squeeze(1), x[T - delay, :, 0])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def run(smoke: bool = False, backend: str = "auto", seed: int = 0, log=print, out_dir: Path | None = None) -> dict:
    """Measure the curves, plot them, train on the memory task; return {"norms": {label: [T]},
    "ratio": {label: ‖g_0‖/‖g_{T-1}‖}, "losses": {delay: [per step]}, "png": path}."""
    T, B, I, H, steps, delays = (30, 16, 4, 16, 80, (2, 30)) if smoke else (100, 32, 16, 64, 300, (2, 10, 100))  # noqa: E741
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, I, generator=gen, dtype=torch.float64)
    v = torch.randn(B, H, generator=gen, dtype=torch.float64)
    norms: dict[str, Tensor] = {}
    ratio: dict[str, float] = {}
    start = time.perf_counter()
    log(f"T={T} B={B} H={H}: ‖∂L/∂h_0‖ / ‖∂L/∂h_(T-1)‖ with the loss on h_(T-1) only")
    for nl, scale in CONFIGS:
        label = f"{nl}, W_hh scale {scale:g}"
        g = grad_norms_over_time(make_rnn(nl, scale, I, H, backend, seed), x, v)
        norms[label] = g
        ratio[label] = float(g[0] / g[-1])
        log(f"  {label:22s} {ratio[label]:9.2e}")
    out_dir = OUT_DIR if out_dir is None else out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    png = diagnostics.plot_grad_norms(
        {k: g / g[-1] for k, g in norms.items()}, str(out_dir / "vanishing_gradients.png"),
        title=f"BPTT: ‖∂L/∂h_t‖ / ‖∂L/∂h_(T-1)‖, loss on h_(T-1) only (T={T}, H={H}, fp64)",
        ylabel="relative ‖∂L/∂h_t‖ (Frobenius over batch × hidden)",
        linestyles={k: "--" for k in norms if k.startswith("relu")})
    log(f"wrote {png}")
    log(f"memory task, tanh, W_hh scale 1: target = x_(T-d)[0] read from h_(T-1); MSE (0-prediction ≈ 1), "
        f"{steps} steps")
    losses: dict[int, list[float]] = {}
    for d in delays:
        losses[d] = train_memory_task(make_rnn("tanh", 1.0, I, H, backend, seed), T, d, B, steps, gen)
        q = max(1, steps // 10)
        first, last = sum(losses[d][:q]) / q, sum(losses[d][-q:]) / q
        log(f"  d = {d:3d}: loss {first:.3f} -> {last:.3f}   (gradient travels {d - 1} steps back)")
    log(f"{time.perf_counter() - start:.1f} s")
    return {"norms": norms, "ratio": ratio, "losses": losses, "png": png}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds")
    ap.add_argument("--backend", default="auto", help="fused_rnn backend (auto, reference, cpu, cuda, triton)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    run(args.smoke, args.backend, args.seed)


if __name__ == "__main__":
    main()
