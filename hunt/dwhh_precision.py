"""grad_w_hh's error against fp64: one GEMM over all (T-1)·B rows (fused_rnn.recurrence.grad_w_hh) vs nn.RNN's
per-step GEMMs (K = B each) summed by autograd. Same fp32 inputs (dA, Y rounded from fp64), so only the reduction
differs."""
import _path  # noqa: F401,I001
import torch

from fused_rnn.recurrence import grad_w_hh

torch.set_num_threads(1)
for T, B, H in ((6, 1753, 5), (6, 1698, 10), (6, 2048, 16), (6, 512, 16), (3000, 2, 16), (200, 64, 64), (2, 8192, 8)):
    g = torch.Generator().manual_seed(0)
    Y = torch.tanh(torch.randn(T, B, H, generator=g, dtype=torch.float64))
    dA = torch.randn(T, B, H, generator=g, dtype=torch.float64) * (1 - Y * Y)
    h0 = torch.tanh(torch.randn(B, H, generator=g, dtype=torch.float64))
    truth = grad_w_hh(dA, Y, h0, None, False)
    Y32, dA32, h032 = Y.float(), dA.float(), h0.float()
    one = grad_w_hh(dA32, Y32, h032, None, False)
    S = torch.cat([h032[None], Y32[:-1]])
    per_step = torch.zeros(H, H)
    for t in range(T):  # what autograd accumulates for nn.RNN: one [H,B]x[B,H] GEMM per step, summed in order
        per_step += dA32[t].t().mm(S[t])
    scale = max(1.0, truth.abs().max().item())
    e1 = (one.double() - truth).abs().max().item() / scale / 1.19e-7
    e2 = (per_step.double() - truth).abs().max().item() / scale / 1.19e-7
    print(f"T={T:5d} B={B:5d} H={H:3d}: one GEMM {e1:6.1f} eps, per-step sum {e2:6.1f} eps  (of max|dW|={scale:.1f})")


def chunked(dA, Y, h0, rows=1024):
    """grad_w_hh with the shifted GEMM split into chunks of whole steps of <= `rows` rows (>= 1 step)."""
    T, B, H = Y.shape
    dw = dA[0].t().mm(h0)
    k = max(1, rows // B)
    for t0 in range(1, T, k):
        t1 = min(T, t0 + k)
        dw.addmm_(dA[t0:t1].reshape(-1, H).t(), Y[t0 - 1:t1 - 1].reshape(-1, H))
    return dw


print("chunked by whole steps of <= 1024 rows:")
for T, B, H in ((6, 1753, 5), (6, 1698, 10), (2, 8192, 8), (3000, 2, 16), (2800, 16, 256)):
    g = torch.Generator().manual_seed(0)
    Y = torch.tanh(torch.randn(T, B, H, generator=g, dtype=torch.float64))
    dA = torch.randn(T, B, H, generator=g, dtype=torch.float64) * (1 - Y * Y)
    h0 = torch.tanh(torch.randn(B, H, generator=g, dtype=torch.float64))
    truth = grad_w_hh(dA, Y, h0, None, False)
    scale = max(1.0, truth.abs().max().item())
    one = grad_w_hh(dA.float(), Y.float(), h0.float(), None, False)
    ch = chunked(dA.float(), Y.float(), h0.float())
    e1 = (one.double() - truth).abs().max().item() / scale / 1.19e-7
    e3 = (ch.double() - truth).abs().max().item() / scale / 1.19e-7
    print(f"T={T:5d} B={B:5d} H={H:3d}: one GEMM {e1:6.1f} eps, chunked {e3:6.1f} eps")
