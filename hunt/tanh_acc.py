"""Accuracy of the CPU kernels' tanh (W_hh = 0, so Y = tanh(P)) vs torch.tanh fp32, in ulps of the fp64 truth."""
import _path  # noqa: F401,I001  (this checkout first on sys.path)
import sys

sys.path.insert(0, "tests")
import torch  # noqa: E402
from cpu_common import forced  # noqa: E402

import fused_rnn  # noqa: F401,E402

torch.set_num_threads(1)
x = torch.cat([torch.linspace(-10, 10, 200001), torch.randn(100000) * 0.3, torch.logspace(-30, 1, 10000)])
x = x.float()
T, B, H = x.numel() // 16, 1, 16
P = x[: T * 16].view(T, B, H)
truth = torch.tanh(P.double())
ulp = torch.finfo(torch.float32).eps * truth.abs().clamp_min(2**-126)  # roughly ulp(|truth|)... use spacing
spacing = (torch.nextafter(truth.float().abs(), torch.tensor(float("inf"))) - truth.float().abs()).double()
for isa in ("generic", "avx2", "avx512"):
    with forced(isa=isa):
        Y, _ = torch.ops.fused_rnn.elman_fwd(P, torch.zeros(B, H), torch.zeros(H, H), None, False, "tanh", "", False)
    e = ((Y.double() - truth).abs() / spacing)
    print(isa, "max ulp", e.max().item(), "mean", e.mean().item(), "at x =", P.flatten()[e.flatten().argmax()].item())
e = ((torch.tanh(P).double() - truth).abs() / spacing)
print("torch.tanh max ulp", e.max().item(), "mean", e.mean().item())
