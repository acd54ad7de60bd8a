"""Tiny H fp32 tanh: how often the tolerance rule fails, backend cpu vs reference (same draws). Usage: N"""
import _path  # noqa: F401,I001
import dataclasses
import random
import sys

import torch

import test_fuzz_parity as F

torch.set_num_threads(1)
n = int(sys.argv[1])
fails = {"cpu": 0, "reference": 0}
keys: dict = {}
for s in range(n):
    rng = random.Random(s)
    d = F.Draw(seed=s, I=rng.randint(1, 3), H=rng.choice([1, 2]), L=rng.randint(1, 3), bias=True, batch_first=False,
               bidirectional=False, nonlinearity="tanh", dropout=0.0, dtype="fp32", form="batched",
               T=rng.randint(20, 40), B=8, lengths=(0,) * 8, with_hx=True, x_grad=True, frozen=False, contiguous=True,
               backend="cpu", T2=3, B2=2)
    d = dataclasses.replace(d, lengths=(d.T,) * 8)
    for be in fails:
        try:
            F.test_random_configuration_matches_nn_rnn(dataclasses.replace(d, backend=be))
        except AssertionError as e:
            fails[be] += 1
            keys.setdefault(be, {}).setdefault(str(e).split(":")[0], 0)
            keys[be][str(e).split(":")[0]] += 1
print(f"{n} tiny-H fp32 tanh draws: rule failures {fails}; first failing key: {keys}")
