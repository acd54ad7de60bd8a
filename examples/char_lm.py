"""A character-level language model with fused_rnn.RNN, generating text with ``RNN.step`` (the deck's
autoregressive / "Natural Language Generation" application: each step's input is the previous step's output, so
the model cannot look ahead and must be unidirectional).

Text: chapter 1 of Jane Austen's *Pride and Prejudice* (1813, public domain), ~4.6 KB, in
examples/data/pride_and_prejudice_ch1.txt. Training reads random windows (teacher forcing, the whole window in one
``forward`` call); generation primes the state with ``forward`` on a prompt, then samples one character at a time with
``RNN.step(x_t [1, E], hx [L, 1, H])``.

    python examples/char_lm.py            # ~25 s on a quiet 2-core CPU; prints loss (bits per character) and a sample
    python examples/char_lm.py --smoke    # tiny, a few seconds (what tests/test_examples.py runs)
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

try:
    import fused_rnn
except ImportError:  # run from a source checkout without installing: python examples/NAME.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import fused_rnn

TEXT_PATH = Path(__file__).resolve().parent / "data" / "pride_and_prejudice_ch1.txt"


class CharLM(nn.Module):
    """char ids [B, T] (+ state [L, B, H]) -> logits [B, T, V], state [L, B, H]."""

    def __init__(self, vocab: int, emb: int, hidden: int, layers: int, backend: str) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, emb)
        self.rnn = fused_rnn.RNN(emb, hidden, num_layers=layers, batch_first=True, backend=backend)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, ids: Tensor, hx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        out, h_n = self.rnn(self.embed(ids), hx)  # out [B, T, H]
        return self.head(out), h_n

    @torch.no_grad()
    def generate(self, prompt: Tensor, n: int, temperature: float, gen: torch.Generator) -> list[int]:
        """prompt [T0] char ids -> n sampled ids, one ``RNN.step`` per character."""
        logits, h = self(prompt.unsqueeze(0))  # prime on the prompt: logits [1, T0, V], h [L, 1, H]
        nxt = logits[0, -1]
        out: list[int] = []
        for _ in range(n):
            c = torch.multinomial(torch.softmax(nxt / temperature, -1), 1, generator=gen)  # [1]
            out.append(int(c))
            y, h = self.rnn.step(self.embed(c), h)  # y [1, H], h [L, 1, H]
            nxt = self.head(y)[0]
        return out


def load_text() -> tuple[str, list[str]]:
    text = TEXT_PATH.read_text(encoding="utf-8")
    return text, sorted(set(text))


def run(smoke: bool = False, backend: str = "auto", seed: int = 0, log=print) -> dict:
    """Train; return {"losses": [per step, nats/char], "sample": generated text, "seconds": ...}."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    text, chars = load_text()
    stoi = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in text], dtype=torch.int64)
    if smoke:
        steps, B, T, emb, hidden, layers, n_gen = 60, 16, 32, 16, 64, 1, 80
    else:
        steps, B, T, emb, hidden, layers, n_gen = 400, 32, 96, 32, 256, 2, 300
    model = CharLM(len(chars), emb, hidden, layers, backend)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=3e-4)
    losses: list[float] = []
    start = time.perf_counter()
    for step in range(steps):
        starts = torch.randint(0, data.numel() - T - 1, (B,), generator=gen)
        window = torch.stack([data[s: s + T + 1] for s in starts.tolist()])  # [B, T+1]
        logits, _ = model(window[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, len(chars)), window[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # the usual guard against exploding BPTT gradients
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % max(1, steps // 10) == 0 or step == steps - 1:
            log(f"step {step:4d}  loss {loss.item():.3f} nats/char = {loss.item() / math.log(2):.2f} bits/char")
    prompt = "Mr. Bennet"
    ids = model.generate(torch.tensor([stoi[c] for c in prompt]), n_gen, 0.7, gen)
    sample = prompt + "".join(chars[i] for i in ids)
    seconds = time.perf_counter() - start
    log(f"--- sample (temperature 0.7), {seconds:.1f} s ---\n{sample}\n---")
    return {"losses": losses, "sample": sample, "seconds": seconds}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds")
    ap.add_argument("--backend", default="auto", help="fused_rnn backend (auto, reference, cpu, cuda, triton)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    run(args.smoke, args.backend, args.seed)


if __name__ == "__main__":
    main()
