"""One tiny forward+backward per GPU backend/tier, for compute-sanitizer (memcheck, racecheck, ...).

Run under the sanitizer by scripts/gpu_check.sh:  compute-sanitizer --tool memcheck python3 scripts/sanitize_cases.py
Every case uses lengths, reverse and a non-zero h0, so masking and the predecessor-state paths run too. It prints
the error against the reference backend for each case (the correctness verdict is the GPU tests' job; here a
non-finite or large error is still reported and fails the exit code).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fused_rnn  # noqa: E402
from fused_rnn.recurrence import recurrence  # noqa: E402

# Forced-only tiers not yet run on a GPU: sanitized only when asked (`--tiers cuda:cluster2`, make gpu-check's own
# stage for them), so a fault in new code cannot use up the sanitizer run of the verified tiers.
NEW_TIERS = {("cuda", "cluster2")}


def cases(only: str = "") -> list[tuple[str, str]]:
    """(backend, tier) pairs to run: `only` = "backend:tier,..." picks those; else every built one but NEW_TIERS."""
    if only:
        return [tuple(x.split(":", 1)) for x in only.split(",")]  # type: ignore[misc]
    out: list[tuple[str, str]] = []
    avail = fused_rnn.available_backends()
    if "cuda" in avail:
        out += [("cuda", t) for t in fused_rnn._ext.cuda_tiers()]
    if "triton" in avail:
        from fused_rnn.backends import triton as tb

        out += [("triton", t) for t in tb.TIERS if t]
    return [c for c in out if c not in NEW_TIERS]


def run_one(backend: str, tier: str, dtype: torch.dtype, T: int = 5, B: int = 3, H: int = 40) -> float:
    g = torch.Generator(device="cpu").manual_seed(0)
    dev = "cuda"
    P = (torch.randn(T, B, H, generator=g) * 0.5).to(dev, dtype)
    h0 = (torch.randn(B, H, generator=g) * 0.5).to(dev, dtype)
    w = (torch.randn(H, H, generator=g) / H**0.5).to(dev, dtype)
    lengths = torch.tensor([T, 2, 1][:B], dtype=torch.int64, device=dev)
    err = 0.0
    for reverse in (False, True):
        outs = []
        for be, tr in ((backend, tier), ("reference", "")):
            Pr, hr, wr = (t.detach().clone().requires_grad_(True) for t in (P, h0, w))
            Y, hn = recurrence(Pr, hr, wr, lengths, reverse, "tanh", be, tr, False)
            (Y.float().square().sum() + hn.float().sum()).backward()
            torch.cuda.synchronize()
            outs.append([Y, hn, Pr.grad, hr.grad, wr.grad])
        for a, b in zip(*outs):
            err = max(err, (a.double() - b.double()).abs().max().item())
    return err


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--tiers", default="", help="backend:tier,... to run (default: all but the forced-only new ones)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 0
    bad = 0
    todo = cases(args.tiers)
    if not todo:
        print("no GPU backend/tier available to sanitize")
    for backend, tier in todo:
        for name in args.dtypes.split(","):
            dtype = getattr(torch, name)
            try:
                err = run_one(backend, tier, dtype)
                ok = err == err and err < (1e-3 if dtype == torch.float32 else 5e-2)
                print(f"{backend:7s} {tier:12s} {name:9s} max|err| vs reference = {err:.3e} {'ok' if ok else 'LARGE'}")
                bad += not ok
            except Exception as e:  # report and go on: the sanitizer verdict matters for every tier
                print(f"{backend:7s} {tier:12s} {name:9s} ERROR {type(e).__name__}: {e}")
                bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
