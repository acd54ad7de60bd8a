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


def built() -> bool:
    return "cpu" in fused_rnn.available_backends()


ISAS = expected_isas()
BEST_ISA = ISAS[-1]


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
