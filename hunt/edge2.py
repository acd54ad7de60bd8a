import _path  # noqa: F401,I001  (this checkout first on sys.path)
import sys
import warnings

import torch
from torch import nn
from torch.nn.utils import parametrize

import fused_rnn

sys.path.insert(0, "tests")
from cpu_common import forced  # noqa: E402

torch.set_num_threads(1)

# tanh special values through the kernels
vals = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e-45, -1e-45, 1e-38, 88.0, -88.0, 1e30,
                     -1e30, 9.0, -9.0, 0.625, -0.625, 0.6249999, 1e-8, 3.4e38])
H = vals.numel()
for dt in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
    P = vals.to(dt).view(1, 1, H)
    want = torch.tanh(P.float()).to(dt) if dt in (torch.bfloat16, torch.float16) else torch.tanh(P)
    for isa in ("generic", "avx2", "avx512", "avx512bf16"):
        with forced(isa=isa):
            Y, _ = torch.ops.fused_rnn.elman_fwd(P, torch.zeros(1, H, dtype=dt), torch.zeros(H, H, dtype=dt), None,
                                                 False, "tanh", "", False)
        same = (Y == want) | (Y.isnan() & want.isnan())
        signs = torch.signbit(Y) == torch.signbit(want)
        ulps = ((Y.double() - want.double()).abs() / torch.finfo(dt).eps).max().item()
        if not bool(same.all()) and ulps > 4 or not bool(signs[~Y.isnan()].all()):
            print("tanh special", dt, isa, "input", vals[~same.flatten()].tolist(), "got", Y.flatten()[~same.flatten()].tolist(),  # noqa: E501
                  "want", want.flatten()[~same.flatten()].tolist())

# B = 0
for be in ("cpu", "reference", "auto"):
    torch.manual_seed(0)
    theirs = nn.RNN(3, 4, num_layers=2, bidirectional=True)
    ours = fused_rnn.RNN(3, 4, num_layers=2, bidirectional=True, backend=be)
    ours.load_state_dict(theirs.state_dict())
    for shape in ((5, 0, 3),):
        x = torch.randn(shape, requires_grad=True)
        res = []
        for m in (theirs, ours):
            try:
                y, h = m(x)
                (y.sum() + h.sum()).backward()
                res.append(("ok", tuple(y.shape), tuple(h.shape)))
            except Exception as e:  # noqa: BLE001
                res.append((type(e).__name__, str(e)[:80]))
        if res[0] != res[1]:
            print("B=0", be, res)

# parametrize (orthogonal W_hh), non-contiguous weights, grad accumulation, retain_graph
for be in ("cpu", "reference"):
    torch.manual_seed(0)
    theirs = nn.RNN(3, 6)
    ours = fused_rnn.RNN(3, 6, backend=be)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(5, 2, 3)
    # non-contiguous weight (transposed storage)
    with torch.no_grad():
        for m in (theirs, ours):
            w = m.weight_hh_l0.detach().t().contiguous().t()
            m.weight_hh_l0 = nn.Parameter(w)
            assert not m.weight_hh_l0.is_contiguous()
    for m in (theirs, ours):
        m.zero_grad()
        y, h = m(x)
        loss = y.square().sum()
        loss.backward(retain_graph=True)
        loss.backward()  # accumulate twice
    for (n, a), (_, b) in zip(theirs.named_parameters(), ours.named_parameters()):
        if not torch.allclose(a.grad, b.grad, atol=1e-5):
            print("accumulate/retain_graph/noncontig weight", be, n, (a.grad - b.grad).abs().max().item())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for m in (theirs, ours):
            parametrize.register_parametrization(m, "weight_hh_l0", nn.Identity())
            m.zero_grad()
    outs = []
    for m in (theirs, ours):
        try:
            y, h = m(x)
            y.sum().backward()
            outs.append(("ok", y.detach(), m.parametrizations.weight_hh_l0.original.grad))
        except Exception as e:  # noqa: BLE001
            outs.append((type(e).__name__, str(e)[:150]))
    if outs[0][0] != outs[1][0]:
        print("parametrize", be, [o[:2] if o[0] != "ok" else "ok" for o in outs])
    elif outs[0][0] == "ok":
        if not torch.allclose(outs[0][1], outs[1][1], atol=1e-5) or not torch.allclose(outs[0][2], outs[1][2], atol=1e-5):  # noqa: E501
            print("parametrize value diff", be)
print("edge2 done")
