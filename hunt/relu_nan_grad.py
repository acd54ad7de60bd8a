"""relu backward: nn.RNN's threshold_backward zeroes g where h <= 0 even if g is NaN/inf; does fused_rnn?"""
import _path  # noqa: F401,I001  (this checkout first on sys.path)
import torch
from torch import nn

import fused_rnn

torch.set_num_threads(1)
torch.manual_seed(0)
T, B, I, H = 4, 2, 3, 5  # noqa: E741
for backend in ("cpu", "reference"):
    for dt in (torch.float64, torch.float32):
        ref = nn.RNN(I, H, nonlinearity="relu", dtype=dt)
        ours = fused_rnn.RNN(I, H, nonlinearity="relu", dtype=dt, backend=backend)
        ours.load_state_dict(ref.state_dict())
        x = torch.randn(T, B, I, dtype=dt)
        outs = []
        for m in (ref, ours):
            xx = x.clone().requires_grad_(True)
            y, h = m(xx)
            g = torch.randn_like(y)
            g[1, 0, :] = float("nan")  # NaN upstream gradient at one step
            y.backward(g)
            outs.append((y.detach(), xx.grad, m.weight_hh_l0.grad.clone()))
            m.zero_grad()
        (y0, gx0, gw0), (y1, gx1, gw1) = outs
        print(backend, dt, "y equal:", torch.allclose(y0, y1),
              "| zero units at t=1 b=0:", int((y0[1, 0] <= 0).sum()),
              "| nan in x.grad nn:", int(gx0.isnan().sum()), "ours:", int(gx1.isnan().sum()),
              "| nan in W_hh.grad nn:", int(gw0.isnan().sum()), "ours:", int(gw1.isnan().sum()))
