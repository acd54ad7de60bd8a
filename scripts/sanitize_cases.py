"""One tiny forward+backward per GPU backend/tier/dtype: the per-tier report of `make gpu-check`, and the workload
compute-sanitizer (memcheck, racecheck, synccheck, initcheck) runs.

    python3 scripts/sanitize_cases.py [--set verified|unverified|own|all] [--tiers cuda:cluster2,...]
                                      [--dtypes float32,bfloat16,tf32] [--report] [--names]
    compute-sanitizer --tool memcheck python3 scripts/sanitize_cases.py --set verified

Every case uses lengths, reverse and a non-zero h0, so masking and the predecessor-state paths run too. Each case
checks, through the tier record (fused_rnn.backends.tier_log), that the tier asked for is the tier that ran -- a
tier that silently falls back fails its line (issue #26: "verified" means it ran) -- and reports the error against
the reference backend (a non-finite or large error fails too). One report line per (backend, tier, dtype).

Sets: `verified` = the tiers on the GPU-verified list (csrc/cuda/gpu_verified.h) minus new code inside them (the
16-bit GEMM of cuda `fallback`'s fp16/bf16 forward); `unverified` = everything else (batch_tiled, Triton, any tier a
later change adds, that new code) except `own` = the tiers in OWN_PART, which `make gpu-check` runs in a stage of
their own (cluster2: stage 3.5, the last of part 3); `all` = the three. A comma list unites sets (`--set
verified,unverified`); `--tiers` picks tiers by name instead, whatever their set. `make gpu-check` runs the
unverified set in part 3, so a failure there cannot use up the run that re-verifies the proven tiers, and the
own-stage tiers after it, so a trap or hang in a new tier cannot use up the rest of part 3's run either. `--names`
prints the set's `backend:tier` names (one line) and runs nothing: part 4 names them to the bench, which times
unverified tiers only when named.
The dtype `tf32` is fp32 storage with allow_tf32=True (cluster2 runs fp32 only so).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fused_rnn  # noqa: E402
from fused_rnn.backends import tier_log, verified  # noqa: E402
from fused_rnn.recurrence import recurrence  # noqa: E402

# (T, B, H) per tier where the default (5, 3, 40) would not run the tier itself.
SHAPES: dict[tuple[str, str], tuple[int, int, int]] = {}
DEFAULT_SHAPE = (5, 3, 40)  # cluster: 10 CTAs of 4 units; persistent: 10 CTAs; triton cooperative: 3 hidden tiles;
#                             cluster2: 3 CTAs of 16 units, BT 8
# Tiers not yet run on a GPU that make gpu-check runs in a stage of their own (scripts/gpu_check.sh stage 3.5,
# csrc/cuda/harness/cluster2_device.sh), so they are not in the `unverified` set of part 3.
OWN_PART: frozenset[tuple[str, str]] = frozenset({("cuda", "cluster2")})
SETS = ("verified", "unverified", "own", "all")
TF32 = "tf32"  # a --dtypes entry: fp32 storage with allow_tf32=True


def new_code(backend: str, tier: str, dtype: torch.dtype) -> bool:
    """Code inside a verified tier that has not run on a GPU yet (issue #21)."""
    return backend == "cuda" and tier == "fallback" and dtype in (torch.float16, torch.bfloat16)


def set_of(backend: str, tier: str, dtype: torch.dtype | str, cap: tuple[int, int] | None) -> str:
    """"verified", "unverified" or "own" for one case (see the module docstring)."""
    if (backend, tier) in OWN_PART:
        return "own"
    dt = torch.float32 if isinstance(dtype, str) else dtype  # tf32: fp32 storage
    proven = verified.is_verified(backend, tier, cap) and not new_code(backend, tier, dt)
    return "verified" if proven else "unverified"


def cases(which: str, dtypes: list[torch.dtype | str], only: str = "") -> list[tuple[str, str, torch.dtype | str]]:
    """(backend, tier, dtype) cases of the sets in `which` ("verified,unverified", "all", ...), or of the tiers named
    in `only` ("cuda:cluster2,triton:resident"), whatever their set."""
    out: list[tuple[str, str, torch.dtype | str]] = []
    wanted_sets = set(SETS[:3]) if which == "all" else set(which.split(","))
    named = {tuple(x.split(":", 1)) for x in only.split(",") if x}
    avail = fused_rnn.available_backends()
    tiers: list[tuple[str, str]] = []
    if "cuda" in avail:
        tiers += [("cuda", t) for t in fused_rnn._ext.cuda_tiers()]
    if "triton" in avail:
        from fused_rnn.backends import triton as tb

        tiers += [("triton", t) for t in tb.TIERS if t]
    missing = named - set(tiers)
    if missing:
        raise SystemExit(f"--tiers: not built or unknown here: {sorted(':'.join(m) for m in missing)}")
    cap = tuple(torch.cuda.get_device_capability()) if torch.cuda.is_available() else None
    for backend, tier in tiers:
        for dt in dtypes:
            if ((backend, tier) in named) if named else (set_of(backend, tier, dt, cap) in wanted_sets):
                out.append((backend, tier, dt))
    return out


def run_one(backend: str, tier: str, dtype: torch.dtype | str) -> tuple[float, set[str], list[tier_log.TierRun]]:
    """Max |error| vs the reference over forward outputs and every gradient, the tiers that ran, the record."""
    T, B, H = SHAPES.get((backend, tier), DEFAULT_SHAPE)
    tf32 = dtype == TF32
    dtype = torch.float32 if tf32 else dtype
    g = torch.Generator(device="cpu").manual_seed(0)
    dev = "cuda"
    P = (torch.randn(T, B, H, generator=g) * 0.5).to(dev, dtype)
    h0 = (torch.randn(B, H, generator=g) * 0.5).to(dev, dtype)
    w = (torch.randn(H, H, generator=g) / H**0.5).to(dev, dtype)
    lengths = torch.tensor([T, 2, 1][:B], dtype=torch.int64, device=dev)
    err = 0.0
    runs: list[tier_log.TierRun] = []
    for reverse in (False, True):
        outs = []
        for be, tr in ((backend, tier), ("reference", "")):
            Pr, hr, wr = (t.detach().clone().requires_grad_(True) for t in (P, h0, w))
            with tier_log.record() as rec:
                Y, hn = recurrence(Pr, hr, wr, lengths, reverse, "tanh", be, tr, tf32 and be == backend)
                (Y.float().square().sum() + hn.float().sum()).backward()
                torch.cuda.synchronize()
            if be == backend:
                runs += [r for r in rec if r.backend == backend]
            outs.append([Y, hn, Pr.grad, hr.grad, wr.grad])
        for a, b in zip(*outs):
            err = max(err, (a.double() - b.double()).abs().max().item())
    return err, {r.ran for r in runs}, runs


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", default="all", help=f"one of {SETS} or a comma list of them")
    ap.add_argument("--tiers", default="", help="backend:tier,... to run instead of a set (e.g. cuda:cluster2)")
    ap.add_argument("--dtypes", default="float32,bfloat16", help="torch dtype names, and tf32 (fp32 + allow_tf32)")
    ap.add_argument("--report", action="store_true", help="a markdown table, one line per backend/tier/dtype")
    ap.add_argument("--names", action="store_true", help="print the set's backend:tier names and run nothing")
    args = ap.parse_args()
    bad_sets = set(args.set.split(",")) - set(SETS)
    if bad_sets:
        ap.error(f"--set: unknown {sorted(bad_sets)}; choose from {SETS}")
    dtypes: list[torch.dtype | str] = [TF32 if n == TF32 else getattr(torch, n) for n in args.dtypes.split(",")]
    if args.names:
        print(" ".join(dict.fromkeys(f"{b}:{t}" for b, t, _ in cases(args.set, dtypes, args.tiers))))
        return 0
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 0
    todo = cases(args.set, dtypes, args.tiers)
    if not todo:
        print(f"no GPU backend/tier in the {args.set!r} set")
        return 0
    if args.report:
        print(f"| backend | tier | dtype | ran | launches | max abs err vs reference | verdict |\n|{'---|' * 7}")
    bad = 0
    for backend, tier, dtype in todo:
        name = str(dtype).removeprefix("torch.")
        try:
            err, ran, runs = run_one(backend, tier, dtype)
            ok_err = err == err and err < (1e-3 if dtype == torch.float32 else 5e-2)  # tf32: fp16's mantissa
            ok_tier = ran == {tier}
            verdict = "PASS" if ok_err and ok_tier else ("FELL BACK" if not ok_tier else "LARGE ERROR")
            why = "; ".join(sorted({r.why for r in runs if r.why}))
            detail = "; ".join(sorted({r.detail for r in runs if r.detail}))
            if args.report:
                print(f"| {backend} | {tier} | {name} | {', '.join(sorted(ran)) or '-'} | {len(runs)} | {err:.2e} | "
                      f"{verdict}{' (' + why + ')' if why else ''} |")
            else:
                print(f"{backend:7s} {tier:12s} {name:9s} ran {sorted(ran)} max|err| vs reference = {err:.3e} "
                      f"{verdict} {why}")
            if detail:
                print(f"    launched: {detail}")
            bad += verdict != "PASS"
        except Exception as e:  # report and go on: every tier's verdict matters
            msg = f"{type(e).__name__}: {e}".replace("\n", " ")[:300]
            print(f"| {backend} | {tier} | {name} | - | - | - | ERROR {msg} |" if args.report
                  else f"{backend:7s} {tier:12s} {name:9s} ERROR {msg}")
            bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
