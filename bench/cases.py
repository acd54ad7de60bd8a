"""Benchmark cases and presets.

A *case* is one shape × dtype: T (time) × B (batch) × H (hidden = input size) × layers × directions × dtype, timed in
one or more modes ("fwd" = forward under ``torch.no_grad``, "fwd+bwd" = forward + gradients of the input and every
parameter through a loss on both outputs). Every provider is checked once per case and then timed in each of the
case's modes, in interleaved rounds (runner.py).

Dtype keys (what "fp32" means is spelled out, because cuDNN runs fp32 RNNs as TF32 by default):
  fp32        fp32 storage, IEEE fp32 math on both sides (cuDNN's and cuBLAS's TF32 flags off)
  fp32-tf32   fp32 storage, TF32 allowed on both sides (cuDNN and matmul TF32 flags on)
  fp16, bf16  half storage, fp32 accumulation
  fp64        for completeness (CPU tests); never timed by a preset on the GPU
On the CPU TF32 does not exist, so the CPU presets use "fp32" and "bf16".

Sequence length: a case either fixes T, or sets ``target_s``: T is then sized at run time so that nn.RNN's forward
takes about that long (a probe call at T, scaled; the JSON records the T used). ``check_T`` (when set) is the
sequence length of the correctness check: correctness does not depend on T, and the fp64 oracle and the reference
loop at a T sized for 0.2 s would cost more than the timing.

Presets (the GPU subset is a choice, documented here and in bench/README.md):
  tiny   toy cases, for tests: seconds on a 2-core CPU.
  quick  the default (`make bench`): a few shapes from every region of the CPU grid -- where the fused cpu backend
         wins and where it loses (auto runs native there) -- fp32 and bf16, both modes, T sized for ~50 ms of
         nn.RNN forward, plus a 2-layer bidirectional case, an off-grid shape and the short torch.compile case
         (on a GPU: the old three shapes in fp32 / fp32-tf32 / bf16). Budget: 3 minutes on a 2-core CPU.
  grid   the CPU map `auto`'s policy is generated from (``python -m bench.policy``): B ∈ {1, 4, 16, 64, 256} ×
         H ∈ {64, 256, 1024} × {fp32, bf16, fp16} × {fwd, fwd+bwd}, T sized so that nn.RNN's forward takes ~0.2 s,
         providers nn.RNN, auto, cpu (forced) and native. ~20 minutes on 2 quiet cores (fp16 from 2026-12-07:
         before, fp16 had no cells and auto always ran it native).
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

PRESETS: tuple[str, ...] = ("tiny", "quick", "grid", "gpu", "full")

# The CPU grid of the policy (fused_rnn/policy.py): every B × H × dtype × mode.
# B=512 and H=2048 since stop 36: outside the grid the policy runs native (rule 2), and there forced `cpu` measured
# B512 H256 ×1.11-1.40, B1024 H64 ×1.21-1.90, H2048 B16 ×1.37-1.82, H1536 B64 ×1.12-1.77 -- but H2048 B1 fp32 fwd
# ×0.90 (fp32 and bf16, both modes; 2-core Intel Emerald Rapids VM, 2026-12-08 UTC): cells, not a guess, decide.
GRID_B: tuple[int, ...] = (1, 4, 16, 64, 256, 512)
# H=16 since stop 35: below the grid the policy runs native, and there forced `cpu` measured ×2.3-49 (H16 / H32,
# B1-B256, fp32 and bf16, both modes; 2-core Intel Emerald Rapids VM, 2026-12-08 UTC).
GRID_H: tuple[int, ...] = (16, 64, 256, 1024, 2048)
GRID_DTYPES: tuple[str, ...] = ("fp32", "bf16", "fp16")


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
    target_s: float | None = None  # size T at run time so nn.RNN's forward takes about this long (T = the probe)
    check_T: int | None = None  # sequence length of the correctness check (None: T)

    def __post_init__(self) -> None:
        if min(self.T, self.B, self.H, self.layers, self.check_T or 1) < 1:
            raise ValueError(f"bench: case sizes must be >= 1, got T={self.T} B={self.B} H={self.H} "
                             f"layers={self.layers}")
        if self.dtype not in DTYPES:
            raise ValueError(f"bench: unknown dtype key {self.dtype!r}; choose one of {tuple(DTYPES)}")
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise ValueError(f"bench: modes must be a non-empty subset of {MODES}, got {self.modes}")
        if self.target_s is not None and not self.target_s > 0:
            raise ValueError(f"bench: target_s must be positive, got {self.target_s}")

    @property
    def key(self) -> tuple:
        """What identifies the case across a calibration of T: everything but T."""
        return (self.B, self.H, self.layers, self.bidirectional, self.dtype, self.tags)

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
    if device != "cpu":
        dtypes = ("fp32", "fp32-tf32", "bf16")
        shapes = [(512, 1, 128), (256, 16, 256), (128, 64, 512)]
        cases = [Case(T=T, B=B, H=H, dtype=dt) for dt in dtypes for (T, B, H) in shapes]
        cases.append(Case(T=32, B=16, H=256, dtype="fp32", modes=("fwd",), compile=True, tags=("compile",)))
        return cases
    # A few shapes from every region of the CPU grid (see `grid`), the losing ones included: where the fused cpu
    # backend wins by far (B=1, small H), near the edge, and where it loses (large B·H: auto runs native there);
    # fp32 and bf16, both modes. T sized for ~50 ms of nn.RNN forward (the grid uses 0.2 s).
    # Ordered so that a budget cut (a busy machine) still leaves every kind of case.
    t = 0.05
    grid = {(dt, B, H): Case(T=64, B=B, H=H, dtype=dt, target_s=t, check_T=16) for (dt, B, H) in
            [("fp32", 1, 64), ("fp32", 1, 1024), ("fp32", 16, 256), ("fp32", 64, 1024), ("fp32", 256, 256),
             ("bf16", 1, 256), ("bf16", 16, 1024)]}
    # Single-step calls (a decoding loop calling forward): the call around the kernel is most of the time there, and
    # auto runs native (rule 7), so these rows measure what fused_rnn's wrapper costs against nn.RNN's own.
    latency = [Case(T=1, B=B, H=H, dtype="fp32", tags=("latency",)) for (B, H) in ((8, 64), (64, 256))]
    cases = [grid[("fp32", 1, 64)], grid[("fp32", 64, 1024)], latency[0],
             Case(T=64, B=3, H=100, dtype="fp32", target_s=t, check_T=16, tags=("off-grid",)), latency[1],
             grid[("bf16", 1, 256)],
             Case(T=64, B=4, H=128, layers=2, bidirectional=True, dtype="fp32", target_s=t, check_T=8),
             grid[("fp32", 16, 256)], grid[("bf16", 16, 1024)], grid[("fp32", 1, 1024)], grid[("fp32", 256, 256)]]
    # Forward only: compiling the unrolled T=32 forward took 4.4 s, forward+backward 78 s (2-core AMD EPYC under
    # load, torch 2.14.1, 2026-11-27) -- most of the 3-minute budget. `full` compiles both.
    cases.append(Case(T=32, B=16, H=256, dtype="fp32", modes=("fwd",), compile=True, tags=("compile",)))
    return cases


def _grid(device: str) -> list[Case]:
    # T sized at run time for ~0.2 s of nn.RNN forward; the check runs at T=16 (the oracle and the reference loop
    # at the timed T would cost more than the timing).
    # H=16: ~0.05 s. There nn.RNN's training costs ~50× its forward (autograd per step): at 0.2 s, T48000 B1, a
    # call took ~10 s and one cell ~4 min (2-core Intel VM, 2026-12-08 UTC); the ratio is per step, T only long enough.
    return [Case(T=64, B=B, H=H, dtype=dt, target_s=0.05 if H < 64 else 0.2, check_T=16)
            for dt in GRID_DTYPES for H in GRID_H for B in GRID_B]


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
    table = {"tiny": _tiny, "quick": _quick, "grid": _grid, "gpu": _gpu, "full": _full}
    if preset not in table:
        raise ValueError(f"bench: unknown preset {preset!r}; choose one of {PRESETS}")
    return table[preset](device)


@dataclass(frozen=True)
class PresetConfig:
    """Timing knobs of a preset.

    budget_s: seconds since main() started after which no new case starts (None = no budget); the cases not
        started are listed as dropped in the report.
    rounds: interleaved rounds per case and mode: each round times every provider once, in a rotated order, so a
        slow spell of a shared machine hits all of them; ratios to nn.RNN are taken per round (runner.py).
    min_sample_s: one sample repeats a fast call until it lasts at least this long (a slow call is one sample).
    reference_max_steps: time the reference loop only when T·layers·directions ≤ this (it launches ~8 ops per step).
    stall_s: a step (one check, one timing) running longer than this is taken for a hang: the report so far is
        written with where it stopped, and the process exits with status 3 (a deadlocked kernel must not eat a
        whole GPU stage).
    providers: the preset's default provider names (None = every available one); --backends overrides.
    untimed: providers checked but not timed in this preset (the grid checks native bit for bit against nn.RNN
        and leaves its timing -- nn.RNN's own kernel -- to the quick and gpu presets, to fit in 10 minutes).
    """

    budget_s: float | None
    rounds: int
    min_sample_s: float
    reference_max_steps: int
    stall_s: float
    providers: tuple[str, ...] | None = None
    untimed: tuple[str, ...] = ()


PRESET_CONFIG: dict[str, PresetConfig] = {
    "tiny": PresetConfig(budget_s=None, rounds=3, min_sample_s=0.002, reference_max_steps=64, stall_s=120.0),
    # quick: the reference loop only at the T=32 compile case (it is the oracle, not a contender)
    "quick": PresetConfig(budget_s=170.0, rounds=10, min_sample_s=0.02, reference_max_steps=32, stall_s=300.0),
    # grid: ~0.2 s per nn.RNN forward, 10 rounds; the policy is generated from its forced-cpu column.
    "grid": PresetConfig(budget_s=None, rounds=10, min_sample_s=0.02, reference_max_steps=0, stall_s=600.0,
                         providers=("auto", "cpu", "native"), untimed=("native",)),
    # gpu: the budget counts from main() (after `import torch`); on an H200 (2026-11-27, torch 2.11) start-up and
    # the peak-rate probes took ~11 s and a case with only nn.RNN ~1 s, so 45 s leaves room for the last case
    # (several providers, Triton JIT) and the plot inside the 60 s stage.
    "gpu": PresetConfig(budget_s=45.0, rounds=10, min_sample_s=0.005, reference_max_steps=64, stall_s=40.0),
    "full": PresetConfig(budget_s=None, rounds=15, min_sample_s=0.05, reference_max_steps=1024, stall_s=900.0),
}
