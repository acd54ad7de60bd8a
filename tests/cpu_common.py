"""What the C++ CPU backend's tests share: which kernel variants this CPU must have, and switching to one of them.

The list of instruction sets comes from /proc/cpuinfo, not from asking the extension which variants it has: where
the CPU lists AVX2+FMA (or AVX-512 F/BW/VL/DQ), the "avx2" (or "avx512") variant must exist, and a test forced onto
a missing variant fails instead of being skipped -- a variant cannot vanish silently.
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Iterator

import torch

import fused_rnn

AVX2_FLAGS = frozenset({"avx2", "fma"})
AVX512_FLAGS = AVX2_FLAGS | {"avx512f", "avx512bw", "avx512vl", "avx512dq"}
AVX512BF16_FLAGS = AVX512_FLAGS | {"avx512_bf16"}
OWN_PATHS = ("serial", "hidden", "batch")  # the own loops: bitwise equal results for every ISA and thread count


def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (Linux), or None where there is no such file."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        return None
    return frozenset()


def expected_isas() -> list[str]:
    """The kernel variants this CPU can run, which the build must therefore have: "generic" always."""
    out = ["generic"]
    flags = cpu_flags()
    if flags is None or platform.machine().lower() not in ("x86_64", "amd64"):
        return out
    if AVX2_FLAGS <= flags:
        out.append("avx2")
    if AVX512_FLAGS <= flags:
        out.append("avx512")
    return out


def bf16_isa_missing() -> str | None:
    """Why this machine cannot run the "avx512bf16" variant (the vdpbf16ps bf16 forward), or None when it can and so
    the build must have it. Its fp32/fp64 kernels are avx512's, so ISAS (the fp32/fp64 matrix) leaves it out; the
    bf16/fp16 tests (tests/test_cpu_bf16.py) add it."""
    flags = cpu_flags()
    if flags is None or platform.machine().lower() not in ("x86_64", "amd64"):
        return "not an x86-64 Linux machine (no /proc/cpuinfo flags)"
    missing = sorted(AVX512BF16_FLAGS - flags)
    return f"the CPU lacks {', '.join(missing)} (/proc/cpuinfo)" if missing else None


def amx_missing() -> str | None:
    """Why this machine cannot run the "avx512amx" variant (the bf16 matvec on AMX tiles), or None when /proc/cpuinfo
    lists AMX-TILE and AMX-BF16 on top of the avx512bf16 flags -- then the build must have it and the OS must grant
    the tile state (Linux lists the amx flags only where it supports them)."""
    why = bf16_isa_missing()
    if why is not None:
        return why
    missing = sorted({"amx_tile", "amx_bf16"} - (cpu_flags() or frozenset()))
    return f"the CPU lacks {', '.join(missing)} (/proc/cpuinfo)" if missing else None


def built() -> bool:
    return "cpu" in fused_rnn.available_backends()


ISAS = expected_isas()
BEST_ISA = ISAS[-1]  # the best fp32/fp64 variant


def cpu_vendor() -> str:
    """/proc/cpuinfo's vendor_id ("GenuineIntel", "AuthenticAMD", ...), "" where there is none."""
    from fused_rnn._config import read_cpu_identity

    return (read_cpu_identity() or {}).get("vendor") or ""


# what the automatic choice picks: a bf16 set (avx512's fp32/fp64 kernels + the bf16 kernels) where the CPU has
# AVX512-BF16 -- avx512bf16fma on Intel (fp32 FMAs: vdpbf16ps is the slower there), avx512bf16 elsewhere
_BF16_AUTO = "avx512bf16fma" if cpu_vendor() == "GenuineIntel" else "avx512bf16"
AUTO_ISA = _BF16_AUTO if BEST_ISA == "avx512" and bf16_isa_missing() is None else BEST_ISA


def last_run() -> dict[str, str]:
    """What the last elman_fwd / elman_bwd on this thread ran: {"isa": ..., "path": ..., "threads": ...}."""
    text = torch.ops.fused_rnn.cpu_last_run()
    return dict(item.split("=", 1) for item in text.split())


@contextlib.contextmanager
def forced(isa: str | None = None, path: str | None = None) -> Iterator[None]:
    """Run with a kernel variant (instruction set) and/or a path forced, asserting that the switch took effect;
    restore the automatic choice afterwards."""
    try:
        if isa is not None:
            assert torch.ops.fused_rnn.cpu_isa(isa) == isa
            assert torch.ops.fused_rnn.cpu_isa("") == isa, "the ISA switch did not take effect"
        if path is not None:
            assert torch.ops.fused_rnn.cpu_path(path) == path
            assert torch.ops.fused_rnn.cpu_path("") == path, "the path switch did not take effect"
        yield
    finally:
        torch.ops.fused_rnn.cpu_isa("auto")
        torch.ops.fused_rnn.cpu_path("auto")


@contextlib.contextmanager
def num_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to n for the block."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def contract_inputs(T: int, B: int, H: int, seed: int, lengths: bool, dtype: torch.dtype = torch.float32):
    """Random backend-contract inputs, drawn in fp64 and cast: P [T,B,H], h0 [B,H] (non-zero), w_hh [H,H] (spectral
    radius ~0.9), lengths [B] in [1, T] | None, dY [T,B,H], dh_n [B,H]."""
    g = torch.Generator().manual_seed(seed)
    P = torch.randn(T, B, H, generator=g, dtype=torch.float64)
    h0 = 0.5 * torch.randn(B, H, generator=g, dtype=torch.float64)
    w = 0.9 * torch.randn(H, H, generator=g, dtype=torch.float64) / H**0.5
    dY = torch.randn(T, B, H, generator=g, dtype=torch.float64)
    dh = torch.randn(B, H, generator=g, dtype=torch.float64)
    L = torch.randint(1, T + 1, (B,), generator=g, dtype=torch.int64) if lengths else None
    return P.to(dtype), h0.to(dtype), w.to(dtype), L, dY.to(dtype), dh.to(dtype)
