"""Realistic trigger: loss = output.sqrt().sum() with relu. d sqrt/dy = inf at dead units (y = 0); nn.RNN's relu
backward (threshold_backward: h <= 0 ? 0 : g) zeroes it, so the gradients are finite."""
import _path  # noqa: F401,I001  (this checkout first on sys.path)
import torch
from torch import nn

import fused_rnn

torch.set_num_threads(1)
torch.manual_seed(0)
ref = nn.RNN(3, 8, nonlinearity="relu")
for backend in ("cpu", "reference", "native"):
    ours = fused_rnn.RNN(3, 8, nonlinearity="relu", backend=backend)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(5, 2, 3)
    for name, m in (("nn.RNN", ref), (backend, ours)):
        m.zero_grad()
        y, _ = m(x)
        y.sqrt().sum().backward()
        print(f"{name:10s} dead units: {int((y == 0).sum())}/{y.numel()}  "
              f"weight_ih_l0.grad finite: {bool(m.weight_ih_l0.grad.isfinite().all())}")
