"""GPU helper for the triton backend: one tiny case per tier (for compute-sanitizer), or a small tier timing table.

    python tests/triton_gpu_smoke.py --tier resident            # tiny fwd+bwd vs the reference; exit 1 on mismatch
    compute-sanitizer --tool memcheck python tests/triton_gpu_smoke.py --tier cooperative
    python tests/triton_gpu_smoke.py --bench                     # µs per layer-step per tier, fwd and fwd+bwd

Needs a CUDA device and runs the compiled kernels (TRITON_INTERPRET must be unset). The tiny case is T=5, B=3, H=40
with lengths, reverse and a non-zero h0 in fp32 (IEEE); the tier is forced and checked to really run.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from fused_rnn.backends import reference as R  # noqa: E402
from fused_rnn.backends import triton as TB  # noqa: E402


def _inputs(T: int, B: int, H: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """P [T,B,H], h0 [B,H], w [H,H], lengths [B], dY [T,B,H], dh_n [B,H] on the GPU."""
    g = torch.Generator().manual_seed(0)
    P = torch.randn(T, B, H, generator=g)
    h0 = 0.5 * torch.randn(B, H, generator=g)
    w = 0.8 * torch.randn(H, H, generator=g) / H**0.5
    L = torch.randint(1, T + 1, (B,), generator=g)
    L[0] = T
    dY = torch.randn(T, B, H, generator=g)
    dhn = torch.randn(B, H, generator=g)
    return tuple(x.cuda() if x.dtype == torch.int64 else x.to("cuda", dtype) for x in (P, h0, w, L, dY, dhn))


def tiny(tier: str) -> int:
    """Tiny forward + backward of one tier vs the reference (fp32 IEEE); 0 when they agree."""
    T, B, H = 5, 3, 40
    if tier == "cooperative":
        H = 150  # more than one hidden tile, so the grid barrier is exercised
    eff = TB.effective_tier(tier, H, B, torch.float32, torch.device("cuda"))
    if eff != tier:
        print(f"{tier}: runs as {eff} at this shape")
        return 1
    P, h0, w, L, dY, dhn = _inputs(T, B, H, torch.float32)
    Y, hn = TB.forward(P, h0, w, L, True, "tanh", tier, False)
    dA, dh0 = TB.backward(dY, dhn, Y, w, L, True, "tanh", tier, False)
    m = torch.backends.cuda.matmul
    old, m.allow_tf32 = m.allow_tf32, False
    try:
        Yr, hnr = R.forward(P, h0, w, L, True, "tanh")
        dAr, dh0r = R.backward(dY, dhn, Yr, w, L, True, "tanh")
    finally:
        m.allow_tf32 = old
    torch.cuda.synchronize()
    errs = [(a - b).abs().max().item() for a, b in ((Y, Yr), (hn, hnr), (dA, dAr), (dh0, dh0r))]
    print(f"{tier}: max |triton - reference| Y, h_n, dA, dh0 = " + ", ".join(f"{e:.2e}" for e in errs))
    return 0 if max(errs) < 1e-4 else 1


def bench() -> None:
    """µs per layer-step of each tier that runs at each shape (triton.testing.do_bench median)."""
    from triton.testing import do_bench

    print("| T, B, H, dtype | tier | fwd µs/step | fwd+bwd µs/step |")
    print("|---|---|---|---|")
    for T, B, H, dtype in ((256, 16, 64, torch.float32), (256, 16, 256, torch.bfloat16),
                           (256, 16, 512, torch.float32), (128, 64, 1024, torch.bfloat16)):
        P, h0, w, L, dY, dhn = _inputs(T, B, H, dtype)
        for tier in TB.TIERS:
            if TB.effective_tier(tier, H, B, dtype, torch.device("cuda")) != tier:
                continue
            def fwd_only(P=P, h0=h0, w=w, tier=tier):
                TB.forward(P, h0, w, None, False, "tanh", tier, False)

            def both(P=P, h0=h0, w=w, dY=dY, dhn=dhn, tier=tier):
                Y, _ = TB.forward(P, h0, w, None, False, "tanh", tier, False)
                TB.backward(dY, dhn, Y, w, None, False, "tanh", tier, False)

            fwd = do_bench(fwd_only, quantiles=[0.5])
            fb = do_bench(both, quantiles=[0.5])
            fwd = fwd[0] if isinstance(fwd, (list, tuple)) else fwd
            fb = fb[0] if isinstance(fb, (list, tuple)) else fb
            print(f"| {T}, {B}, {H}, {str(dtype)[6:]} | {tier} | {1e3 * fwd / T:.2f} | {1e3 * fb / T:.2f} |")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tier", choices=TB.TIERS)
    ap.add_argument("--bench", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("needs a CUDA device and TRITON_INTERPRET unset")
        return 2
    if args.bench:
        bench()
        return 0
    return max(tiny(t) for t in ([args.tier] if args.tier else TB.TIERS))


if __name__ == "__main__":
    sys.exit(main())
