"""The `cluster2` CUDA tier (csrc/cuda/cluster2_kernel.cuh; design and floors in csrc/cuda/NOTES_cluster2.md).

What a machine without a GPU can prove, each from the kernel source as it is built:
  * build: it is compiled into the extension, listed, forced-only (never picked by `auto` or the heuristic);
  * resources (sm_90a; the built extension's own cubins when `make test` built sm_90a, else compiled here with
    ptxas -v): every kernel variant without spills, stack frame or local memory, registers within the bound; the
    kernels also compile for sm_80 (Hopper-only code is guarded; `make arch-check` compiles the whole files);
  * SASS (Triton's bundled cuobjdump, same cubins): the step is HMMA fed by LDSM; the time loop holds the mbarrier
    wait, the proxy fence and the bulk copy, and no MEMBAR.*.GPU, no cluster barrier; no local memory anywhere;
  * CPU emulation (csrc/cuda/emulate/emulate_cluster2.cpp): the kernel source unchanged, every thread a fiber, the
    PTX instructions as host twins written from the PTX ISA; forward and backward against the reference under the
    tolerance rule at odd sizes with lengths and reverse, for every tile class, both batch-tile widths, several
    clusters, C = 1 and C = 16; bitwise-equal results under different schedules (the fixed reduction order);
  * mutations: a wrong A / B / C fragment lane map, a removed mbarrier wait, a wrong phase parity, a missing re-arm
    or a missing final cluster barrier makes the emulation fail (error, deadlock report or numbers outside the
    bound) -- so the checks above can fail.
With a GPU (`-m gpu`, not `gpu_quick`: `make gpu-check` runs this tier in a stage of its own, 3.5) the op is
compared with the reference, and the tier record (fused_rnn.backends.tier_log) must show that cluster2 itself ran;
csrc/cuda/harness/cluster2_harness.cu calls the entry points directly and times them.
Tolerance rule: error(tier in dtype X vs fp64 oracle) <= 2 * error(reference in dtype X) + FLOOR[X].
Cost (`make test` runs it all): ~63 s of CPU, ~45 s of it the 12 emulator builds, which the `emu_builds` fixture
compiles on every core but one while the emulation runs on the last (74 s of wall time on 2 shared cores at load 4-5,
2026-12-01; csrc/cuda/NOTES_cluster2.md).
Shapes: T time, B batch, H hidden.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from cuda_common import FLOOR, expect_ran, needs_cuda_build, needs_gpu, unverified_mark  # tests/cuda_common.py

from fused_rnn.backends import cuda as cuda_backend
from fused_rnn.backends import cuda_heuristic, select, verified
from fused_rnn.backends import reference as ref

ROOT = Path(__file__).resolve().parent.parent
CUDA_DIR = ROOT / "csrc" / "cuda"
KERNEL = CUDA_DIR / "cluster2_kernel.cuh"
EMU_SRC = CUDA_DIR / "emulate" / "emulate_cluster2.cpp"
TF32 = "tf32"  # a case's dtype slot: fp32 storage with allow_tf32 (TF32 products)
DT = {torch.float16: 2, torch.bfloat16: 3, torch.float32: 0, TF32: 4}  # emulator codes; 0 = IEEE fp32 (refused)
POLICY_RANDOM, POLICY_LAZY, POLICY_EAGER = 0, 1, 2  # + 3: CTAs in a seeded priority order instead of random picks
N_KERNELS = 36  # 3 dtypes (fp16, bf16, fp32 as TF32) x 2 directions x 3 tile classes x 2 batch-tile widths


# ---------------------------------------------------------------------------------------------------------------
# Build and registration
# ---------------------------------------------------------------------------------------------------------------


@needs_cuda_build
def test_cluster2_listed_and_forced_only() -> None:
    """Compiled and listed, off the GPU-verified list, never the heuristic's pick nor the op's empty tier (even with
    a list that names it: the empty tier considers batch_tiled only); named, it is tried as asked."""
    assert "cluster2" in list(torch.ops.fused_rnn.cuda_tiers())
    assert "cluster2" in cuda_backend.TIERS and "cluster2" in cuda_backend.compiled_tiers()
    assert "cluster2" not in select.GPU_VERIFIED.get("cuda", ())
    assert not verified.is_verified("cuda", "cluster2")
    dev = torch.device("cuda")
    resolve = torch.ops.fused_rnn.cuda_resolve_tier
    for H in (1, 17, 256, 512, 1000, 1024):
        for B in (1, 16, 64):
            for dtype in (torch.float16, torch.bfloat16, torch.float32):
                assert cuda_heuristic.pick_tier(H, B, dtype, dev, cuda_backend.TIERS) != "cluster2"
        for cc in ((9, 0), (8, 0), (10, 0)):
            assert resolve("", H, *cc) != "cluster2"
            assert resolve("", H, *cc, ["cuda:cluster2", "cuda:fallback", f"capability:{cc[0]}.{cc[1]}"]) == "fallback"
    assert resolve("cluster2", 100, 8, 0, []) == "cluster2"  # forced: tried (the launcher refuses pre-sm_90)


def _sanitize_cases():
    import importlib.util

    spec = importlib.util.spec_from_file_location("sanitize_cases", ROOT / "scripts" / "sanitize_cases.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@needs_cuda_build
def test_gpu_check_runs_cluster2_in_a_part_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """scripts/sanitize_cases.py: cluster2 is in the `own` set only -- not in `verified` (parts 1-2) nor in `unverified`
    (stages 3.2-3.4; part 4 names that set to the bench) -- and `--tiers cuda:cluster2` selects it alone (stage 3.5)."""
    import fused_rnn

    sc = _sanitize_cases()
    monkeypatch.setattr(fused_rnn, "available_backends", lambda: ["reference", "cpu", "cuda"])
    bf16, f32 = torch.bfloat16, torch.float32
    tiers = lambda which, only="": {(b, t) for b, t, _ in sc.cases(which, [f32, bf16, sc.TF32], only)}  # noqa: E731
    assert tiers("own") == {("cuda", "cluster2")} == tiers("all", "cuda:cluster2")
    assert ("cuda", "cluster2") not in tiers("verified") | tiers("unverified") | tiers("verified,unverified")
    assert ("cuda", "cluster2") in tiers("all")
    assert sc.set_of("cuda", "cluster2", bf16, (9, 0)) == "own"
    assert sc.set_of("cuda", "batch_tiled", bf16, (9, 0)) == "unverified"
    assert sc.set_of("cuda", "fallback", bf16, (9, 0)) == "unverified"  # its 16-bit GEMM is new code
    want_fallback = "verified" if verified.is_verified("cuda", "fallback", (9, 0)) else "unverified"
    assert sc.set_of("cuda", "fallback", f32, (9, 0)) == sc.set_of("cuda", "fallback", sc.TF32, (9, 0)) == want_fallback


def test_gpu_check_parts_fit_one_device_call() -> None:
    """Every part of scripts/gpu_check.sh sums its stage budgets to <= 540 s (one device call is <= 600 s); the
    cluster2 correctness step is a stage of its own, the last of part 3 (code not yet run on a GPU), and its timing
    the last stage of part 4 -- so a trap or hang there cannot cost any other stage its run."""
    text = (ROOT / "scripts" / "gpu_check.sh").read_text().replace("\\\n", "")
    stages = re.findall(r'\bstage (\d)\.(\d) "[^"]*" (\d+)\s+(\w+)(?:[ \t]+(\w+))?', text)
    budgets: dict[str, int] = {}
    for part, _stage, budget, _fn, _arg in stages:
        budgets[part] = budgets.get(part, 0) + int(budget)
    assert set(budgets) == {"1", "2", "3", "4"}, budgets
    assert all(b <= 540 for b in budgets.values()), budgets
    c2 = {(part, arg) for part, _s, _b, fn, arg in stages if fn == "s_cluster2"}
    assert c2 == {("3", "check"), ("4", "timing")}, c2
    for part, _step in c2:
        last = max((int(s), fn) for p, s, _b, fn, _a in stages if p == part)
        assert last[1] == "s_cluster2", (part, last)


# ---------------------------------------------------------------------------------------------------------------
# Toolchain helpers
# ---------------------------------------------------------------------------------------------------------------


def _cuda_include() -> str | None:
    """A CUDA toolkit include directory with cuda_fp16.h and crt/host_defines.h, or None."""
    cands = [os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "include"), "/usr/local/cuda/include"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        cands.append(os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "include"))
    for d in dict.fromkeys(cands):
        if os.path.exists(os.path.join(d, "cuda_fp16.h")) and os.path.exists(os.path.join(d, "crt", "host_defines.h")):
            return d
    return None


def _cuobjdump() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    p = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return p if os.access(p, os.X_OK) else None


# The kernels-only translation unit: every variant the launchers can pick, without ATen (fast to compile).
_TU = """#include "cluster2_kernel.cuh"
namespace fused_rnn { namespace cuda { namespace c2 {
template KernelFn<__nv_bfloat16> pick_kernel<__nv_bfloat16, false>(int, int);
template KernelFn<__nv_bfloat16> pick_kernel<__nv_bfloat16, true>(int, int);
template KernelFn<__half> pick_kernel<__half, false>(int, int);
template KernelFn<__half> pick_kernel<__half, true>(int, int);
template KernelFn<float> pick_kernel<float, false>(int, int);
template KernelFn<float> pick_kernel<float, true>(int, int);
}}}
"""


def _nvcc_cubin(tmp: Path, arch: str) -> subprocess.CompletedProcess:
    (tmp / "c2_kernels.cu").write_text(_TU)
    cmd = ["nvcc", "-std=c++17", "-O3", "-cubin", f"-gencode=arch=compute_{arch},code=sm_{arch}", "-Xptxas", "-v",
           "-DFUSED_RNN_IEEE", "-I" + str(CUDA_DIR), "-o", str(tmp / f"c2_{arch}.cubin"), str(tmp / "c2_kernels.cu")]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def _built_cubins(tmp: Path) -> list[Path] | None:
    """The sm_90a cubins of cluster2_fwd.cu / cluster2_bwd.cu inside the built extension -- the code that ships --
    extracted with cuobjdump; None when the build holds no sm_90a code for them (then the tests compile their own).
    `make test` builds sm_90a (TORCH_CUDA_ARCH_LIST=9.0a), so CI checks the build's own kernels and saves the ~15 s
    of CPU that compiling them again took (2 cores, 2026-12-01)."""
    cuobjdump = _cuobjdump()
    try:
        import fused_rnn._C as ext_c
    except ImportError:
        return None
    if cuobjdump is None:
        return None
    names = [f"cluster2_{d}.sm_90a.cubin" for d in ("fwd", "bwd")]
    listing = subprocess.run([cuobjdump, "-lelf", ext_c.__file__], capture_output=True, text=True, timeout=120)
    if listing.returncode != 0 or not all(n in listing.stdout for n in names):
        return None
    for n in names:
        r = subprocess.run([cuobjdump, "-xelf", n, ext_c.__file__], cwd=tmp, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0 and (tmp / n).exists(), r.stdout + r.stderr
    return [tmp / n for n in names]


@pytest.fixture(scope="module")
def sm90a(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], dict[str, dict[str, int]]]:
    """(cubins, {kernel: {regs, stack, local}}) of every kernel variant for sm_90a: the built extension's own (its
    resource usage from `cuobjdump -res-usage`), or compiled here with `ptxas -v` when the build has no sm_90a code
    (~15 s on 2 cores). `local` counts local-memory bytes: spill stores + loads (ptxas) or LOCAL (cuobjdump)."""
    tmp = tmp_path_factory.mktemp("c2sm90a")
    cubins = _built_cubins(tmp)
    if cubins is not None:
        table: dict[str, dict[str, int]] = {}
        for c in cubins:
            r = subprocess.run([_cuobjdump(), "-res-usage", str(c)], capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stderr
            table.update(_res_usage_table(r.stdout))
        return cubins, table
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not found and the extension holds no sm_90a cluster2 code")
    r = _nvcc_cubin(tmp, "90a")
    assert r.returncode == 0, r.stderr[-4000:]
    return [tmp / "c2_90a.cubin"], _ptxas_table(r.stdout + r.stderr)


def _ptxas_table(log: str) -> dict[str, dict[str, int]]:
    """{kernel: {regs, stack, local}} from `ptxas -v` output (local = spill stores + spill loads + lmem bytes)."""
    out: dict[str, dict[str, int]] = {}
    cur = None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            cur = m.group(1)
            out[cur] = {}
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            out[cur].update(stack=int(m.group(1)), local=out[cur].get("local", 0) + int(m.group(2)) + int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            out[cur]["regs"] = int(m.group(1))
            lmem = re.search(r"(\d+) bytes lmem", line)
            out[cur]["local"] = out[cur].get("local", 0) + (int(lmem.group(1)) if lmem else 0)
    return out


def _res_usage_table(text: str) -> dict[str, dict[str, int]]:
    """{kernel: {regs, stack, local}} from `cuobjdump -res-usage` output."""
    out: dict[str, dict[str, int]] = {}
    cur = None
    for line in text.splitlines():
        m = re.match(r"\s*Function (\S+):", line)
        if m:
            cur = m.group(1)
            continue
        m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", line)
        if m and cur is not None:
            out[cur] = {"regs": int(m.group(1)), "stack": int(m.group(2)), "local": int(m.group(3))}
    return out


# ---------------------------------------------------------------------------------------------------------------
# ptxas and SASS (no GPU needed)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_no_spills_no_local_memory(sm90a: tuple[list[Path], dict[str, dict[str, int]]]) -> None:
    kernels = {k: v for k, v in sm90a[1].items() if "elman_cluster2_kernel" in k}
    assert len(kernels) == N_KERNELS, sorted(kernels)
    for name, v in kernels.items():
        print(f"{name}: {v}")
        assert set(v) == {"regs", "stack", "local"}, (name, v)
        assert v["local"] == 0 and v["stack"] == 0, (name, v)  # no spills, no stack frame, no local arrays
        # __launch_bounds__(256, 1): 65536 / 256 registers per thread, capped at the ISA's 255.
        assert 0 < v["regs"] <= 255, (name, v)


@pytest.mark.slow
def test_compiles_for_sm80_with_hopper_code_guarded(tmp_path: Path) -> None:
    """An sm_80 build compiles (the kernel bodies are __trap() stubs there; the launcher refuses pre-sm_90)."""
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not found")
    r = _nvcc_cubin(tmp_path, "80")
    assert r.returncode == 0, r.stderr[-4000:]


def _sass_functions(text: str) -> dict[str, list[tuple[int, str]]]:
    """{function: [(address, instruction)]} from `cuobjdump -sass`."""
    funcs: dict[str, list[tuple[int, str]]] = {}
    cur = None
    for line in text.splitlines():
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            cur = m.group(1)
            funcs[cur] = []
            continue
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if m and cur is not None:
            funcs[cur].append((int(m.group(1), 16), m.group(2).strip()))
    return funcs


def _time_loop(ins: list[tuple[int, str]]) -> tuple[int, int]:
    """[start, end] addresses of the time loop: the widest backward branch whose range holds every HMMA."""
    hmma = [a for a, s in ins if "HMMA" in s]
    best = None
    for a, s in ins:
        m = re.search(r"\bBRA(?:\.\w+)* (0x[0-9a-f]+)", s)
        if not m:
            continue
        tgt = int(m.group(1), 16)
        if tgt < a and tgt <= min(hmma) and a >= max(hmma) and (best is None or a - tgt > best[1] - best[0]):
            best = (tgt, a)
    assert best is not None, "no loop around the HMMAs"
    return best


@pytest.mark.slow
def test_sass_hmma_and_no_gpu_fence_in_the_loop(sm90a: tuple[list[Path], dict[str, dict[str, int]]]) -> None:
    cuobjdump = _cuobjdump()
    if cuobjdump is None:
        pytest.skip("Triton's bundled cuobjdump not found")
    funcs: dict[str, list[tuple[int, str]]] = {}
    for cubin in sm90a[0]:
        r = subprocess.run([cuobjdump, "-sass", str(cubin)], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        funcs.update({k: v for k, v in _sass_functions(r.stdout).items() if "elman_cluster2_kernel" in k})
    assert len(funcs) == N_KERNELS, sorted(funcs)
    for name, ins in funcs.items():
        # The fp16 MMA disassembles as HMMA.16816.F32 (fp16 inputs are the default), bf16 as HMMA.16816.F32.BF16,
        # TF32 (fp32 kernels, mangled "kernelIf...") as HMMA.1688.F32.TF32.
        hmma = re.compile(r"HMMA\.16816\.F32\.BF16\b" if "bfloat16" in name else
                          r"HMMA\.1688\.F32\.TF32\b" if "kernelIf" in name else r"HMMA\.16816\.F32(?!\.BF16)\b")
        text = [s for _, s in ins]
        assert any(hmma.search(s) for s in text), name
        assert not any(re.search(r"\b(LDL|STL)\b", s) for s in text), f"{name}: local memory"
        lo, hi = _time_loop(ins)
        loop = [s for a, s in ins if lo <= a <= hi]
        assert not any(re.search(r"MEMBAR\.\w*\.?(GPU|SYS)", s) for s in loop), f"{name}: GPU/system fence in loop"
        assert not any("UCGABAR" in s for s in loop), f"{name}: cluster barrier in the loop"
        for op in ("LDSM", "SYNCS.PHASECHK", "UBLKCP", "FENCE.VIEW.ASYNC.S", "SYNCS.ARRIVE"):
            assert any(op in s for s in loop), f"{name}: no {op} in the time loop"
        # The exchange's only cluster-wide barriers are the two outside the loop (start and end).
        assert sum("UCGABAR_ARV" in s for s in text) == 2, name
        print(f"{name}: {len(ins)} instructions, loop {hex(lo)}-{hex(hi)}, "
              f"{sum('HMMA' in s for s in loop)} HMMA in it, "
              f"{sum('MEMBAR.ALL.GPU' in s for s in text)} MEMBAR.ALL.GPU in the kernel")


# ---------------------------------------------------------------------------------------------------------------
# CPU emulation
# ---------------------------------------------------------------------------------------------------------------


def _build_emulator(out: Path, include_first: Path | None = None, only_dt: int = 0,
                    class1_only: bool = False) -> ctypes.CDLL:
    """The emulation as a shared library; only_dt (a DT code) / class1_only restrict the kernels compiled."""
    cxx = shutil.which("g++") or shutil.which("c++")
    inc = _cuda_include()
    if cxx is None or inc is None:
        pytest.skip("no host C++ compiler or no CUDA toolkit headers to build the emulation")
    cmd = [cxx, "-std=c++20", "-O1", "-shared", "-fPIC", "-o", str(out), str(EMU_SRC)]
    cmd += (["-I" + str(include_first)] if include_first else []) + ["-I" + str(CUDA_DIR), "-I" + inc]
    cmd += [f"-DC2EMU_ONLY_DT={only_dt}"] if only_dt else []
    cmd += ["-DC2EMU_CLASS1_ONLY"] if class1_only else []
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    lib = ctypes.CDLL(str(out))
    vp, i = ctypes.c_void_p, ctypes.c_int
    tail = [ctypes.c_ulonglong, ctypes.c_char_p, i]
    lib.c2emu_fwd.argtypes = [i] + [vp] * 6 + [i] * 8 + tail
    lib.c2emu_bwd.argtypes = [i] + [vp] * 7 + [i] * 8 + tail
    lib.c2emu_plan.argtypes = [i] * 6 + [ctypes.POINTER(ctypes.c_int)]
    return lib


@pytest.fixture(scope="module")
def emu_builds(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """{name: Future of a ctypes.CDLL}: every emulator build the selected tests of this module need -- "full" (every
    dtype and tile class), the two restricted controls ("base<dt>") and one per selected mutant -- compiled once,
    all started at the first request, on every core but one: the tests emulate on the remaining core meanwhile (the
    emulation is single-threaded), so on 2 cores the ~45 s of CPU the 12 builds take mostly overlap the runs."""
    names = {it.name for it in request.session.items if getattr(it, "module", None) is request.module}
    tmp = tmp_path_factory.mktemp("c2emu")
    pool = ThreadPoolExecutor(max_workers=max(1, (os.cpu_count() or 2) - 1))
    jobs: dict[str, Future] = {}
    if any(n.startswith(("test_emulated", "test_plans")) for n in names):
        jobs["full"] = pool.submit(_build_emulator, tmp / "libc2emu.so")
    if any(n.startswith("test_unmutated") for n in names):
        for dt in (DT[torch.bfloat16], DT[TF32]):
            jobs[f"base{dt}"] = pool.submit(_build_for_mutants, tmp / f"libbase{dt}.so", dt)
    for m in MUTANTS:
        if f"test_mutant_is_caught[{m}]" in names:
            jobs[m] = pool.submit(_build_mutant, m, tmp / m)
    yield jobs
    pool.shutdown(wait=True, cancel_futures=True)


def _built(jobs: dict[str, Future], name: str, build) -> ctypes.CDLL:
    """The build `name` of emu_builds (its skip or failure re-raised here), or built now when it was not queued."""
    return jobs[name].result() if name in jobs else build()


@pytest.fixture(scope="module")
def emu(emu_builds: dict[str, Future], tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    return _built(emu_builds, "full", lambda: _build_emulator(tmp_path_factory.mktemp("c2emu1") / "libc2emu.so"))


def _p(t: torch.Tensor | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr() if t is not None else None)


def _storage(dtype: torch.dtype | str) -> torch.dtype:
    return torch.float32 if dtype == TF32 else dtype


def _inputs(T: int, B: int, H: int, dtype: torch.dtype | str, seed: int, varlen: bool):
    """Random P [T,B,H], h0 [B,H] (non-zero), w_hh [H,H] (nn.RNN's init scale), dY [T,B,H], dh_n [B,H], lengths."""
    dtype = _storage(dtype)
    g = torch.Generator().manual_seed(seed)
    P = torch.randn(T, B, H, generator=g, dtype=torch.float64)
    h0 = torch.rand(B, H, generator=g, dtype=torch.float64) * 2 - 1
    w = (torch.rand(H, H, generator=g, dtype=torch.float64) * 2 - 1) * H ** -0.5
    dY = torch.randn(T, B, H, generator=g, dtype=torch.float64)
    dhn = torch.randn(B, H, generator=g, dtype=torch.float64)
    lengths = None
    if varlen:
        lengths = torch.randint(1, T + 1, (B,), generator=g)
        lengths[0] = T
    return [t.to(dtype) for t in (P, h0, w, dY, dhn)] + [lengths]


def _emu_run(lib: ctypes.CDLL, bwd: bool, args: list, T: int, B: int, H: int, rev: bool, act: str, force_mt: int,
             force_nt: int, policy: int, seed: int,
             tf32: bool = False) -> tuple[int, str, torch.Tensor, torch.Tensor]:
    """One emulated launch. Forward args (P, h0, w, L) -> (rc, msg, Y, h_n); backward (dY, dhn, Y, w, L) ->
    (rc, msg, dA, dh0). Outputs start as NaN, so an element the kernel never wrote shows."""
    msg = ctypes.create_string_buffer(4096)
    first = args[0]
    o1 = torch.full((T, B, H), float("nan"), dtype=first.dtype)
    o2 = torch.full((B, H), float("nan"), dtype=first.dtype)
    a = 0 if act == "tanh" else 1
    fn = lib.c2emu_bwd if bwd else lib.c2emu_fwd
    rc = fn(DT[TF32 if tf32 else first.dtype], *[_p(x) for x in args], _p(o1), _p(o2), T, B, H, int(rev), a,
            force_mt, force_nt, policy, seed, msg, 4096)
    return rc, msg.value.decode(errors="replace"), o1, o2


def _err(x: torch.Tensor, oracle: torch.Tensor) -> float:
    """max |x - oracle| / max(1, max |oracle|); NaN (never passes) if x has a NaN."""
    d = (x.double() - oracle).abs().max()
    return (d / oracle.abs().max().clamp_min(1.0)).item()


def _violations(case: tuple, outs: dict[str, torch.Tensor], refs: dict[str, tuple]) -> list[str]:
    """The outputs outside the tolerance rule (empty = all pass)."""
    bad = []
    for name, got in outs.items():
        r, oracle = refs[name]
        e, e_ref = _err(got, oracle), _err(r, oracle)
        bound = 2 * e_ref + FLOOR[got.dtype]
        print(f"{case} {name}: err {e:.3e}  reference err {e_ref:.3e}  bound {bound:.3e}")
        if not e <= bound:
            bad.append(f"{name}: error {e:.3e} > bound {bound:.3e}")
    return bad


def _tf32(x: torch.Tensor) -> torch.Tensor:
    """fp32 -> tf32 (10 mantissa bits, ties away from zero: cvt.rna), as fp32. Finite inputs."""
    u = x.float().contiguous().view(torch.int32)
    return ((u + 0x1000) & ~0x1FFF).view(torch.float32)


def _ref_tf32(P, h0, w, dY, dhn, Ys, L, rev: bool, act: str):
    """The reference in TF32: the contract's forward / backward in fp32 with every matmul operand rounded to tf32
    (state or carry and w_hh) and exact products summed in fp64. Shapes as ref.forward / ref.backward."""
    T, B, H = P.shape
    steps = range(T)
    valid = [torch.ones(B, dtype=torch.bool) if L is None else torch.as_tensor(t < L) for t in steps]
    f = torch.tanh if act == "tanh" else torch.relu
    W = _tf32(w).double()
    h, Y = h0.float(), torch.zeros(T, B, H)
    for s in steps:
        t = T - 1 - s if rev else s
        hn = f((P[t].double() + _tf32(h).double() @ W.T).float())
        Y[t] = torch.where(valid[t][:, None], hn, torch.zeros_like(hn))
        h = torch.where(valid[t][:, None], hn, h)
    carry, dA = dhn.float(), torch.zeros(T, B, H)
    for s in steps:
        t = s if rev else T - 1 - s
        y = Ys[t].float()
        da = ((1 - y * y) if act == "tanh" else (y > 0).float()) * (dY[t].float() + carry)
        dA[t] = torch.where(valid[t][:, None], da, torch.zeros_like(da))
        carry = torch.where(valid[t][:, None], (_tf32(da).double() @ W).float(), carry)
    return Y, h, dA, carry


def _references(T, B, H, dtype, rev, varlen, act, seed):
    """Inputs and {output: (reference in this precision, fp64 oracle)}; backward on the in-precision reference's Y
    rounded to the storage dtype (the IEEE reference's for TF32)."""
    P, h0, w, dY, dhn, L = _inputs(T, B, H, dtype, seed, varlen)
    Yr, hnr = ref.forward(P, h0, w, L, rev, act)
    Yo, hno = ref.forward(P.double(), h0.double(), w.double(), L, rev, act)
    dAr, dh0r = ref.backward(dY, dhn, Yr, w, L, rev, act)
    dAo, dh0o = ref.backward(dY.double(), dhn.double(), Yr.double(), w.double(), L, rev, act)
    if dtype == TF32:
        Yr_, hnr, dAr, dh0r = _ref_tf32(P, h0, w, dY, dhn, Yr, L, rev, act)
        refs = {"Y": (Yr_, Yo), "h_n": (hnr, hno), "dA": (dAr, dAo), "dh0": (dh0r, dh0o)}
    else:
        refs = {"Y": (Yr, Yo), "h_n": (hnr, hno), "dA": (dAr, dAo), "dh0": (dh0r, dh0o)}
    return (P, h0, w, dY, dhn, L, Yr), refs


def _emulate_case(lib: ctypes.CDLL, case: tuple, policy: int, seed: int = 1, sched_seed: int | None = None):
    """Forward and backward of one case (inputs from `seed`, schedule from `sched_seed`, default `seed`); returns
    (errors, outputs). The backward takes the reference's Y (as the contract's backward takes the saved Y), so a
    forward error does not hide or cause a backward one."""
    sched = seed if sched_seed is None else sched_seed
    T, B, H, dtype, rev, varlen, act, fmt, fnt = case
    (P, h0, w, dY, dhn, L, Yr), refs = _references(T, B, H, dtype, rev, varlen, act, seed)
    errors: list[str] = []
    tf32 = dtype == TF32
    rc, msg, Y, hn = _emu_run(lib, False, [P, h0, w, L], T, B, H, rev, act, fmt, fnt, policy, sched, tf32)
    if rc != 1:
        errors.append(f"forward rc={rc}: {msg}")
    rc, msg, dA, dh0 = _emu_run(lib, True, [dY, dhn, Yr, w, L], T, B, H, rev, act, fmt, fnt, policy, sched, tf32)
    if rc != 1:
        errors.append(f"backward rc={rc}: {msg}")
    outs = {"Y": Y, "h_n": hn, "dA": dA, "dh0": dh0}
    if not errors:
        errors += _violations(case, outs, refs)
    return errors, outs


def _plan(lib: ctypes.CDLL, H: int, B: int, bwd: bool, fmt: int = 0, fnt: int = 0,
          elem: int = 2) -> dict[str, int] | None:
    out = (ctypes.c_int * 7)()
    if lib.c2emu_plan(H, B, int(bwd), elem, fmt, fnt, out) == 0:
        return None
    return dict(zip(("C", "mt_n", "kt_n", "BT", "smem", "ntiles", "mma_warps"), out))


# (T, B, H, dtype, reverse, varlen, act, force_mt, force_nt): every tile class (mt_n 1, 2, 3, 4), BT 8 and 16,
# several clusters along the batch (with a partial last tile), C = 1 (no peers) to C = 16, T = 1, H = 1.
EMU_CASES = [
    (5, 3, 17, torch.bfloat16, False, True, "tanh", 0, 0),    # C=2, mt 1, BT 8
    (7, 3, 100, torch.float16, True, True, "relu", 0, 0),     # C=7, one warp without k tiles
    (4, 9, 300, torch.bfloat16, True, True, "tanh", 0, 0),    # mt 2, C=10, two clusters of BT 8
    (4, 20, 200, torch.float16, False, True, "tanh", 0, 2),   # BT 16, two clusters, the second partial
    (2, 2, 530, torch.bfloat16, True, False, "relu", 0, 0),   # mt 3 on the (4, 8) class, C=12
    (2, 1, 1000, torch.bfloat16, False, False, "tanh", 0, 0),  # mt 4, C=16: the largest cluster, all 8 warps
    (5, 4, 64, torch.bfloat16, True, True, "tanh", 4, 0),     # C=1 (no exchange), 4 m tiles in one CTA
    (1, 1, 1, torch.float16, True, True, "relu", 0, 0),       # T=1, H=1
    (5, 3, 17, TF32, False, True, "tanh", 0, 0),              # fp32 as TF32 (m16n8k8), BT 8
    (2, 2, 700, TF32, True, True, "relu", 0, 0),              # TF32 mt 3 on its (3, 6) class, C=15
    (4, 20, 100, TF32, False, True, "tanh", 0, 2),            # TF32, BT 16, two clusters
]


def _case_id(c: tuple) -> str:
    T, B, H, dtype, rev, varlen, act, fmt, fnt = c
    return (f"T{T}-B{B}-H{H}-{str(dtype).replace('torch.', '')}-{'rev' if rev else 'fwd'}-"
            f"{'len' if varlen else 'full'}-{act}" + (f"-mt{fmt}" if fmt else "") + (f"-nt{fnt}" if fnt else ""))


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", EMU_CASES, ids=_case_id)
def test_emulated_forward_backward(emu: ctypes.CDLL, case: tuple) -> None:
    errors, _ = _emulate_case(emu, case, POLICY_RANDOM)
    assert not errors, errors


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_emulated_results_do_not_depend_on_the_schedule(emu: ctypes.CDLL) -> None:
    """Random, lazy-copy and eager-copy/CTA-priority schedules give bitwise-equal outputs: the cross-warp sums
    are added in a fixed order and nothing depends on which CTA or copy comes first."""
    case = (4, 5, 150, torch.bfloat16, True, True, "tanh", 0, 0)  # T=4: each ring slot reused
    outs = []
    for policy, sched_seed in ((POLICY_RANDOM, 3), (POLICY_LAZY, 4), (POLICY_EAGER + 3, 5), (POLICY_LAZY + 3, 6)):
        errors, o = _emulate_case(emu, case, policy, seed=1, sched_seed=sched_seed)
        assert not errors, (policy, errors)
        outs.append(o)
    for o in outs[1:]:
        for k in o:
            assert torch.equal(o[k].view(torch.int16), outs[0][k].view(torch.int16)), k


@pytest.mark.slow
def test_plans(emu: ctypes.CDLL) -> None:
    """The launch plans: H = 1024 fits in 16 CTAs of 4 m-tiles both ways within 227 KB; H = 1025 or fp32 is
    refused (the dispatcher then runs fallback); a small B uses 8-row batch tiles, B = 300 16-row ones."""
    for bwd in (False, True):
        p = _plan(emu, 1024, 16, bwd)
        assert p is not None and p["C"] == 16 and p["mt_n"] == 4 and p["kt_n"] == 8 and p["smem"] <= 227 * 1024, p
        assert _plan(emu, 1025, 1, bwd) is None
        assert _plan(emu, 256, 1, bwd)["C"] == 16 and _plan(emu, 257, 1, bwd)["mt_n"] == 2
        assert _plan(emu, 512, 8, bwd)["BT"] == 8 and _plan(emu, 512, 300, bwd)["BT"] == 16
    # TF32 (fp32 with allow_tf32): A twice as wide, so at most 3 m-tiles per CTA: H <= 768.
    for bwd in (False, True):
        p = _plan(emu, 768, 16, bwd, elem=4)
        assert p is not None and p["C"] == 16 and p["mt_n"] == 3 and p["smem"] <= 227 * 1024, p
        assert _plan(emu, 769, 1, bwd, elem=4) is None
    P, h0, w, _, _, _ = _inputs(2, 1, 16, torch.float32, 0, False)
    rc, _, _, _ = _emu_run(emu, False, [P, h0, w, None], 2, 1, 16, False, "tanh", 0, 0, 0, 0)
    assert rc == 0  # IEEE fp32: refused


# ---------------------------------------------------------------------------------------------------------------
# Mutations: each breaks one lane map or one step of the ring protocol; the emulation must notice.
# ---------------------------------------------------------------------------------------------------------------

MUTANTS = {
    "A_lane_map": ("A[mt][kt][1] = on ? a_pair<T, kBwd>(a.w, H, m + 8, k) : 0u;",
                   "A[mt][kt][1] = on ? a_pair<T, kBwd>(a.w, H, m, k + 8) : 0u;"),
    "A_lane_map_tf32": ("A[mt][kt][4 * hk + 1] = on ? a_elem<T, kBwd>(a.w, H, m + 8, k) : 0u;",
                        "A[mt][kt][4 * hk + 1] = on ? a_elem<T, kBwd>(a.w, H, m, k + 4) : 0u;"),
    "B_lane_map_x4": ("(p * BT + nt * 8 + row) * pitch + j * 16)",
                      "(p * BT + nt * 8 + row) * pitch + (MPQ - 1 - j) * 16)"),
    "B_lane_map_x2": ("row * pitch + ((lane >> 3) & 1) * 16", "row * pitch + (1 - ((lane >> 3) & 1)) * 16"),
    "C_lane_map": ("int c_du(int e) { return 8 * (e >> 1); }\n__device__ __forceinline__ int c_dn(int e) { return e & 1; }",  # noqa: E501
                   "int c_du(int e) { return 8 * (e & 1); }\n__device__ __forceinline__ int c_dn(int e) { return e >> 1; }"),  # noqa: E501
    "no_mbarrier_wait": ("    if (i >= 1) mbar_wait(bars + 8 * s, static_cast<uint32_t>(((i - 1) >> 1) & 1));\n", "\n"),
    "wrong_parity": ("static_cast<uint32_t>(((i - 1) >> 1) & 1)", "static_cast<uint32_t>((i >> 1) & 1)"),
    "no_rearm": ("if (tid == 0 && i >= 1 && i + 2 < iters) mbar_arrive_expect_tx(bars + 8 * s, tx_bytes);", ""),
    "no_final_cluster_barrier": ("  cluster_arrive();\n  cluster_wait();\n#else", "#else"),
}
MUTANT_CASE = (7, 3, 100, torch.bfloat16, True, True, "tanh", 0, 0)  # C=7; forward BT 8 uses ldmatrix.x2
MUTANT_CASE_X4 = (5, 11, 60, torch.bfloat16, False, True, "tanh", 0, 2)  # forward BT 16 uses ldmatrix.x4
MUTANT_CASE_TF32 = (5, 3, 100, TF32, True, True, "tanh", 0, 0)  # the TF32 (m16n8k8) fragment maps
# Every mutant is caught within the first three runs (policy 0 or 1; 2026-12-01), so three schedules leave margin; the
# CTA-priority schedules (+3) run in the schedule test above. The control below runs all of them unmutated.
MUTANT_POLICIES = (POLICY_RANDOM, POLICY_LAZY, POLICY_EAGER)


def _mutant_dt(case: tuple) -> int:
    """The DT code a mutation build compiles for a mutation case (bf16, or fp32 as TF32)."""
    return DT[case[3]]


def _build_for_mutants(out: Path, dt: int, include_first: Path | None = None) -> ctypes.CDLL:
    """One dtype and the (1, 2) tile class the mutation cases run on: the smallest build (~2.5 s on 2 cores, against
    ~4 s bf16-only and ~7 s for every dtype and class). The control test runs the same restricted build unmutated."""
    return _build_emulator(out, include_first=include_first, only_dt=dt, class1_only=True)


def _mutant_cases(mutant: str) -> tuple[tuple, ...]:
    return (MUTANT_CASE_TF32,) if mutant.endswith("_tf32") else (MUTANT_CASE, MUTANT_CASE_X4)  # _tf32: a TF32 site


def _build_mutant(mutant: str, tmp: Path) -> ctypes.CDLL:
    """The restricted emulator build of the kernel source with one mutation (the kernel header copied to `tmp` with
    the change, found first on the include path)."""
    old, new = MUTANTS[mutant]
    src = KERNEL.read_text()
    assert src.count(old) == 1, f"mutation site of {mutant} not found exactly once: update MUTANTS"
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / KERNEL.name).write_text(src.replace(old, new))
    return _build_for_mutants(tmp / "libmut.so", _mutant_dt(_mutant_cases(mutant)[0]), include_first=tmp)


@pytest.fixture(scope="module")
def mutant_baseline(emu_builds: dict[str, Future], tmp_path_factory: pytest.TempPathFactory) -> dict[int, ctypes.CDLL]:
    tmp = tmp_path_factory.mktemp("c2mutbase")
    return {dt: _built(emu_builds, f"base{dt}", lambda dt=dt: _build_for_mutants(tmp / f"libbase{dt}.so", dt))
            for dt in (DT[torch.bfloat16], DT[TF32])}


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("mutant", list(MUTANTS))
def test_mutant_is_caught(mutant: str, emu_builds: dict[str, Future], tmp_path: Path) -> None:
    cases = _mutant_cases(mutant)
    lib = _built(emu_builds, mutant, lambda: _build_mutant(mutant, tmp_path))
    runs = [(case, policy) for policy in MUTANT_POLICIES for case in cases]
    for i, (case, policy) in enumerate(runs):  # the first run that notices ends the test (the control below runs all)
        errors, _ = _emulate_case(lib, case, policy)
        # a refusal (rc 0) would mean the build or the plan does not fit the case -- never a catch
        assert not any(" rc=0:" in e for e in errors), errors
        if errors:
            print(f"{mutant}: caught by run {i + 1} of {len(runs)} ({_case_id(case)}, policy {policy}): "
                  f"{errors[0][:200]}")
            return
    pytest.fail(f"{mutant} passed every emulated run ({len(runs)})")


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", [MUTANT_CASE, MUTANT_CASE_X4, MUTANT_CASE_TF32], ids=_case_id)
def test_unmutated_kernel_passes_every_mutant_schedule(mutant_baseline: dict[int, ctypes.CDLL], case: tuple) -> None:
    """The control of the mutation tests: the kernel as built, in the mutation tests' restricted build, passes every
    case x schedule they use -- so what fails there is the mutation."""
    for policy in MUTANT_POLICIES:
        errors, _ = _emulate_case(mutant_baseline[_mutant_dt(case)], case, policy)
        assert not errors, (policy, errors)


# ---------------------------------------------------------------------------------------------------------------
# On a GPU (`-m gpu`; its own stage of make gpu-check). A refusal falls back inside the op, so these show the op is
# right with the tier forced; the harness (csrc/cuda/harness/cluster2_harness.cu) shows the tier itself ran.
# ---------------------------------------------------------------------------------------------------------------

GPU_CASES = [  # (T, B, H, dtype, reverse, varlen, act)
    (9, 3, 17, torch.bfloat16, False, True, "tanh"), (33, 5, 100, torch.float16, True, True, "relu"),
    (17, 16, 512, torch.bfloat16, True, True, "tanh"), (64, 1, 1024, torch.bfloat16, False, False, "tanh"),
    (12, 40, 1000, torch.float16, True, True, "tanh"), (7, 300, 256, torch.bfloat16, False, True, "relu"),
    (11, 7, 600, TF32, True, True, "tanh"),
]


@needs_gpu
@pytest.mark.gpu
@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", [pytest.param(c, marks=unverified_mark("cuda", "cluster2"),
                                               id=_case_id(tuple(c) + (0, 0))) for c in GPU_CASES])
def test_gpu_op_matches_reference(case: tuple) -> None:
    """The op with tier "cluster2" forced matches the reference and is bitwise repeatable, and the tier record shows
    cluster2 itself ran every launch (off the H100/H200 class a refusal to `fallback` is accepted with its reason)."""
    T, B, H, dtype, rev, varlen, act = case
    dev = torch.device("cuda")
    (P, h0, w, dY, dhn, L, Yr), refs = _references(T, B, H, dtype, rev, varlen, act, 7)
    Lc = L.to(dev) if L is not None else None
    outs = []
    for _ in range(2):
        torch.cuda.empty_cache()
        tf32 = dtype == TF32
        with expect_ran("cluster2"):
            Y, hn = torch.ops.fused_rnn.elman_fwd(P.to(dev), h0.to(dev), w.to(dev), Lc, rev, act, "cluster2", tf32)
            dA, dh0 = torch.ops.fused_rnn.elman_bwd(dY.to(dev), dhn.to(dev), Yr.to(dev), w.to(dev), Lc, rev, act,
                                                    "cluster2", tf32)
            torch.cuda.synchronize()
        outs.append({"Y": Y.cpu(), "h_n": hn.cpu(), "dA": dA.cpu(), "dh0": dh0.cpu()})
    assert not _violations(case, outs[0], refs)
    for k in outs[0]:
        assert torch.equal(outs[0][k].view(torch.int16), outs[1][k].view(torch.int16)), f"{k} not deterministic"


REFUSALS = [  # (H, dtype, allow_tf32, words of the reason the tier record must carry)
    pytest.param(64, torch.float32, False, "TF32", id="ieee-fp32"),
    pytest.param(64, torch.float64, False, "float64", id="fp64"),
    pytest.param(1025, torch.bfloat16, False, "H=1025 > 1024", id="bf16-H1025"),
    pytest.param(769, torch.float32, True, "H=769 > 768", id="tf32-H769"),
]


@needs_gpu
@pytest.mark.gpu
@pytest.mark.gpu_unverified
@pytest.mark.timeout(120)
@pytest.mark.parametrize("H, dtype, tf32, reason", REFUSALS)
def test_gpu_refusal_runs_fallback_and_says_why(H: int, dtype: torch.dtype, tf32: bool, reason: str) -> None:
    """What cluster2 cannot run falls back inside the op -- right results, and the tier record says why (the reasons
    come before any device query, so they are the same on every GPU)."""
    from fused_rnn.backends import tier_log

    dev = torch.device("cuda")
    T, B = 3, 2
    (P, h0, w, dY, dhn, L, Yr), refs = _references(T, B, H, torch.float32 if tf32 else dtype, False, False, "tanh", 3)
    with tier_log.record() as runs:
        Y, hn = torch.ops.fused_rnn.elman_fwd(P.to(dev), h0.to(dev), w.to(dev), None, False, "tanh", "cluster2", tf32)
        dA, dh0 = torch.ops.fused_rnn.elman_bwd(dY.to(dev), dhn.to(dev), Yr.to(dev), w.to(dev), None, False, "tanh",
                                                "cluster2", tf32)
        torch.cuda.synchronize()
    assert [(r.op, r.requested, r.ran) for r in runs] == [("fwd", "cluster2", "fallback"),
                                                          ("bwd", "cluster2", "fallback")], runs
    assert all(reason in r.why and r.why.startswith("cluster2:") for r in runs), [r.why for r in runs]
    if not tf32:  # fallback computes IEEE here: the reference's rule applies as to any tier
        assert not _violations((T, B, H, dtype), {"Y": Y.cpu(), "h_n": hn.cpu(), "dA": dA.cpu(), "dh0": dh0.cpu()},
                               refs)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
