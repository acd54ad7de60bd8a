""""Scratch" vs fused: the study deck's hand-written RNN cell beside fused_rnn.RNN with the same weights.

The deck's cell (written afresh here) is three ``nn.Linear`` -- ``i2h`` (input -> hidden, no bias), ``h2h`` (hidden
-> hidden, with bias) and ``h2o`` (hidden -> output) -- called once per time step from a Python loop:
``h = tanh(i2h(x_t) + h2h(h))``, ``y_t = h2o(h)``. fused_rnn.RNN computes the same recurrence with nn.RNN's
parameters: ``weight_ih_l0 = i2h.weight``, ``bias_ih_l0 = 0``, ``weight_hh_l0 = h2h.weight``,
``bias_hh_l0 = h2h.bias``; ``h2o`` is applied to all T outputs at once. This script shows

1. equal outputs, final states and gradients (fp32 and fp64),
2. the same training run (same init, same batches): equal, falling losses,
3. the speed difference, forward and forward+backward (and torch.nn.RNN for reference).

    python examples/scratch_vs_fused.py            # ~8 s on a 2-core CPU
    python examples/scratch_vs_fused.py --smoke    # tiny, a few seconds (what tests/test_examples.py runs)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

try:
    import fused_rnn
except ImportError:  # run from a source checkout without installing: python examples/NAME.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import fused_rnn


class ScratchRNN(nn.Module):
    """The deck's cell: one time step, x [B, I], h [B, H] -> (y [B, O], h [B, H])."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.i2h = nn.Linear(input_size, hidden_size, bias=False)
        self.h2h = nn.Linear(hidden_size, hidden_size)
        self.h2o = nn.Linear(hidden_size, output_size)

    def forward(self, x: Tensor, hidden: Tensor) -> tuple[Tensor, Tensor]:
        hidden = torch.tanh(self.i2h(x) + self.h2h(hidden))
        return self.h2o(hidden), hidden

    def init_zero_hidden(self, batch_size: int = 1) -> Tensor:
        """-> [batch_size, H] zeros."""
        return torch.zeros(batch_size, self.hidden_size, dtype=self.h2h.weight.dtype)

    def run_sequence(self, xs: Tensor) -> tuple[Tensor, Tensor]:
        """The deck's loop over time: xs [T, B, I] -> (ys [T, B, O], h_T [B, H])."""
        h = self.init_zero_hidden(xs.shape[1])
        ys = []
        for x in xs:
            y, h = self(x, h)
            ys.append(y)
        return torch.stack(ys), h


class FusedRNN(nn.Module):
    """The same model on fused_rnn.RNN: xs [T, B, I] -> (ys [T, B, O], h_T [B, H])."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int, backend: str = "auto") -> None:
        super().__init__()
        self.rnn = fused_rnn.RNN(input_size, hidden_size, backend=backend)
        self.h2o = nn.Linear(hidden_size, output_size)

    @classmethod
    def from_scratch(cls, s: ScratchRNN, backend: str = "auto") -> FusedRNN:
        """Copy the scratch cell's weights (the mapping in the module docstring)."""
        m = cls(s.i2h.in_features, s.hidden_size, s.h2o.out_features, backend).to(s.h2h.weight.dtype)
        with torch.no_grad():
            m.rnn.weight_ih_l0.copy_(s.i2h.weight)
            m.rnn.bias_ih_l0.zero_()  # i2h has no bias
            m.rnn.weight_hh_l0.copy_(s.h2h.weight)
            m.rnn.bias_hh_l0.copy_(s.h2h.bias)
            m.h2o.load_state_dict(s.h2o.state_dict())
        return m

    def forward(self, xs: Tensor) -> tuple[Tensor, Tensor]:
        out, h_n = self.rnn(xs)  # out [T, B, H], h_n [1, B, H]
        return self.h2o(out), h_n[0]


def compare(s: ScratchRNN, f: FusedRNN, xs: Tensor) -> dict[str, float]:
    """Max |difference| of outputs, final state and every gradient (matched by the mapping) for one forward+backward
    with the loss Σ ys ⊙ w + Σ h_T ⊙ v (random w, v): {name: max abs diff}."""
    ys_s, h_s = s.run_sequence(xs)
    ys_f, h_f = f(xs)
    w, v = torch.randn_like(ys_s), torch.randn_like(h_s)
    for m, (ys, h) in ((s, (ys_s, h_s)), (f, (ys_f, h_f))):
        m.zero_grad()
        ((ys * w).sum() + (h * v).sum()).backward()
    pairs = {
        "output": (ys_s, ys_f), "h_T": (h_s, h_f),
        "grad W_ih (i2h)": (s.i2h.weight.grad, f.rnn.weight_ih_l0.grad),
        "grad W_hh (h2h)": (s.h2h.weight.grad, f.rnn.weight_hh_l0.grad),
        "grad b_hh (h2h)": (s.h2h.bias.grad, f.rnn.bias_hh_l0.grad),
        "grad h2o": (s.h2o.weight.grad, f.h2o.weight.grad),
    }
    return {k: (a.detach() - b.detach()).abs().max().item() for k, (a, b) in pairs.items()}


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of fn() in ms over ``repeats`` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def train_side_by_side(s: ScratchRNN, f: FusedRNN, T: int, B: int, steps: int, gen: torch.Generator
                       ) -> tuple[list[float], list[float]]:
    """Both models from the same weights on the same batches (target: y_t = x_{t-1}, a one-step delay copy)."""
    opt_s = torch.optim.Adam(s.parameters(), lr=1e-2)
    params_f = [p for n, p in f.named_parameters() if n != "rnn.bias_ih_l0"]  # i2h has no bias to train
    opt_f = torch.optim.Adam(params_f, lr=1e-2)
    I = s.i2h.in_features  # noqa: E741 (DESIGN.md's shape letters)
    ls, lf = [], []
    for _ in range(steps):
        xs = torch.randn(T, B, I, generator=gen, dtype=s.h2h.weight.dtype)
        target = torch.cat([torch.zeros_like(xs[:1]), xs[:-1]])[..., : s.h2o.out_features]
        for model, opt, out in ((s, opt_s, ls), (f, opt_f, lf)):
            ys = model.run_sequence(xs)[0] if model is s else model(xs)[0]
            loss = nn.functional.mse_loss(ys, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            out.append(loss.item())
    return ls, lf


def run(smoke: bool = False, backend: str = "auto", seed: int = 0, log=print) -> dict:
    """-> {"diff32": {...}, "diff64": {...}, "losses_scratch", "losses_fused", "timings_ms": {...}}."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    T, B, I, H = (9, 3, 5, 7) if smoke else (256, 16, 128, 128)  # noqa: E741 (DESIGN.md's shape letters)
    n_out = min(I, 4)
    result: dict = {}
    for dtype in (torch.float32, torch.float64):
        s = ScratchRNN(I, H, n_out).to(dtype)
        f = FusedRNN.from_scratch(s, backend)
        diff = compare(s, f, torch.randn(T, B, I, generator=gen, dtype=dtype))
        result["diff32" if dtype == torch.float32 else "diff64"] = diff
        log(f"{str(dtype):14s} max |scratch - fused|: " + ", ".join(f"{k} {v:.1e}" for k, v in diff.items()))

    s = ScratchRNN(I, H, n_out)
    f = FusedRNN.from_scratch(s, backend)
    steps = 30 if smoke else 60
    ls, lf = train_side_by_side(s, f, min(T, 64), B, steps, gen)
    for i in list(range(0, steps, max(1, steps // 6))) + [steps - 1]:
        log(f"step {i:3d}  loss scratch {ls[i]:.5f}  fused {lf[i]:.5f}")
    result["losses_scratch"], result["losses_fused"] = ls, lf

    x = torch.randn(T, B, I, generator=gen)
    ref = nn.RNN(I, H)
    repeats = 3 if smoke else 10

    def fwd_bwd(fn: Callable[[], tuple[Tensor, Tensor]]) -> Callable[[], None]:
        return lambda: fn()[0].sum().backward()

    cases = {
        "scratch loop": lambda: s.run_sequence(x),
        "fused_rnn.RNN": lambda: f(x),
        "torch.nn.RNN": lambda: ref(x),
    }
    timings: dict[str, tuple[float, float]] = {}
    for name, fn in cases.items():
        with torch.no_grad():
            t_f = median_ms(fn, repeats)
        timings[name] = (t_f, median_ms(fwd_bwd(fn), repeats))
    result["timings_ms"] = timings
    log(f"time, T={T} B={B} I={I} H={H} fp32, {torch.get_num_threads()} threads (median of {repeats}):")
    for name, (t_f, t_fb) in timings.items():
        log(f"  {name:14s} forward {t_f:8.2f} ms   forward+backward {t_fb:8.2f} ms   "
            f"({timings['scratch loop'][1] / t_fb:.1f}x the scratch loop's fwd+bwd speed)")
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds")
    ap.add_argument("--backend", default="auto", help="fused_rnn backend (auto, reference, cpu, cuda, triton)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    run(args.smoke, args.backend, args.seed)


if __name__ == "__main__":
    main()
