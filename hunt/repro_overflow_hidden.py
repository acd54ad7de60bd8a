"""docs/design.md "Overflow", promise 2 ("an overflow is never hidden: every (step, batch row) that is non-finite in
the reference is non-finite in every backend"), broken by the FMA builds of the CPU kernel.

relu, H = 2, h0 = [1e300, 1e300]; step 0 pre-activation of unit 0 is 1e300·(−1e300) + 1e300·(+1e300):
both products overflow.
Separate multiply-adds (nn.RNN, the reference, the generic build): −inf + inf = NaN -> the row is non-finite.
Fused multiply-adds (avx2/avx512 builds): fma(1e300, −1e300, P) = −inf, fma(1e300, 1e300, −inf) = −inf, and relu(−inf)
= 0 -> the row is [0, finite]: the overflow vanishes, and later steps run on from a finite state."""
import _path  # noqa: F401,I001  (this checkout first on sys.path)
import sys

sys.path.insert(0, "tests")
import torch  # noqa: E402
from cpu_common import forced  # noqa: E402
from torch import nn  # noqa: E402

import fused_rnn  # noqa: E402

torch.set_num_threads(1)
nnrnn = nn.RNN(1, 2, nonlinearity="relu", bias=False, dtype=torch.float64)
with torch.no_grad():
    nnrnn.weight_ih_l0.copy_(torch.tensor([[1.0], [1.0]], dtype=torch.float64))
    nnrnn.weight_hh_l0.copy_(torch.tensor([[-1e300, 1e300], [0.0, 0.0]], dtype=torch.float64))
x = torch.tensor([[[1.0]], [[1.0]], [[1.0]]], dtype=torch.float64)  # T=3, B=1, I=1
h0 = torch.tensor([[[1e300, 1e300]]], dtype=torch.float64)
print("nn.RNN      ", nnrnn(x, h0)[0].squeeze(1).tolist())
for be in ("reference", "cpu"):
    m = fused_rnn.RNN(1, 2, nonlinearity="relu", bias=False, dtype=torch.float64, backend=be)
    m.load_state_dict(nnrnn.state_dict())
    for isa in (("generic", "avx2", "avx512") if be == "cpu" else (None,)):
        if isa:
            with forced(isa=isa):
                y = m(x, h0)[0]
        else:
            y = m(x, h0)[0]
        print(f"{be:9s} {isa or '':7s}", y.squeeze(1).tolist(), torch.ops.fused_rnn.cpu_last_run() if isa else "")
