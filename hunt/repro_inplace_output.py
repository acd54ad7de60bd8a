"""Modifying the output in place after forward, then backward: nn.RNN (CPU) allows it, fused_rnn raises.

fused_rnn returns the last layer's Y -- the tensor ElmanRecurrence saved for backward (f'(h) is computed from it) --
as the output itself whenever no copy intervenes: time-major, unidirectional, padded input (the commonest form). An
in-place op on it (out.mul_(mask), F.relu(out, inplace=True), nn.Dropout(inplace=True), out += residual) bumps its
version, so backward raises autograd's "modified by an inplace operation". nn.RNN's CPU op returns a fresh stack of
the step outputs, so the same code works there (and gives the gradient of the modified graph). batch_first,
bidirectional and PackedSequence outputs are copies in fused_rnn too, and work."""
import _path  # noqa: F401,I001
import torch
from torch import nn

import fused_rnn

torch.manual_seed(0)
theirs = nn.RNN(4, 8)
for backend in ("cpu", "reference", "native"):
    ours = fused_rnn.RNN(4, 8, backend=backend)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(5, 3, 4)
    for name, m in (("nn.RNN", theirs), (f"fused_rnn[{backend}]", ours)):
        out, h = m(x)
        out.mul_(2.0)  # e.g. a mask or a scale applied in place
        try:
            out.sum().backward()
            print(f"{name:22s} ok")
        except RuntimeError as e:
            print(f"{name:22s} RuntimeError: {str(e)[:110]}")
