"""The `auto` policy: for one call, run the fused stack or `native` (PyTorch's own RNN kernels, what nn.RNN runs)?

A pure function of the call's key and the machine's facts, all passed as arguments, so that it is tested on any
machine with any ISA, thread count or GPU capability (tests/test_policy.py). ``select.choose_path`` gathers the
facts of the running process and calls :func:`decide`; under torch.compile / torch.export it is never called (auto
keeps the fused opaque ops there, see select.py), so no comparison here becomes a guard of a compiled graph.

**Key.** Device kind; on the CPU the ISA class (:func:`cpu_isa`), the core kind (:func:`cpu_core`: vendor and
generation) and torch's intra-op threads; on CUDA the compute
capability and the TF32 settings; the dtype (the autocast dtype under autocast); B (batch), H (hidden);
layers × directions; and the mode: ``training`` = grad enabled and something (input, hx or a parameter) requires
grad, judged by the forward+backward figures, else the forward-only figures.

**Evidence.** Tables of measured cells, each cell one (dtype, mode, B, H) point of a grid:
  - CPU (``policy_data.CPU_TABLES``, generated from a bench grid run by ``python -m bench.policy``): per machine
    kind (ISA class, core kind, threads) the median and 20th-percentile ratio nn.RNN time / fused ``cpu`` time over ≥ 10
    interleaved rounds, with the machine, date and the committed run file (bench/results/) it came from.
  - CUDA (``GPU_TABLES`` below): the committed H200 figures of 2026-11-27 -- cuDNN's whole layer
    (bench/results/H200-2026-11-27-cudnn-baseline.json) against the fused tier's kernel time per step
    (csrc/cuda/NOTES_persistent.md, bench/results/H200-2026-11-27-persistent-harness.txt) **plus** an estimate of
    the input GEMM(s) the kernel-only figures leave out (:func:`gpu_gemm_us`).

**Rules** (each reason :func:`decide` returns says which one fired, and the evidence lists the cells it used):
  1. Fused only where measured: a cell is a *fused win* when its ratio clears the margin -- CPU: median ≥ 1.3 and
     p20 ≥ 1.25 on the measured machine kind (the bench's pass rule is median ≥ 1.0, p20 ≥ 0.95, so a win keeps
     a margin over run-to-run noise, see MARGIN); CUDA: ≥ 2× counting the input GEMM.
  2. Off-grid shapes: B and H are bracketed by the grid's neighbours (B_lo ≤ B ≤ B_hi, H_lo ≤ H ≤ H_hi; a grid
     value brackets itself). Fused only if **every** bracketing cell (up to 4) exists and is a fused win (and, on
     CUDA, all name the same tier). Outside the grid's range in B or H, or a dtype/mode never measured: native.
  3. Layers × directions: the grid measures 1 layer, 1 direction. Both paths run a stack as a sum of
     per-layer-direction recurrences of the same (B, H), plus input GEMMs of the same size on both sides, so when
     every layer-direction is a win by m, the stack's ratio of sums is ≥ 1 (it moves toward 1, not below); a stack
     is judged by its (B, H) cell. The input size I is left out of the key by the same argument.
  4. CPU machine kinds not measured (ISA class, core kind or threads without a table): the nearest table -- same
     ISA class and core kind first, then the same ISA class, then the closest thread count -- with the strong margin
     (median ≥ 2.0, p20 ≥ 1.75). The core kind is part of the key because one ISA class runs at different relative
     speeds on different cores (AVX-512 + BF16 on a Zen 5 and on an Intel Emerald Rapids: the two grids of
     bench/results/ differ cell by cell); an unknown core ("" -- no /proc/cpuinfo) matches no table exactly. Half
     precision is never carried across an AMX or BF16 difference (AMX speeds up nn.RNN's bf16/fp16 GEMMs, the BF16
     dot product the fused kernels, by factors never measured across); ISA class "other" (no AVX2: non-x86 or an
     old CPU) is always native.
  5. CUDA: a compute capability not on the verified list → native (no fused tier has run there); fp64 → native
     (no fused tier has an fp64 kernel; fallback upcasts nothing and loses to cuDNN). fp32 where cuDNN's TF32
     setting differs from fused_rnn's fp32 precision (``precision.allow_tf32()``): native would compute at a
     different precision, so it is no candidate -- the fused verified tiers run (chosen per layer by the CUDA
     heuristic), except on an unverified GPU, where native runs with cuDNN as the user configured it (reason says
     so).
  6. The fused backend that `auto` would use must be the fast one (``cpu`` / ``cuda``): with only the Python
     ``reference`` there, native.
  7. CPU, short sequences: the grid measures long calls (T sized for ~0.2 s), where per-call costs vanish. A fused
     call also pays a fixed cost per layer-direction (W_hh packed per call, the autograd.Function, the input GEMM as
     its own op), which a call of a few steps cannot earn back: with T below :func:`short_sequence_floor` (by mode and
     H), native -- unless every cell the decision rests on was itself measured at a T no longer than the call's
     (the largest B·H: T sized for ~0.2 s of nn.RNN falls to 8-58 at B ≥ 256 with H ≥ 1024 and at B ≥ 64 with
     H = 2048, below the floor, and a cell's ratio measured there already pays the fixed cost once per call).
  8. CPU half-precision GEMMs (:func:`gemm_in_fp32`): the fused layer's own GEMMs in bf16 (the input projection,
     its gradients and dW_hh; fused_rnn/gemm.py) run in fp32 where this machine kind's grid run measured fp32 GEMMs
     ≥ 1.25× faster than bf16 ones, at I and H ≥ 512 (below that the conversions cost what the GEMM gains). It
     decides how the fused path computes, not which path runs.
"""

from __future__ import annotations

import bisect
import functools
import math
from dataclasses import dataclass, field, replace

import torch

# Rule 1 and 4 margins: a cell is a fused win when median >= m and p20 >= p. The bench's pass rule is median >= 1.0
# and p20 >= 0.95. Reruns of the grid on the same busy 2-core EPYC (1 thread, load 7-10, 2026-12-01) measured cells
# recorded at median ×1.27 / p20 ×1.11 as ×1.15 / ×0.89 (bf16 B=4 H=1024 fwd+bwd) and ×1.37 / ×1.21 as ×1.23 / ×0.94
# (bf16 B=64 H=64 fwd): p20 moved by up to 0.27 there, so a win needs p20 >= 0.95 + 0.3. A quiet machine's run
# varies far less; regenerate and revisit this with its data.
MARGIN = (1.3, 1.25)
STRONG_MARGIN = (2.0, 1.75)

# Rule 7. Whole module, fused cpu vs native, medians of 9 interleaved rounds, 2-core AMD EPYC Zen 5 VM (AVX-512 +
# BF16), 2 threads, quiet, 2026-12-01 -- ratio nn.RNN / fused at T = 1, 2, 4, 8, 16, 64:
#   inference  B=1  H=64   0.71 0.79 0.94 1.15 1.55 3.20    B=1  H=256  0.67 0.74 0.94 1.25 1.60 2.68
#              B=4  H=64   0.74 0.82 1.01 1.33 2.06 4.31    B=16 H=256  0.74 0.83 1.12 1.36 1.89 1.93
#              B=1  H=256, 2 layers  0.59 0.72 0.91 1.20 1.66 2.56
#              B=1  H=1024 0.22 0.49 0.67 0.89 1.31 (p20 0.95) 1.90   (W_hh, 4 MB, packed per call: ~1.3 ms)
#   training   B=1  H=64   0.72 0.89 1.13 1.56 2.39 5.34    B=1  H=256  0.75 0.92 1.19 1.66 2.22 3.96
#              B=4  H=64   0.81 0.94 1.22 1.59 2.56 5.12    B=16 H=256  0.69 0.88 1.09 1.41 1.79 2.13
#              B=1  H=1024 0.42 1.05 1.35 2.43 3.98 7.64    B=1  H=256, 2 layers  0.64 0.89 1.21 1.62 2.32 3.86
# So: fused from T = 8 in training; in inference from T = 16 up to H = 256 and from T = 64 above (H = 1024 is the
# only larger H measured, so 256 < H < 1024 takes its floor).
SHORT_T_TRAINING = 8
SHORT_T_INFERENCE = ((256, 16), (1 << 62, 64))  # (H up to, T floor)


def short_sequence_floor(H: int, training: bool) -> int:
    """Rule 7: the smallest T for which a CPU call may run fused (below it, native)."""
    if training:
        return SHORT_T_TRAINING
    return next(t for h, t in SHORT_T_INFERENCE if H <= h)
GPU_MARGIN = 2.0  # rule 1 on CUDA: committed figures beat native by >= 2x counting the input GEMM

# ISA classes (cpu_isa): ordered from most to least capable; "other" has no table and always runs native.
# "avx512_bf16": AVX-512 with the BF16 dot product (vdpbf16ps) but no AMX -- the fused bf16 kernels run about 2x
# faster than on plain AVX-512 (their avx512bf16 set, 2026-12-01, Zen 5), while nn.RNN's are unchanged, so a bf16
# ratio measured on one does not hold on the other.
ISA_CLASSES: tuple[str, ...] = ("avx512_amx", "avx512_bf16", "avx512", "avx2", "other")
# Classes whose half-precision speed differs from the rest on one side: AMX (nn.RNN's oneDNN GEMMs) or the fused
# kernels' bf16 dot product. Half-precision figures are never carried into or out of them (rule 4).
_HALF_SPECIFIC = ("avx512_amx", "avx512_bf16")

DTYPE_KEYS: dict[torch.dtype, str] = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16",
                                      torch.float64: "fp64"}


@dataclass(frozen=True)
class Evidence:
    """One measured cell a decision rests on."""

    dtype: str
    mode: str
    B: int
    H: int
    ratio: float  # nn.RNN (native) time / fused time: median (CPU) or the GEMM-inclusive figure (CUDA)
    p20: float | None  # 20th-percentile ratio (CPU), None for the CUDA figures
    win: bool
    tier: str = ""
    detail: str = ""
    T: int | None = None  # CPU: the sequence length the cell was measured at (rule 7); None for the CUDA figures

    def __str__(self) -> str:
        r = f"×{self.ratio:.2f}" + (f" (p20 ×{self.p20:.2f})" if self.p20 is not None else "")
        t = f" {self.tier}" if self.tier else ""
        return (f"{self.dtype} {self.mode} B={self.B} H={self.H}{t}: {r} {'win' if self.win else 'no win'}"
                + (f" [{self.detail}]" if self.detail else ""))


@dataclass(frozen=True)
class Measured:
    """One candidate's time in an autotuning measurement (fused_rnn/autotune.py): the median over interleaved
    rounds of the mean time of ``calls`` calls, in the tuned call's own mode."""

    path: str
    tier: str
    median_ms: float
    min_ms: float
    rounds: int
    calls: int

    @property
    def name(self) -> str:
        return self.path + (f":{self.tier}" if self.tier else "")

    def __str__(self) -> str:
        return f"{self.name} {self.median_ms:.3g} ms"


@dataclass(frozen=True)
class Decision:
    """What `auto` runs for one call, and why.

    path: "native", or the fused backend ("cpu", "cuda", "reference", ...).
    tier: the fused tier to force ("" = the backend's own per-layer choice); always "" for native.
    rule: which rule of this module's docstring fired, e.g. "measured-win", "unverified-gpu"; "autotune" when an
        autotuning measurement of this process chose (fused_rnn/autotune.py).
    reason: one sentence a user understands.
    evidence: the cells the decision rests on (empty when a rule needed none).
    source: where the evidence comes from: machine kind, date, committed run file(s); "" when none.
    measured: rule "autotune" only: every candidate's measured time, fastest first; else ().
    static: rule "autotune" only: the decision the static policy gave for the same call; else None.
    """

    path: str
    tier: str
    rule: str
    reason: str
    evidence: tuple[Evidence, ...] = ()
    source: str = ""
    measured: tuple[Measured, ...] = ()
    static: Decision | None = None

    @property
    def native(self) -> bool:
        return self.path == "native"

    def __str__(self) -> str:
        head = self.path + (f":{self.tier}" if self.tier else "")
        lines = [f"{head} -- {self.reason}"]
        if self.measured:
            lines.append("  measured: " + ", ".join(str(m) for m in self.measured))
        if self.source:
            lines.append(f"  evidence from {self.source}")
        lines += [f"  {e}" for e in self.evidence]
        return "\n".join(lines)


@dataclass(frozen=True)
class CpuTable:
    """Measured CPU cells of one machine kind (see policy_data.py, generated by ``python -m bench.policy``)."""

    isa: str
    threads: int
    B: tuple[int, ...]
    H: tuple[int, ...]
    cells: dict  # (dtype, mode, B, H) -> (median ratio, p20 ratio)
    machine: str = ""
    date: str = ""
    run_file: str = ""
    preliminary: bool = True
    note: str = ""  # the run's conditions, e.g. "shared machine, load 9-60"
    core: str = ""  # the core kind measured (cpu_core(): "AMD Zen 5", "Intel Emerald Rapids"); "" = not recorded
    gemm_tflops: dict = field(default_factory=dict)  # dtype key -> the run's measured 1024-square GEMM TFLOP/s

    def source(self) -> str:
        pre = ", PRELIMINARY" if self.preliminary else ""
        core = f" ({self.core})" if self.core and self.core not in self.machine else ""
        return (f"{self.machine or self.isa}{core}, {self.threads} thread(s), {self.date}, "
                f"{self.run_file or 'no run file'}{pre}")


@dataclass(frozen=True)
class GpuCell:
    """A committed CUDA figure: the fused tier's kernel µs per step (fwd, bwd) and cuDNN's whole-layer µs per
    layer-step in that mode, at T = 1024 (1 layer, 1 direction, I = H)."""

    tier: str
    fused_fwd_us: float
    fused_bwd_us: float
    native_us: float


@dataclass(frozen=True)
class GpuTable:
    capability: tuple[int, int]
    B: tuple[int, ...]
    H: tuple[int, ...]
    cells: dict  # (dtype key, mode, B, H) -> GpuCell
    peaks_tflops: dict  # dtype key -> measured matmul TFLOP/s on that card (for the GEMM estimate)
    bw_tbps: float
    source: str = ""


# ----------------------------------------------------------------------------------------------------------------
# CUDA evidence: the committed H200 figures (2026-11-27). Kernel µs per step from csrc/cuda/NOTES_persistent.md
# (harness, T = 1024, median of 7 launches; B = 64 / 256 at T = 256); cuDNN µs per layer-step from
# bench/results/H200-2026-11-27-cudnn-baseline.json (bench preset gpu, torch 2.11, cuDNN 9.19, T = 1024, the
# whole nn.RNN call). Only points where both sides were measured are cells; of each pair of tiers the faster.
# "fp32" is IEEE on both sides (cuDNN's TF32 off); "fp32-tf32" has cuDNN in TF32 and the fused tiers' recurrence in
# IEEE (persistent/cluster ignore allow_tf32) with the input GEMM in TF32.
_H200 = "NVIDIA H200 (sm_90), 2026-11-27, bench/results/H200-2026-11-27-cudnn-baseline.json + " \
        "csrc/cuda/NOTES_persistent.md (kernel-only figures; the input GEMM estimated at 50% of the measured peak)"
GPU_TABLES: tuple[GpuTable, ...] = (
    GpuTable(
        capability=(9, 0), B=(1, 16, 64, 256), H=(256, 1024),
        cells={
            ("bf16", "fwd", 1, 256): GpuCell("cluster", 1.31, 1.35, 12.76),
            ("bf16", "fwd", 16, 256): GpuCell("cluster", 1.82, 1.84, 12.25),
            ("bf16", "fwd", 1, 1024): GpuCell("cluster", 3.56, 3.65, 17.83),
            ("bf16", "fwd", 16, 1024): GpuCell("cluster", 6.47, 6.53, 17.77),
            ("bf16", "fwd", 64, 1024): GpuCell("cluster", 20.27, 20.35, 12.65),
            ("bf16", "fwd", 256, 1024): GpuCell("cluster", 50.64, 50.73, 12.58),
            ("bf16", "fwd+bwd", 16, 256): GpuCell("cluster", 1.82, 1.84, 34.08),
            ("bf16", "fwd+bwd", 16, 1024): GpuCell("cluster", 6.47, 6.53, 37.41),
            ("fp32", "fwd", 1, 256): GpuCell("cluster", 1.30, 1.31, 1.75),
            ("fp32", "fwd", 16, 256): GpuCell("cluster", 1.80, 2.03, 1.79),
            ("fp32", "fwd", 1, 1024): GpuCell("persistent", 2.42, 2.47, 14.26),
            ("fp32", "fwd", 16, 1024): GpuCell("persistent", 8.39, 8.55, 19.77),
            ("fp32-tf32", "fwd", 1, 256): GpuCell("cluster", 1.30, 1.31, 1.75),
            ("fp32-tf32", "fwd", 16, 256): GpuCell("cluster", 1.80, 2.03, 1.76),
            ("fp32-tf32", "fwd", 1, 1024): GpuCell("persistent", 2.42, 2.47, 14.19),
            ("fp32-tf32", "fwd", 16, 1024): GpuCell("persistent", 8.39, 8.55, 17.06),
            ("fp32-tf32", "fwd+bwd", 16, 256): GpuCell("cluster", 1.80, 2.03, 3.94),
            ("fp32-tf32", "fwd+bwd", 16, 1024): GpuCell("persistent", 8.39, 8.55, 31.77),
        },
        # measured on that H200 by the same bench run (its "peaks" entry)
        peaks_tflops={"bf16": 791.8, "fp16": 759.0, "fp32": 50.7, "fp32-tf32": 378.1}, bw_tbps=4.22,
        source=_H200,
    ),
)


def gpu_gemm_us(dtype: str, mode: str, B: int, H: int, table: GpuTable) -> float:
    """µs per step of the GEMMs the kernel-only figures leave out, at half the card's measured peak.

    forward: the input projection P = x W_ihᵀ (2·B·I·H FLOPs per step, I = H) plus reading x and writing P;
    fwd+bwd: four GEMMs of that size (input projection, dx, dW_ih, dW_hh).
    """
    e = 2 if dtype in ("bf16", "fp16") else 4
    n = 4 if mode == "fwd+bwd" else 1
    flops = 2.0 * B * H * H
    nbytes = e * B * 2 * H
    t = flops / (0.5 * table.peaks_tflops[dtype] * 1e12) + nbytes / (0.5 * table.bw_tbps * 1e12)
    return n * t * 1e6


def gpu_ratio(dtype: str, mode: str, B: int, H: int, cell: GpuCell, table: GpuTable) -> float:
    """cuDNN µs per layer-step / (fused kernel µs + the GEMM estimate) for one committed cell."""
    fused = cell.fused_fwd_us + (cell.fused_bwd_us if mode == "fwd+bwd" else 0.0)
    return cell.native_us / (fused + gpu_gemm_us(dtype, mode, B, H, table))


# ----------------------------------------------------------------------------------------------------------------
# Machine facts (impure; read once per process by select.py and passed to decide()).

@functools.lru_cache(maxsize=1)
def cpu_isa() -> str:
    """The ISA class of this CPU as the two paths see it: "avx512_amx", "avx512_bf16", "avx512", "avx2" or "other".

    torch's own capability (what ATen's kernels and so nn.RNN dispatch on; ATEN_CPU_CAPABILITY can lower it) gives
    avx512 / avx2; AMX tiles (what oneDNN uses for nn.RNN's bf16 GEMMs on Sapphire Rapids and later) come from
    torch.cpu when this torch has the query, else from /proc/cpuinfo; "avx512_bf16" when, without AMX, the fused
    backend runs its AVX512-BF16 kernel set (the extension says which set is active).
    """
    try:
        cap = str(torch.backends.cpu.get_cpu_capability()).upper()
    except Exception:
        cap = ""
    if cap.startswith("AVX512"):
        if _has_amx():
            return "avx512_amx"
        return "avx512_bf16" if _fused_bf16_kernels() else "avx512"
    if cap.startswith("AVX2"):
        return "avx2"
    return "other"


@functools.lru_cache(maxsize=1)
def cpu_core() -> str:
    """This CPU's core kind (vendor and generation, e.g. "Intel Emerald Rapids"; "" where unknown): the part of the
    machine kind the ISA class does not say (rule 4)."""
    from ._config import cpu_kind, read_cpu_identity

    try:
        return cpu_kind(read_cpu_identity())
    except Exception:
        return ""


def _fused_bf16_kernels() -> bool:
    """Whether the C++ CPU backend runs its AVX512-BF16 kernels here (False when the extension is missing)."""
    try:
        from . import _ext

        if not _ext.LOADED:
            return False
        return str(torch.ops.fused_rnn.cpu_isa()) in ("avx512bf16", "avx512bf16fma")
    except Exception:
        return False


def _has_amx() -> bool:
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if probe is not None:
        try:
            return bool(probe())
        except Exception:
            pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_tile" in line.split() or "amx_bf16" in line.split()
    except OSError:
        pass
    return False


# ----------------------------------------------------------------------------------------------------------------
# The decision.

def bracket(axis: tuple[int, ...], v: int) -> tuple[int, ...] | None:
    """The grid values around v on a sorted axis: (v,) on a grid point, (lo, hi) between two, None outside."""
    if not axis or v < axis[0] or v > axis[-1]:
        return None
    i = bisect.bisect_left(axis, v)
    if axis[i] == v:
        return (v,)
    return (axis[i - 1], axis[i])


def _dtype_key(dtype: torch.dtype | str) -> str:
    if isinstance(dtype, str):
        return dtype
    return DTYPE_KEYS.get(dtype, str(dtype).replace("torch.", ""))


def decide(device_type: str, dtype: torch.dtype | str, B: int, H: int, layers: int, directions: int,
           training: bool, *, fused_backend: str, isa: str = "other", threads: int = 1,
           capability: tuple[int, int] | None = None, verified_capabilities: tuple[tuple[int, int], ...] = ((9, 0),),
           fused_tf32: bool = False, cudnn_tf32: bool = True, cpu_tables: tuple | None = None,
           gpu_tables: tuple[GpuTable, ...] | None = None, T: int | None = None, core: str = "") -> Decision:
    """`auto`'s choice for one call (rules in the module docstring). Pure: every machine fact is an argument.

    Args:
        device_type: "cpu" or "cuda" (any other device: native).
        dtype: the compute dtype (torch dtype or key "fp32"/"bf16"/"fp16"/"fp64").
        B, H: batch and hidden size; layers, directions: the module's stack.
        training: grad enabled and something requires grad (judged by the fwd+bwd figures).
        fused_backend: the fused backend auto would run ("cpu", "cuda", "reference", ...).
        isa, threads: CPU ISA class (cpu_isa()) and torch.get_num_threads(); core: the core kind (cpu_core()).
        capability: CUDA compute capability; verified_capabilities: those the fused tiers passed on.
        fused_tf32: fused_rnn's fp32 matmuls may use TF32 (precision.allow_tf32()); cudnn_tf32: cuDNN's RNN may.
        cpu_tables, gpu_tables: the evidence (default: policy_data.CPU_TABLES, GPU_TABLES).
        T: the call's sequence length (padded length, or the number of steps of a PackedSequence); None = long
            (rule 7 not applied).
    """
    dkey = _dtype_key(dtype)
    mode = "fwd+bwd" if training else "fwd"
    ld = layers * directions
    stack = "" if ld == 1 else f" (a {layers}-layer{' bidirectional' if directions == 2 else ''} stack is judged " \
                               f"by its (B, H) cell: rule 3)"
    if device_type == "cpu":
        d = _decide_cpu(dkey, mode, B, H, stack, fused_backend, isa, threads,
                        _cpu_tables() if cpu_tables is None else cpu_tables, core)
        floor = short_sequence_floor(H, training)
        if d.path == "cpu" and T is not None and T < floor:
            measured_at = [e.T for e in d.evidence]
            if measured_at and all(t is not None and t <= T for t in measured_at):
                # The cells themselves were measured this short or shorter: their ratio already pays the fixed cost.
                return replace(d, reason=f"{d.reason}; T={T} is below rule 7's floor ({floor}) but no shorter than "
                                         f"the cells' own T (≤ {max(measured_at)}), so the cells cover it")
            return Decision("native", "", "short-sequence",
                            f"T={T} < {floor}: a fused call's fixed cost per layer (W_hh packed per call, the input "
                            f"GEMM and autograd.Function as separate steps) outweighs its per-step gain on so short "
                            f"a sequence ({mode}, H={H}; rule 7) -- the grid cell alone would run cpu",
                            d.evidence, d.source)
        return d
    if device_type == "cuda":
        return _decide_cuda(dkey, mode, B, H, stack, fused_backend, capability, verified_capabilities,
                            fused_tf32, cudnn_tf32, GPU_TABLES if gpu_tables is None else gpu_tables)
    return Decision("native", "", "other-device", f"no fused backend is measured on {device_type} tensors")


def _cpu_tables() -> tuple[CpuTable, ...]:
    from . import policy_data

    return tuple(CpuTable(**t) for t in policy_data.CPU_TABLES)


def _pick_table(tables: tuple[CpuTable, ...], isa: str, threads: int,
                core: str = "") -> tuple[CpuTable | None, bool]:
    """(table, exact): the table of (isa, core, threads), else the nearest (rule 4), else None."""
    for t in tables:
        if t.isa == isa and t.core == core and t.threads == threads:
            return t, True
    if not tables:
        return None, False
    pool = ([t for t in tables if t.isa == isa and t.core == core] or [t for t in tables if t.isa == isa]
            or list(tables))

    def dist(t: CpuTable) -> tuple[float, int]:
        return (abs(math.log2(max(t.threads, 1)) - math.log2(max(threads, 1))), -t.threads)

    return min(pool, key=dist), False


# A half-precision GEMM of the fused layer (input projection, its gradients, dW_hh) runs in fp32 on the CPU when the
# machine kind's own grid run measured torch's fp32 GEMM at least this much faster than its half one (rule 8).
GEMM_F32_GAIN = 1.25


def gemm_in_fp32(dkey: str, *, isa: str, threads: int, core: str = "", cpu_tables: tuple | None = None) -> bool:
    """Rule 8: whether the fused layer's GEMMs in half precision ``dkey`` ("bf16", "fp16") run in fp32 on this
    machine kind: only with the exact table (ISA class, core, threads) and its run's measured 1024-square GEMM rates
    (``CpuTable.gemm_tflops``) saying fp32 ≥ GEMM_F32_GAIN × ``dkey``. Measured: Intel Emerald Rapids without AMX,
    bf16 0.18 vs fp32 0.34 TFLOP/s (oneDNN's avx512_core_bf16 brgemm against MKL's sgemm; vdpbf16ps there does
    half the flops per cycle of fp32 FMA); on a Zen 5 bf16 is the faster one (0.34-0.87 vs 0.13-0.2), and with AMX
    oneDNN's bf16 wins by far -- so this is a measured fact per machine kind, never borrowed."""
    if dkey not in ("bf16", "fp16"):
        return False
    table, exact = _pick_table(_cpu_tables() if cpu_tables is None else cpu_tables, isa, threads, core)
    if table is None or not exact:
        return False
    g = table.gemm_tflops
    return dkey in g and "fp32" in g and float(g["fp32"]) >= GEMM_F32_GAIN * float(g[dkey])


def _decide_cpu(dkey: str, mode: str, B: int, H: int, stack: str, fused_backend: str, isa: str, threads: int,
                tables: tuple[CpuTable, ...], core: str = "") -> Decision:
    if fused_backend != "cpu":
        return Decision("native", "", "no-fast-fused",
                        f"the C++ CPU backend is not available (auto's fused path would be {fused_backend!r})")
    if isa not in ISA_CLASSES[:-1]:
        return Decision("native", "", "unmeasured-isa",
                        f"CPU ISA class {isa!r}: fused_rnn is measured on x86-64 with AVX2 or AVX-512 only")
    table, exact = _pick_table(tables, isa, threads, core)
    if table is None:
        return Decision("native", "", "no-data", "no CPU measurements are committed")
    margin = MARGIN if exact else STRONG_MARGIN
    src = table.source()
    if not exact:
        if dkey in ("bf16", "fp16") and isa != table.isa and (isa in _HALF_SPECIFIC or table.isa in _HALF_SPECIFIC):
            return Decision("native", "", "unmeasured-isa",
                            f"{dkey} on ISA class {isa!r}, measured only on {table.isa!r}: AMX (nn.RNN's GEMMs) or "
                            "the BF16 dot product (the fused kernels) changes half-precision speed by an unmeasured "
                            "factor", source=src)
    bs, hs = bracket(table.B, B), bracket(table.H, H)
    if bs is None or hs is None:
        return Decision("native", "", "outside-grid",
                        f"B={B}, H={H} lies outside the measured grid B {table.B[0]}..{table.B[-1]}, "
                        f"H {table.H[0]}..{table.H[-1]}", source=src)
    ev = []
    for b in bs:
        for h in hs:
            c = table.cells.get((dkey, mode, b, h))
            if c is None:
                return Decision("native", "", "not-measured",
                                f"{dkey} {mode} at B={b}, H={h} was not measured on this machine kind",
                                tuple(ev), src)
            med, p20 = float(c[0]), float(c[1])
            t = int(c[2]) if len(c) > 2 else None
            ev.append(Evidence(dkey, mode, b, h, med, p20, med >= margin[0] and p20 >= margin[1],
                               detail=f"T={t}" if t is not None else "", T=t))
    def kind(i: str, c: str, n: int) -> str:
        return f"{i}{f' on {c}' if c else ''}, {n} thread(s)"

    where = ("on the measured machine kind" if exact else
             f"borrowed from {kind(table.isa, table.core, table.threads)} for "
             f"{kind(isa, core or 'an unknown core', threads)} with the strong margin (rule 4)")
    need = f"median ≥ {margin[0]}, p20 ≥ {margin[1]}"
    if all(e.win for e in ev):
        worst = min(ev, key=lambda e: e.ratio)
        return Decision("cpu", "", "measured-win",
                        f"every surrounding grid cell is a measured fused win ({need}; worst ×{worst.ratio:.2f}) "
                        f"{where}{stack}", tuple(ev), src)
    return Decision("native", "", "measured-loss",
                    f"not every surrounding grid cell is a fused win ({need}) {where}{stack}", tuple(ev), src)


def _decide_cuda(dkey: str, mode: str, B: int, H: int, stack: str, fused_backend: str,
                 capability: tuple[int, int] | None, verified: tuple[tuple[int, int], ...], fused_tf32: bool,
                 cudnn_tf32: bool, tables: tuple[GpuTable, ...]) -> Decision:
    cap = tuple(capability) if capability is not None else None
    sm = f"sm_{cap[0]}{cap[1]}" if cap else "an unknown capability"
    verified_gpu = cap in verified
    tf32_differs = dkey == "fp32" and fused_tf32 != cudnn_tf32
    if not verified_gpu:
        extra = ""
        if tf32_differs:
            extra = (f"; cuDNN computes fp32 {'as TF32' if cudnn_tf32 else 'in IEEE'} as configured "
                     "(torch.backends.cudnn.allow_tf32), which differs from fused_rnn's fp32 precision")
        return Decision("native", "", "unverified-gpu", f"no fused tier is verified on compute capability {sm}"
                        + extra)
    if dkey == "fp64":
        return Decision("native", "", "fp64-gpu", "fp64 on CUDA: no fused tier has an fp64 kernel that beats cuDNN")
    if fused_backend != "cuda":
        return Decision("native", "", "no-fast-fused",
                        f"the CUDA backend is not available (auto's fused path would be {fused_backend!r})")
    if tf32_differs:
        return Decision("cuda", "", "precision",
                        f"fp32: cuDNN would compute {'TF32' if cudnn_tf32 else 'IEEE'} (torch.backends.cudnn."
                        f"allow_tf32={cudnn_tf32}) while fused_rnn computes {'TF32' if fused_tf32 else 'IEEE'} "
                        "(matmul TF32 setting), so native is no same-precision candidate: the verified fused tiers "
                        "run")
    key = "fp32-tf32" if dkey == "fp32" and fused_tf32 else dkey
    table = next((t for t in tables if t.capability == cap), None)
    if table is None:
        return Decision("native", "", "no-data", f"no committed CUDA figures for {sm}")
    bs, hs = bracket(table.B, B), bracket(table.H, H)
    if bs is None or hs is None:
        return Decision("native", "", "outside-grid",
                        f"B={B}, H={H} lies outside the committed {sm} figures (B {table.B[0]}..{table.B[-1]}, "
                        f"H {table.H[0]}..{table.H[-1]})", source=table.source)
    ev = []
    for b in bs:
        for h in hs:
            c = table.cells.get((key, mode, b, h))
            if c is None:
                return Decision("native", "", "not-measured",
                                f"{key} {mode} at B={b}, H={h}: no committed figure for both cuDNN and a fused tier",
                                tuple(ev), table.source)
            r = gpu_ratio(key, mode, b, h, c, table)
            ev.append(Evidence(key, mode, b, h, r, None, r >= GPU_MARGIN, c.tier,
                               f"cuDNN {c.native_us} µs vs {c.tier} "
                               f"{c.fused_fwd_us + (c.fused_bwd_us if mode == 'fwd+bwd' else 0):.2f} µs + GEMM "
                               f"{gpu_gemm_us(key, mode, b, h, table):.2f} µs"))
    tiers = {e.tier for e in ev}
    if all(e.win for e in ev) and len(tiers) == 1:
        tier = tiers.pop()
        return Decision("cuda", tier, "measured-win",
                        f"every surrounding committed figure beats cuDNN by ≥ {GPU_MARGIN}× counting the "
                        f"input GEMM{stack}", tuple(ev), table.source)
    why = "not every surrounding committed figure beats cuDNN by ≥ 2× counting the input GEMM" \
        if not all(e.win for e in ev) else "the surrounding figures come from different tiers"
    return Decision("native", "", "measured-loss", f"{why}{stack}", tuple(ev), table.source)


__all__ = ["Decision", "Evidence", "Measured", "CpuTable", "GpuTable", "GpuCell", "decide", "cpu_isa", "cpu_core",
           "bracket",
           "MARGIN", "STRONG_MARGIN", "GPU_MARGIN", "GPU_TABLES", "gpu_ratio", "gpu_gemm_us"]
