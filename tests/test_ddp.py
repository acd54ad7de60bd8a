"""fused_rnn.RNN under DistributedDataParallel: 2 gloo processes on the CPU train a few steps, and every step's
gradients and the final parameters equal one process training on the whole batch.

Nothing distributed is home-made: the module is an ordinary nn.Module with ordinary parameters, so DDP (or FSDP),
NCCL and multi-node setups work the same way. One spawn covers every CPU backend (a spawn costs seconds on a 2-core
machine); the workers are bounded by a process-group timeout and the parent by a join deadline.
"""

from __future__ import annotations

import datetime
import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fused_rnn
from fused_rnn.backends.select import backend_module

I, H, T, B, STEPS, WORLD = 5, 7, 6, 6, 3, 2  # noqa: E741 (DESIGN.md's shape letters); B splits evenly over WORLD
JOIN_DEADLINE_S = 240.0
# the CPU backends of this machine (as conftest's cpu_backend fixture), computed here so that the spawned workers,
# which import this file by name, need nothing from conftest
CPU_BACKENDS = [n for n in fused_rnn.available_backends() if backend_module(n).supports_device(torch.device("cpu"))]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data(backend_index: int) -> tuple[dict, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Identical in every process: (initial state_dict, x [STEPS, T, B, I], lengths [STEPS, B], hx [STEPS, 2·2, B, H],
    target [STEPS, T, B, 2·H])."""
    g = torch.Generator().manual_seed(1234 + backend_index)
    model = _model("reference")
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.rand(p.shape, generator=g, dtype=p.dtype) - 0.5)
    x = torch.randn(STEPS, T, B, I, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, T + 1, (STEPS, B), generator=g)
    hx = torch.randn(STEPS, 4, B, H, generator=g, dtype=torch.float64)
    target = torch.randn(STEPS, T, B, 2 * H, generator=g, dtype=torch.float64)
    return model.state_dict(), x, lengths, hx, target


def _model(backend: str) -> fused_rnn.RNN:
    # dropout=0: a dropout mask would differ between one process and two (different RNG streams).
    return fused_rnn.RNN(I, H, num_layers=2, bidirectional=True, backend=backend).double()


def _train(model: torch.nn.Module, params: list[torch.nn.Parameter], data: tuple, batch: slice) -> list[torch.Tensor]:
    """STEPS of SGD on the ``batch`` slice; returns every step's gradients then the final parameters (flattened)."""
    _, x, lengths, hx, target = data
    opt = torch.optim.SGD(params, lr=0.1)
    record = []
    for s in range(STEPS):
        opt.zero_grad()
        out, h_n = model(x[s][:, batch], hx[s][:, batch], lengths=lengths[s][batch])
        # mean over this process's elements; DDP averages over processes -> the mean over the whole batch
        loss = (out - target[s][:, batch]).square().mean() + h_n.square().mean()
        loss.backward()
        record.append(torch.cat([p.grad.reshape(-1) for p in params]).clone())
        opt.step()
    record.append(torch.cat([p.detach().reshape(-1) for p in params]).clone())
    return record


def _worker(rank: int, port: int, out_dir: str, backends: list[str]) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)  # two processes on a 2-core machine
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        per = B // WORLD
        results = {}
        for k, backend in enumerate(backends):
            data = _data(k)
            model = _model(backend)
            model.load_state_dict(data[0])
            ddp = torch.nn.parallel.DistributedDataParallel(model)
            results[backend] = _train(ddp, list(ddp.parameters()), data, slice(rank * per, (rank + 1) * per))
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_two_gloo_processes_equal_one_process(tmp_path: Path) -> None:
    ctx = mp.spawn(_worker, args=(_free_port(), str(tmp_path), CPU_BACKENDS), nprocs=WORLD, join=False)
    deadline = time.monotonic() + JOIN_DEADLINE_S
    try:
        while not ctx.join(timeout=5):  # raises ProcessRaisedException if a worker failed
            if time.monotonic() > deadline:
                pytest.fail(f"DDP workers did not finish within {JOIN_DEADLINE_S} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
                p.join(5)

    for k, backend in enumerate(CPU_BACKENDS):
        data = _data(k)
        model = _model(backend)
        model.load_state_dict(data[0])
        want = _train(model, list(model.parameters()), data, slice(0, B))
        for rank in range(WORLD):
            got = torch.load(tmp_path / f"rank{rank}.pt")[backend]
            for s, (g, w) in enumerate(zip(got, want)):
                label = f"{backend}, rank {rank}, " + (f"step {s} gradients" if s < STEPS else "final parameters")
                torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12, msg=lambda m, label=label: f"{label}: {m}")
