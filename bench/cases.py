"""Benchmark cases and presets.

A *case* is one shape × dtype: T (time) × B (batch) × H (hidden = input size) × layers × directions × dtype, timed in
one or more modes ("fwd" = forward under ``torch.no_grad``, "fwd+bwd" = forward + gradients of the input and every
parameter). Every provider is checked once per case and then timed in each of the case's modes.

Dtype keys (what "fp32" means is spelled out, because cuDNN runs fp32 RNNs as TF32 by default):
  fp32        fp32 storage, IEEE fp32 math on both sides (cuDNN's and cuBLAS's TF32 flags off)
  fp32-tf32   fp32 storage, TF32 allowed on both sides (cuDNN and matmul TF32 flags on)
  fp16, bf16  half storage, fp32 accumulation
  fp64        for completeness (CPU tests); never timed by a preset on the GPU
On the CPU TF32 does not exist, so the CPU presets use "fp32" only.

Presets (the GPU subset is a choice, documented here and in bench/README.md):
  tiny   two toy cases, for tests: seconds on a 2-core CPU.
  quick  the default (`make bench`): T=512 B=1 H=128, T=256 B=16 H=256, T=128 B=64 H=512 (fp32; on a GPU also
         fp32-tf32 and bf16), both modes, plus one short case T=32 B=16 H=256 for torch.compile of the reference
         (forward only: compiling its backward too took 78 s on the 2-core CPU). Budget: 3 minutes there.
  gpu    fits the 60 s stage of `make gpu-check` on an H100: T=1024, a representative subset of the full grid:
         bf16 forward over every B for H=256 and H=1024 (the speedup-vs-batch plot), fp32 IEEE and TF32 at
         B ∈ {1, 16, 64} for H ∈ {256, 1024}, fp16 at two shapes, H=512 and H=2048 at a few B, fwd+bwd at B=16
         only (bf16, fp32-tf32), a 2-layer bidirectional case and a B=1 bidirectional one (each CUDA/Triton tier
         also with the directions on two streams, "+streams"), and a T=32 case for the reference loop and
         torch.compile. Cases run in that order of importance and a 45 s budget drops the tail (noted in the report).
  full   the whole grid: B ∈ {1, 8, 16, 64, 256} × H ∈ {256, 512, 1024, 2048} × T=1024 × {fp32, fp32-tf32, fp16,
         bf16} × {fwd, fwd+bwd}, plus 2-layer bidirectional at every H (B=16). On the CPU: the quick shapes and a few
         more, both modes. No budget.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

MODES: tuple[str, ...] = ("fwd", "fwd+bwd")

# dtype key -> (storage dtype, TF32 allowed for fp32 matmuls / cuDNN)
DTYPES: dict[str, tuple[torch.dtype, bool]] = {
    "fp32": (torch.float32, False),
    "fp32-tf32": (torch.float32, True),
    "fp16": (torch.float16, False),
    "bf16": (torch.bfloat16, False),
    "fp64": (torch.float64, False),
}

PRESETS: tuple[str, ...] = ("tiny", "quick", "gpu", "full")


@dataclass(frozen=True)
class Case:
    """One benchmark shape: input x [T, B, H] (time-major), layers × (2 if bidirectional else 1) directions."""

    T: int
    B: int
    H: int
    layers: int = 1
    bidirectional: bool = False
    dtype: str = "fp32"
    modes: tuple[str, ...] = MODES
    compile: bool = False  # also time torch.compile of the reference (short T only: its compile time grows with T)
    tags: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if min(self.T, self.B, self.H, self.layers) < 1:
            raise ValueError(f"bench: case sizes must be >= 1, got T={self.T} B={self.B} H={self.H} "
                             f"layers={self.layers}")
        if self.dtype not in DTYPES:
            raise ValueError(f"bench: unknown dtype key {self.dtype!r}; choose one of {tuple(DTYPES)}")
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise ValueError(f"bench: modes must be a non-empty subset of {MODES}, got {self.modes}")

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype][0]

    @property
    def tf32(self) -> bool:
        return DTYPES[self.dtype][1]

    @property
    def layer_steps(self) -> int:
        """Steps of one direction of one layer, summed: T · layers · directions (the unit of 'µs per layer-step')."""
        return self.T * self.layers * self.directions

    def label(self) -> str:
        """e.g. 'T512 B1 H128' or 'T1024 B16 H512 L2 bi'."""
        s = f"T{self.T} B{self.B} H{self.H}"
        if self.layers > 1:
            s += f" L{self.layers}"
        if self.bidirectional:
            s += " bi"
        return s

    def to_json(self) -> dict:
        d = asdict(self)
        d["modes"] = list(self.modes)
        d["tags"] = list(self.tags)
        d["label"] = self.label()
        return d


def _tiny(device: str) -> list[Case]:
    # Awkward sizes on purpose (H=17, B=3): the check must hold off the power-of-two path too.
    return [
        Case(T=8, B=3, H=17, dtype="fp32"),
        Case(T=5, B=2, H=8, layers=2, bidirectional=True, dtype="fp32"),
    ]


def _quick(device: str) -> list[Case]:
    dtypes = ("fp32",) if device == "cpu" else ("fp32", "fp32-tf32", "bf16")
    shapes = [(512, 1, 128), (256, 16, 256), (128, 64, 512)]
    cases = [Case(T=T, B=B, H=H, dtype=dt) for dt in dtypes for (T, B, H) in shapes]
    # Forward only: compiling the unrolled T=32 forward took 4.4 s, forward+backward 78 s (2-core AMD EPYC under
    # load, torch 2.14.1, 2026-11-27) -- most of the 3-minute budget. `full` compiles both.
    cases.append(Case(T=32, B=16, H=256, dtype=dtypes[0], modes=("fwd",), compile=True, tags=("compile",)))
    return cases


def _gpu(device: str) -> list[Case]:
    T = 1024
    fwd = ("fwd",)
    cases: list[Case] = []
    # 1. bf16 forward over every batch size: the speedup-vs-batch lines of the plot.
    for H in (256, 1024):
        for B in (1, 8, 16, 64, 256):
            cases.append(Case(T=T, B=B, H=H, dtype="bf16", modes=fwd))
    # 2. training at one batch size.
    for H in (256, 1024):
        cases.append(Case(T=T, B=16, H=H, dtype="bf16", modes=("fwd+bwd",)))
        cases.append(Case(T=T, B=16, H=H, dtype="fp32-tf32", modes=("fwd+bwd",)))
    # 3. fp32 IEEE vs TF32 forward.
    for dt in ("fp32", "fp32-tf32"):
        for H in (256, 1024):
            for B in (1, 16, 64):
                cases.append(Case(T=T, B=B, H=H, dtype=dt, modes=fwd))
    # 4. the other sizes and dtypes, a few points each.
    cases += [
        Case(T=T, B=8, H=512, dtype="bf16", modes=fwd),
        Case(T=T, B=64, H=2048, dtype="bf16", modes=fwd),
        Case(T=T, B=16, H=512, dtype="fp16", modes=fwd),
        Case(T=T, B=64, H=2048, dtype="fp16", modes=fwd),
        Case(T=T, B=16, H=512, layers=2, bidirectional=True, dtype="bf16"),
        # where the second stream should pay most: one 16-CTA cluster per direction leaves most SMs idle
        Case(T=T, B=1, H=1024, bidirectional=True, dtype="bf16"),
    ]
    # 5. the reference loop and torch.compile, at a T where they are not absurdly slow.
    cases.append(Case(T=32, B=16, H=256, dtype="fp32", modes=("fwd",), compile=True, tags=("compile",)))
    return cases


def _full(device: str) -> list[Case]:
    if device == "cpu":
        cases = [Case(T=T, B=B, H=H, dtype="fp32") for (T, B, H) in
                 [(512, 1, 128), (512, 1, 512), (256, 16, 256), (256, 64, 256), (128, 64, 512), (128, 256, 512),
                  (128, 16, 1024)]]
        cases.append(Case(T=128, B=16, H=256, layers=2, bidirectional=True, dtype="fp32"))
        cases.append(Case(T=32, B=16, H=256, dtype="fp32", compile=True, tags=("compile",)))
        return cases
    cases = [Case(T=1024, B=B, H=H, dtype=dt)
             for dt in ("fp32", "fp32-tf32", "fp16", "bf16")
             for H in (256, 512, 1024, 2048)
             for B in (1, 8, 16, 64, 256)]
    cases += [Case(T=1024, B=16, H=H, layers=2, bidirectional=True, dtype=dt)
              for dt in ("fp32", "fp32-tf32", "fp16", "bf16") for H in (256, 512, 1024, 2048)]
    cases += [Case(T=32, B=16, H=256, dtype=dt, compile=True, tags=("compile",)) for dt in ("fp32", "bf16")]
    return cases


def preset_cases(preset: str, device: str) -> list[Case]:
    """The cases of a preset for device 'cpu' or 'cuda', in the order they run (most important first)."""
    table = {"tiny": _tiny, "quick": _quick, "gpu": _gpu, "full": _full}
    if preset not in table:
        raise ValueError(f"bench: unknown preset {preset!r}; choose one of {PRESETS}")
    return table[preset](device)


@dataclass(frozen=True)
class PresetConfig:
    """Timing knobs of a preset.

    budget_s: seconds since main() started after which no new case starts (None = no budget); the cases not
        started are listed as dropped in the report.
    cpu_min_run_s: torch.utils.benchmark blocked_autorange min_run_time per measurement.
    cpu_min_samples: at least this many timed blocks per measurement (slow calls get one block per call), so
        the p20/p80 spread means something; extra samples stop after ~3 s.
    gpu_warmup_ms / gpu_rep_ms: triton.testing.do_bench warm-up and repetition time per measurement.
    gpu_max_rep_ms: the repetition time is raised to 5 calls of a slow provider, up to this.
    reference_max_steps: time the reference loop only when T·layers·directions ≤ this (it launches ~8 ops per step).
    stall_s: a step (one check, one timing) running longer than this is taken for a hang: the report so far is
        written with where it stopped, and the process exits with status 3 (a deadlocked kernel must not eat a
        whole GPU stage).
    """

    budget_s: float | None
    cpu_min_run_s: float
    cpu_min_samples: int
    gpu_warmup_ms: int
    gpu_rep_ms: int
    gpu_max_rep_ms: int
    reference_max_steps: int
    stall_s: float


PRESET_CONFIG: dict[str, PresetConfig] = {
    "tiny": PresetConfig(budget_s=None, cpu_min_run_s=0.01, cpu_min_samples=3,
                         gpu_warmup_ms=2, gpu_rep_ms=5, gpu_max_rep_ms=20, reference_max_steps=64,
                         stall_s=120.0),
    "quick": PresetConfig(budget_s=170.0, cpu_min_run_s=0.3, cpu_min_samples=5,
                          gpu_warmup_ms=10, gpu_rep_ms=50, gpu_max_rep_ms=300, reference_max_steps=512,
                          stall_s=300.0),
    # gpu: the budget counts from main() (after `import torch`); on an H200 (2026-11-27, torch 2.11) start-up and
    # the peak-rate probes took ~11 s and a case with only nn.RNN ~1 s, so 45 s leaves room for the last case
    # (several providers, Triton JIT) and the plot inside the 60 s stage.
    "gpu": PresetConfig(budget_s=45.0, cpu_min_run_s=0.3, cpu_min_samples=5,
                        gpu_warmup_ms=3, gpu_rep_ms=15, gpu_max_rep_ms=100, reference_max_steps=64,
                        stall_s=40.0),
    "full": PresetConfig(budget_s=None, cpu_min_run_s=1.0, cpu_min_samples=7,
                         gpu_warmup_ms=25, gpu_rep_ms=100, gpu_max_rep_ms=1000, reference_max_steps=1024,
                         stall_s=900.0),
}
