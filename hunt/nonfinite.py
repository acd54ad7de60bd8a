"""NaN / inf inputs and relu overflow: fused_rnn vs nn.RNN, placement of NaN / ±inf in outputs and gradients.

Prints a line per mismatch category. Usage: python hunt/nonfinite.py N"""
import _path  # noqa: F401,I001  (this checkout first on sys.path)
import random
import sys

import torch
from torch import nn

import fused_rnn

torch.set_num_threads(1)
DT = {"fp64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def masks(t):
    return torch.stack([t.isnan(), t.isposinf(), t.isneginf()])


def run(m, x, hx, gy, gh):
    m.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    hx = hx.clone().requires_grad_(True)
    y, h = m(x, hx)
    ((y.float() * gy).sum() + (h.float() * gh).sum()).backward()
    r = {"y": y.detach(), "h_n": h.detach(), "gx": x.grad, "ghx": hx.grad}
    for n, p in m.named_parameters():
        r["g_" + n] = p.grad
    return r


def case(seed, kind):
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    dt = rng.choice(list(DT))
    nl = "relu" if kind == "overflow" else rng.choice(["tanh", "relu"])
    T, B, I, H, L = rng.randint(1, 8), rng.randint(1, 5), rng.randint(1, 9), rng.randint(1, 20), rng.randint(1, 2)  # noqa: E741
    bi = rng.random() < 0.5
    theirs = nn.RNN(I, H, num_layers=L, nonlinearity=nl, bidirectional=bi, dtype=torch.float64)
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.rand(p.shape, generator=g, dtype=torch.float64) * 2 - 1)
            if kind == "overflow":
                p.mul_(torch.finfo(DT[dt]).max ** 0.5 * rng.choice([0.01, 0.3, 1.0, 3.0]))
    theirs = theirs.to(DT[dt])
    D = 2 if bi else 1
    x = torch.randn(T, B, I, generator=g, dtype=torch.float64)
    if kind == "overflow":
        x = x * torch.finfo(DT[dt]).max ** 0.5 * 0.1
    hx = 0.5 * torch.randn(L * D, B, H, generator=g, dtype=torch.float64)
    if kind == "nan_x":
        x[rng.randrange(T), rng.randrange(B), rng.randrange(I)] = float("nan")
    elif kind == "inf_x":
        x[rng.randrange(T), rng.randrange(B), rng.randrange(I)] = rng.choice([float("inf"), float("-inf")])
    elif kind == "nan_hx":
        hx[rng.randrange(L * D), rng.randrange(B), rng.randrange(H)] = float("nan")
    elif kind == "inf_hx":
        hx[rng.randrange(L * D), rng.randrange(B), rng.randrange(H)] = rng.choice([float("inf"), float("-inf")])
    x, hx = x.to(DT[dt]), hx.to(DT[dt])
    gy = torch.randn(T, B, D * H, generator=g)
    gh = torch.randn(L * D, B, H, generator=g)
    want = run(theirs, x, hx, gy, gh)
    out = []
    for be in ("cpu", "reference"):
        ours = fused_rnn.RNN(I, H, num_layers=L, nonlinearity=nl, bidirectional=bi, dtype=DT[dt], backend=be)
        ours.load_state_dict(theirs.state_dict())
        got = run(ours, x, hx, gy, gh)
        for k in want:
            a, b = masks(got[k]), masks(want[k])
            if not torch.equal(a, b):
                # row-level: non-finite rows of nn.RNN must be non-finite in ours (promise 2), for y only
                nf_w = ~want[k].isfinite()
                nf_g = ~got[k].isfinite()
                out.append(f"{kind} s{seed} {dt} {nl} T{T} B{B} I{I} H{H} L{L} {'bi' if bi else 'uni'} {be} {k}: "
                           f"nonfinite ours {int(nf_g.sum())} nn {int(nf_w.sum())}; nan ours {int(got[k].isnan().sum())}"  # noqa: E501
                           f" nn {int(want[k].isnan().sum())}; ours-nonfinite-where-nn-finite {int((nf_g & ~nf_w).sum())}"  # noqa: E501
                           f"; nn-nonfinite-where-ours-finite {int((nf_w & ~nf_g).sum())}")
    return out


if __name__ == "__main__":
    n = int(sys.argv[1])
    kinds = sys.argv[2].split(",") if len(sys.argv) > 2 else ["nan_x", "inf_x", "nan_hx", "inf_hx", "overflow"]
    for kind in kinds:
        bad = 0
        for s in range(n):
            lines = case(s, kind)
            bad += bool(lines)
            for ln in lines[:4]:
                print(ln)
        print(f"== {kind}: {n} cases, {bad} with a mismatch", flush=True)
