"""Off-grid draws through the existing fuzz test's checker (tests/test_fuzz_parity.test_random_configuration...).

Usage: [HUNT_THREADS=2] [HUNT_PATH=hidden|batch|serial|blas] python hunt/offgrid.py KIND N [ISA]
KIND in longT, bigB, tiny, deep, packedodd, t1
"""
import _path  # noqa: F401,I001  (this checkout first on sys.path)
import os
import random
import sys
import time
import traceback

sys.path.insert(0, "tests")
import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("HUNT_THREADS", "1")))
import test_fuzz_parity as F  # noqa: E402
from cpu_common import forced  # noqa: E402


def lens_for(rng, form, T, B, mode):
    if form not in ("packed_sorted", "packed_unsorted", "lengths_kw"):
        return [T] * B
    if mode == "equal":
        lens = [T] * B
    elif mode == "dups":
        vals = [rng.randint(1, T) for _ in range(max(1, B // 3))]
        lens = [rng.choice(vals) for _ in range(B)]
        lens[rng.randrange(B)] = T
    else:
        lens = [rng.randint(1, T) for _ in range(B)]
        lens[rng.randrange(B)] = T
    if form == "packed_sorted":
        lens.sort(reverse=True)
    return lens


def make(kind, seed):
    rng = random.Random(seed * 7919 + sum(map(ord, kind)))
    dtype = rng.choices(["fp64", "fp32", "bf16", "fp16"], weights=[35, 45, 10, 10])[0]
    form = rng.choice(F.FORMS)
    L, T, B = 1, 5, 3
    I = rng.randint(1, 40)  # noqa: E741
    H = rng.randint(1, 40)
    lmode = rng.choice(["rand", "equal", "dups"])
    if kind == "longT":
        T, B, H, I = rng.randint(500, 3000), rng.randint(1, 4), rng.randint(1, 24), rng.randint(1, 16)  # noqa: E741
        L = rng.randint(1, 2)
    elif kind == "bigB":
        T, B, H = rng.randint(1, 6), rng.randint(256, 2048), rng.randint(1, 40)
        L = rng.randint(1, 2)
    elif kind == "tiny":
        H, I = rng.choice([1, 1, 2, rng.randint(1, 5)]), rng.choice([1, 1, 2, 3])  # noqa: E741
        T, B, L = rng.randint(1, 40), rng.randint(1, 9), rng.randint(1, 3)
    elif kind == "deep":
        L, T, B = rng.randint(4, 6), rng.randint(1, 20), rng.randint(1, 6)
    elif kind == "packedodd":
        form = rng.choice(["packed_sorted", "packed_unsorted", "lengths_kw"])
        T, B, L = rng.randint(1, 15), rng.choice([1, 1, rng.randint(2, 9)]), rng.randint(1, 3)
    elif kind == "t1":
        T, B, L = 1, rng.randint(1, 9), rng.randint(1, 3)
    if dtype in ("bf16", "fp16") and H < 16:
        H = rng.randint(16, 64)
    if form == "unbatched":
        B = 1
    lens = lens_for(rng, form, T, B, lmode)
    nl = rng.choice(["tanh", "relu"]) if dtype in ("fp64", "fp32") else "tanh"
    return F.Draw(seed=seed, I=I, H=H, L=L, bias=rng.random() < 0.75, batch_first=rng.random() < 0.5,
                  bidirectional=rng.random() < 0.5, nonlinearity=nl,
                  dropout=round(rng.uniform(0.1, 0.9), 2) if rng.random() < 0.2 else 0.0, dtype=dtype, form=form,
                  T=T, B=B, lengths=tuple(lens), with_hx=rng.random() < 0.6, x_grad=rng.random() < 0.8,
                  frozen=rng.random() < 0.1, contiguous=rng.random() < 0.75, backend=rng.choice(F.BACKENDS),
                  T2=max(1, T // rng.randint(1, 3)), B2=1 if form == "unbatched" else max(1, B // rng.randint(1, 3)))


def main():
    kind, n = sys.argv[1], int(sys.argv[2])
    isa = sys.argv[3] if len(sys.argv) > 3 else None
    fails = 0
    t0 = time.time()
    for s in range(n):
        d = make(kind, s)
        try:
            if isa or os.environ.get("HUNT_PATH"):
                with forced(isa=isa or None, path=os.environ.get("HUNT_PATH") or None):
                    F.test_random_configuration_matches_nn_rnn(d)
            else:
                F.test_random_configuration_matches_nn_rnn(d)
        except Exception as e:  # noqa: BLE001
            fails += 1
            msg = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
            print(f"FAIL {kind} {d.id} T2={d.T2} B2={d.B2} lens={d.lengths if len(d.lengths) < 12 else '...'}: "
                  f"{type(e).__name__}: {msg}", flush=True)
            if not isinstance(e, AssertionError):
                traceback.print_exc()
    print(f"{kind} isa={isa} path={os.environ.get('HUNT_PATH')} threads={torch.get_num_threads()}: {n} draws, {fails} failures, {time.time() - t0:.0f}s", flush=True)  # noqa: E501


if __name__ == "__main__":
    main()
