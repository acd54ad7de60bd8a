"""Many-to-many tagging with a bidirectional fused_rnn.RNN: a synthetic part-of-speech task (the deck's "POS Tagging").

Sentences come from a small tag grammar (a Markov chain over DET, ADJ, NOUN, VERB, ADV, PREP) and each tag emits a
word. Some words are ambiguous -- "run", "walk", "fish" are nouns or verbs, "fast" an adjective or adverb -- so
their tag is only decided by context on both sides: "the fish" vs "cats fish in ...". A bidirectional RNN reads
both sides and tags every step; the loss is cross-entropy over valid (unpadded) steps only.

    python examples/pos_tagging.py            # ~6 s on a quiet 2-core CPU (~25 s busy)
    python examples/pos_tagging.py --smoke    # tiny, a few seconds (what tests/test_examples.py runs)
"""

from __future__ import annotations

import argparse
import random
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

TAGS = ["DET", "ADJ", "NOUN", "VERB", "ADV", "PREP"]
# tag -> [(next tag or None = end of sentence, probability)]
GRAMMAR: dict[str, list[tuple[str | None, float]]] = {
    "<s>": [("DET", 0.7), ("NOUN", 0.3)],
    "DET": [("ADJ", 0.4), ("NOUN", 0.6)],
    "ADJ": [("ADJ", 0.2), ("NOUN", 0.8)],
    "NOUN": [("VERB", 0.7), ("PREP", 0.2), (None, 0.1)],
    "VERB": [("DET", 0.4), ("ADV", 0.3), ("PREP", 0.2), (None, 0.1)],
    "ADV": [("PREP", 0.5), (None, 0.5)],
    "PREP": [("DET", 0.8), ("NOUN", 0.2)],
}
LEXICON: dict[str, list[str]] = {
    "DET": ["the", "a", "this", "every"],
    "ADJ": ["big", "red", "old", "fast", "quiet"],
    "NOUN": ["dog", "cat", "cats", "park", "river", "run", "walk", "fish"],
    "VERB": ["sees", "eats", "likes", "run", "walk", "fish"],
    "ADV": ["fast", "well", "today", "slowly"],
    "PREP": ["in", "on", "near", "after"],
}
WORDS = ["<pad>"] + sorted({w for ws in LEXICON.values() for w in ws})
WORD_ID = {w: i for i, w in enumerate(WORDS)}
AMBIGUOUS = {w for w in WORDS if sum(w in ws for ws in LEXICON.values()) > 1}
PAD_TAG = -100  # cross_entropy's ignore_index


def sentence(rng: random.Random, max_len: int) -> tuple[list[str], list[str]]:
    """One (words, tags) pair from the grammar, at most max_len long."""
    words, tags, tag = [], [], "<s>"
    while len(tags) < max_len:
        nxt, probs = zip(*GRAMMAR[tag])
        tag = rng.choices(nxt, probs)[0]
        if tag is None:
            break
        tags.append(tag)
        words.append(rng.choice(LEXICON[tag]))
    return words, tags


def make_batch(B: int, max_len: int, rng: random.Random) -> tuple[Tensor, Tensor, Tensor]:
    """-> word ids [B, T] (0-padded), lengths [B] int64, tag ids [B, T] (PAD_TAG at padding); T = longest."""
    pairs = [sentence(rng, max_len) for _ in range(B)]
    T = max(len(w) for w, _ in pairs)
    words = torch.zeros(B, T, dtype=torch.int64)
    tags = torch.full((B, T), PAD_TAG, dtype=torch.int64)
    for b, (ws, ts) in enumerate(pairs):
        words[b, : len(ws)] = torch.tensor([WORD_ID[w] for w in ws])
        tags[b, : len(ts)] = torch.tensor([TAGS.index(t) for t in ts])
    lengths = torch.tensor([len(w) for w, _ in pairs], dtype=torch.int64)
    return words, lengths, tags


class Tagger(nn.Module):
    """word ids [B, T], lengths [B] -> tag logits [B, T, len(TAGS)]."""

    def __init__(self, emb: int, hidden: int, backend: str) -> None:
        super().__init__()
        self.embed = nn.Embedding(len(WORDS), emb, padding_idx=0)
        self.rnn = fused_rnn.RNN(emb, hidden, bidirectional=True, batch_first=True, backend=backend)
        self.head = nn.Linear(2 * hidden, len(TAGS))

    def forward(self, words: Tensor, lengths: Tensor) -> Tensor:
        out, _ = self.rnn(self.embed(words), lengths=lengths)  # out [B, T, 2H], 0 at padded steps
        return self.head(out)


def accuracy(model: Tagger, words: Tensor, lengths: Tensor, tags: Tensor) -> tuple[float, float]:
    """(accuracy over all valid steps, accuracy over steps whose word is ambiguous)."""
    with torch.no_grad():
        pred = model(words, lengths).argmax(-1)
    valid = tags != PAD_TAG
    amb = valid & torch.isin(words, torch.tensor([WORD_ID[w] for w in sorted(AMBIGUOUS)]))
    ok = pred == tags
    return ok[valid].float().mean().item(), ok[amb].float().mean().item()


def run(smoke: bool = False, backend: str = "auto", seed: int = 0, log=print) -> dict:
    """Train; return {"losses": [per step], "accuracy": all steps, "ambiguous_accuracy": ..., "seconds": ...}."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    steps, B, max_len, emb, hidden = (80, 32, 12, 12, 24) if smoke else (150, 64, 40, 32, 64)
    model = Tagger(emb, hidden, backend)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2 if smoke else 5e-3)
    losses: list[float] = []
    start = time.perf_counter()
    for step in range(steps):
        words, lengths, tags = make_batch(B, max_len, rng)
        logits = model(words, lengths)
        loss = nn.functional.cross_entropy(logits.reshape(-1, len(TAGS)), tags.reshape(-1), ignore_index=PAD_TAG)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % max(1, steps // 10) == 0 or step == steps - 1:
            log(f"step {step:4d}  loss {loss.item():.4f}")
    acc, amb = accuracy(model, *make_batch(512, max_len, rng))
    seconds = time.perf_counter() - start
    log(f"held-out tag accuracy {acc:.3f}; on ambiguous words ({', '.join(sorted(AMBIGUOUS))}) {amb:.3f}; "
        f"{seconds:.1f} s")
    return {"losses": losses, "accuracy": acc, "ambiguous_accuracy": amb, "seconds": seconds}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds")
    ap.add_argument("--backend", default="auto", help="fused_rnn backend (auto, reference, cpu, cuda, triton)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    run(args.smoke, args.backend, args.seed)


if __name__ == "__main__":
    main()
