"""Many-to-one classification with a bidirectional fused_rnn.RNN (the deck's "Text Classification" application).

Each sequence is a run of random tokens of random length; its label is decided by the **first** token only
(label = token_0 mod 4) -- the rest is noise. A unidirectional RNN must carry token 0 across the whole sequence; the
reverse direction of a bidirectional RNN reads it last, so its final state h_n holds it. The classifier reads
[h_n forward ; h_n reverse] of the top layer. Variable lengths go in as padded input with ``lengths=``.

    python examples/classify_bidirectional.py            # ~12 s on a quiet 2-core CPU (~45 s busy)
    python examples/classify_bidirectional.py --smoke    # tiny, a few seconds (what tests/test_examples.py runs)
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
except ImportError:  # run from a source checkout without installing: python examples/NAME.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import fused_rnn

NUM_CLASSES = 4
VOCAB = 16  # token 0 is padding; real tokens are 1..15


def make_batch(B: int, t_min: int, t_max: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """-> tokens [B, T_max] (0-padded), lengths [B] int64 in [t_min, t_max], labels [B] from token 0."""
    lengths = torch.randint(t_min, t_max + 1, (B,), generator=gen)
    tokens = torch.randint(1, VOCAB, (B, t_max), generator=gen)
    tokens[torch.arange(t_max)[None, :] >= lengths[:, None]] = 0
    labels = tokens[:, 0] % NUM_CLASSES
    return tokens, lengths, labels


class Classifier(nn.Module):
    """tokens [B, T], lengths [B] -> logits [B, NUM_CLASSES]."""

    def __init__(self, emb: int, hidden: int, layers: int, backend: str) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, emb, padding_idx=0)
        self.rnn = fused_rnn.RNN(emb, hidden, num_layers=layers, bidirectional=True, batch_first=True,
                                 backend=backend)
        self.head = nn.Linear(2 * hidden, NUM_CLASSES)

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        _, h_n = self.rnn(self.embed(tokens), lengths=lengths)  # h_n [layers·2, B, H]
        return self.head(torch.cat([h_n[-2], h_n[-1]], dim=1))  # top layer, both directions


def resolved_backend(backend: str, hidden: int) -> str:
    """The backend that ``backend`` resolves to for CPU fp32 tensors (e.g. "auto" -> "cpu" when it is built)."""
    from fused_rnn.backends.select import resolve

    return resolve(backend, torch.device("cpu"), hidden, 1, torch.float32).backend


def run(smoke: bool = False, backend: str = "auto", seed: int = 0, log=print) -> dict:
    """Train and return {"losses": [per step], "accuracy": held-out accuracy at the end, "seconds": wall time}."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    if smoke:
        steps, B, t_min, t_max, emb, hidden, layers = 60, 32, 3, 10, 8, 16, 1
    else:
        steps, B, t_min, t_max, emb, hidden, layers = 150, 64, 20, 100, 16, 64, 2
    model = Classifier(emb, hidden, layers, backend)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2 if smoke else 3e-3)
    losses: list[float] = []
    start = time.perf_counter()
    for step in range(steps):
        tokens, lengths, labels = make_batch(B, t_min, t_max, gen)
        loss = nn.functional.cross_entropy(model(tokens, lengths), labels)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % max(1, steps // 10) == 0 or step == steps - 1:
            log(f"step {step:4d}  loss {loss.item():.4f}")
    with torch.no_grad():
        tokens, lengths, labels = make_batch(512, t_min, t_max, gen)
        acc = (model(tokens, lengths).argmax(1) == labels).float().mean().item()
    seconds = time.perf_counter() - start
    log(f"held-out accuracy {acc:.3f} (chance {1 / NUM_CLASSES:.2f}); lengths {t_min}..{t_max}; {seconds:.1f} s; "
        f"backend {resolved_backend(backend, hidden)}")
    return {"losses": losses, "accuracy": acc, "seconds": seconds}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds")
    ap.add_argument("--backend", default="auto", help="fused_rnn backend (auto, reference, cpu, cuda, triton)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    run(args.smoke, args.backend, args.seed)


if __name__ == "__main__":
    main()
