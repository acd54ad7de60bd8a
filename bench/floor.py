"""FLOP counts and the per-step floor (GPU and CPU).

Units: a *layer-step* is one time step of one direction of one layer; a case has T · layers · directions of them.

Model FLOPs of one call (what "achieved TFLOP/s" divides by the time):
    forward:  Σ over layer-directions of T · (2·B·I_l·H  +  2·B·H²)      (input GEMM + recurrence; I_0 = H,
                                                                          I_l = D·H above the first layer)
    fwd+bwd:  3 × forward (the backward does the input-gradient, weight-gradient and BPTT products: 2 × forward)

Per-step floor (what "× floor" compares the measured µs per layer-step to):
    floor = max( flops_step / rate ,  bytes_step / bandwidth )
    flops_step = 2·B·H²            (forward; 4·B·H² for fwd+bwd: the recurrence plus the BPTT product dA·W_hh)
    bytes_step = e·(H² + 2·B·H)    (w_hh read, h_{t-1} read, h_t written; e = bytes per element; ×2 for fwd+bwd)
    rate       = GPU: measured matmul rate on this card for the case's math: fp32 IEEE (SIMT), TF32, fp16 or bf16
                 tensor cores (a large square GEMM, median of do_bench);
                 CPU: the machine's measured peak matmul rate in the case dtype with torch's intra-op threads
                 (the best of several 1024² × 1024 GEMMs: what oneDNN/MKL reach on this CPU)
    bandwidth  = GPU: measured device-to-device copy bandwidth (read + write bytes / time);
                 CPU: measured cache read bandwidth -- one thread's BLAS dot product of two 128 KiB vectors (256
                 KiB read: it stays in L2 on every x86 CPU of the last decade) times torch's intra-op threads (each
                 core streams its share of W_hh from its own L2; a multi-threaded op on so small a buffer measures
                 OpenMP's wake-up, not the cache) -- optimistic where W_hh outgrows L2 (fp32 H=1024 is 4 MiB).
                 On a busy machine the probe reads low and a ratio below 1 can appear: the floor is then not a
                 lower bound (the JSON records the peaks; compare with the datasheet)
The bytes term is the floor of a kernel that streams w_hh from memory every step; a kernel that keeps w_hh on-chip
for the whole sequence is not bound by it, so a ratio below 1 is possible and means exactly that. The floor ignores
the step-to-step latency (a barrier, a launch) that dominates at small B: the ratio at B=1 shows what that costs.
The measured time is the whole module call (input GEMMs included), divided by the number of layer-steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .cases import Case

# Datasheet figures (dense, TFLOP/s and TB/s) -- recorded beside the measured rates for orientation only.
DATASHEET: dict[str, dict[str, float]] = {
    "H100 SXM": {"fp32": 67.0, "fp32-tf32": 494.7, "fp16": 989.4, "bf16": 989.4, "bw_TBps": 3.35},
    "H100 PCIe": {"fp32": 51.2, "fp32-tf32": 378.0, "fp16": 756.0, "bf16": 756.0, "bw_TBps": 2.0},
    "H200": {"fp32": 67.0, "fp32-tf32": 494.7, "fp16": 989.4, "bf16": 989.4, "bw_TBps": 4.8},
}


def datasheet_for(device_name: str) -> dict[str, float] | None:
    """The datasheet entry matching a CUDA device name, e.g. 'NVIDIA H100 80GB HBM3' -> H100 SXM."""
    n = device_name.upper()
    if "H200" in n:
        return DATASHEET["H200"]
    if "H100" in n:
        return DATASHEET["H100 PCIe"] if "PCIE" in n else DATASHEET["H100 SXM"]
    return None


def model_flops(case: Case, mode: str) -> float:
    """FLOPs of one call of ``case`` in ``mode`` (docstring of this module)."""
    T, B, H, D = case.T, case.B, case.H, case.directions
    total = 0.0
    for layer in range(case.layers):
        inp = H if layer == 0 else D * H
        total += D * T * (2.0 * B * inp * H + 2.0 * B * H * H)
    return total * (3.0 if mode == "fwd+bwd" else 1.0)


def floor_us_per_step(case: Case, mode: str, rate_tflops: float, bw_tbps: float) -> float:
    """The per-layer-step floor in µs for ``case`` in ``mode`` at the given rate and bandwidth."""
    e = torch.empty((), dtype=case.torch_dtype).element_size()
    k = 2.0 if mode == "fwd+bwd" else 1.0
    flops = k * 2.0 * case.B * case.H * case.H
    nbytes = k * e * (case.H * case.H + 2.0 * case.B * case.H)
    return max(flops / (rate_tflops * 1e12), nbytes / (bw_tbps * 1e12)) * 1e6


@dataclass
class Peaks:
    """Measured peak rates on the current CUDA device: TFLOP/s per dtype key, and copy bandwidth in TB/s."""

    tflops: dict[str, float]
    bw_tbps: float


def measure_cpu_peaks(dtype_keys: list[str], budget_s: float = 0.6) -> Peaks:
    """The CPU's peak matmul rate per dtype key (TFLOP/s) and its cache read bandwidth (TB/s), with torch's threads.

    About 0.6 s: per dtype a 1024-square GEMM repeated (best of 3 timed blocks), and one thread's dot product of
    two 128 KiB fp32 vectors repeated (best of 3 blocks), times the thread count.
    """
    import time

    from .cases import DTYPES

    def best_rate(fn, work: float) -> float:
        fn()
        best = math.inf
        for _ in range(3):
            n, t0 = 0, time.perf_counter()
            while True:
                fn()
                n += 1
                dt = time.perf_counter() - t0
                if dt > budget_s / (3 * (len(dtype_keys) + 1)):
                    break
            best = min(best, dt / n)
        return work / best

    rates = {}
    n = 1024
    for key in dtype_keys:
        dtype = DTYPES[key][0]
        a = torch.randn(n, n, dtype=torch.float32).to(dtype)
        b = torch.randn(n, n, dtype=torch.float32).to(dtype)
        rates[key] = best_rate(lambda a=a, b=b: torch.mm(a, b), 2.0 * n ** 3) / 1e12
    u, v = torch.randn(32 * 1024), torch.randn(32 * 1024)  # 2 × 128 KiB fp32
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        bw = best_rate(lambda: torch.dot(u, v), 2 * 32 * 1024 * 4.0) * threads / 1e12
    finally:
        torch.set_num_threads(threads)
    return Peaks(rates, bw)


def measure_peaks(dtype_keys: list[str], timer) -> Peaks:
    """Measure matmul rates for the dtype keys used by the run and the copy bandwidth, with ``timer(fn) -> ms``.

    Costs well under a second on an H100 (one 8192² GEMM per dtype key, one 1 GiB copy).
    """
    from .cases import DTYPES

    n = 8192
    rates = {}
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        for key in dtype_keys:
            dtype, tf32 = DTYPES[key]
            torch.backends.cuda.matmul.allow_tf32 = tf32
            a = torch.randn(n, n, device="cuda", dtype=dtype)
            b = torch.randn(n, n, device="cuda", dtype=dtype)
            ms = timer(lambda a=a, b=b: torch.mm(a, b))
            rates[key] = 2.0 * n ** 3 / (ms * 1e-3) / 1e12
            del a, b
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
    bufs = [torch.empty(1 << 28, device="cuda", dtype=torch.float32) for _ in range(2)]  # 2 × 1 GiB
    ms = timer(lambda: bufs[1].copy_(bufs[0]))
    bw = 2.0 * bufs[0].numel() * 4 / (ms * 1e-3) / 1e12
    bufs.clear()
    torch.cuda.empty_cache()
    return Peaks(rates, bw)
