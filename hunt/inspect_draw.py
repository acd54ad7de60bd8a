"""Per-key errors vs the fp64 oracle for one offgrid draw, for backends cpu / reference and nn.RNN.
Usage: python hunt/inspect_draw.py KIND SEED"""
import _path  # noqa: F401,I001  (this checkout first on sys.path)
import dataclasses
import sys

sys.path.insert(0, "tests")
sys.path.insert(0, "hunt")
import torch  # noqa: E402

torch.set_num_threads(1)
import offgrid  # noqa: E402
import test_fuzz_parity as F  # noqa: E402

kind, seed = sys.argv[1], int(sys.argv[2])
d0 = offgrid.make(kind, seed)
print(d0.id, d0.lengths if len(d0.lengths) < 20 else "")
res = {}
for be in ("cpu", "reference"):
    d = dataclasses.replace(d0, backend=be)
    ours, theirs, oracle_m = F._modules(d)
    dt = F.DTYPES[d.dtype]
    data = F._data(d, d.T, d.B, seed=d.seed)
    res[be] = F._results(ours, d, dt, data, list(d.lengths))
res["nn"] = F._results(theirs, d, dt, data, list(d.lengths))
orc = F._results(oracle_m, d, torch.float64, data, list(d.lengths))
for k in orc:
    if orc[k].dtype == torch.int64 or k.startswith("flag"):
        continue
    scale = max(1.0, orc[k].abs().max().item())
    errs = {n: (r[k].double() - orc[k]).abs().max().item() for n, r in res.items() if k in r}
    print(f"{k:22s} |oracle|max {scale:9.3e} " + " ".join(f"{n} {e:.2e} ({e/scale/1.19e-7:.1f} eps)" for n, e in errs.items()))  # noqa: E501
