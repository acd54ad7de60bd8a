"""In-place modification of outputs / inputs after forward, then backward: nn.RNN raises (autograd's version check)
or gives the right gradient; fused_rnn must not silently give a different gradient."""
import _path  # noqa: F401,I001  (this checkout first on sys.path)

import torch
from torch import nn

import fused_rnn

torch.set_num_threads(1)


def pair(backend, **cfg):
    torch.manual_seed(0)
    theirs = nn.RNN(5, 7, **cfg)
    ours = fused_rnn.RNN(5, 7, backend=backend, **cfg)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def attempt(m, mutate, x, hx):
    m.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    hx = hx.clone().requires_grad_(True)
    hx_in = hx * 1.0  # a non-leaf, so it may be modified in place
    y, h = m(x, hx_in)
    loss_parts = mutate(y, h, x, hx_in)
    try:
        loss_parts.backward()
    except RuntimeError as e:
        return ("raises", str(e)[:90])
    return ("ok", [x.grad, hx.grad] + [p.grad for p in m.parameters()])


MUTATIONS = {
    "y.mul_(2)": lambda y, h, x, hx: (y.mul_(2), y.sum())[1],
    "h_n.add_(1)": lambda y, h, x, hx: (h.add_(1), (y.sum() + h.sum()))[1],
    "y[0].zero_()": lambda y, h, x, hx: (y[0].zero_(), y.square().sum())[1],
    "hx.add_(1) after": lambda y, h, x, hx: (hx.add_(1), y.sum())[1],
    "y.sum then y.tanh_()": lambda y, h, x, hx: (y.tanh_(), y.sum())[1],
}
bad = 0
for be in ("cpu", "reference"):
    for cfg in (dict(), dict(num_layers=2), dict(bidirectional=True), dict(batch_first=True),
                dict(nonlinearity="relu")):
        for name, mut in MUTATIONS.items():
            ours, theirs = pair(be, **cfg)
            x = torch.randn(3, 4, 5) if not cfg.get("batch_first") else torch.randn(4, 3, 5)
            D = 2 if cfg.get("bidirectional") else 1
            hx = torch.randn(cfg.get("num_layers", 1) * D, 4, 7)
            a = attempt(theirs, mut, x, hx)
            b = attempt(ours, mut, x, hx)
            if a[0] != b[0]:
                bad += 1
                print(f"MISMATCH {be} {cfg} {name}: nn.RNN {a[0]} {a[1] if a[0] == 'raises' else ''} | ours {b[0]} "
                      f"{b[1] if b[0] == 'raises' else ''}")
            elif a[0] == "ok":
                for ga, gb in zip(a[1], b[1]):
                    if (ga is None) != (gb is None) or (ga is not None and not torch.allclose(ga, gb, atol=1e-5)):
                        bad += 1
                        print(f"GRAD DIFF {be} {cfg} {name}")
                        break
print("mismatches:", bad)
