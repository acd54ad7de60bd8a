"""The CUDA C++ backend (csrc/cuda/): every tier against the reference backend, under the tolerance rule.

Without a GPU: the build checks (the ops have CUDA kernels, the tiers are listed, the heuristic is sane), the
dispatch decisions as pure functions through the debug ops (the op's empty tier runs only GPU-verified tiers; the
cluster plan from an occupancy answer; the fallback's GEMM kind), the arch list of setup.py, and the kernels'
logic in a CPU emulation. With a GPU, each tier is forced in turn through the op's `tier` argument (and once through
FUSED_RNN_CUDA_TIER), the tier record (fused_rnn.backends.tier_log) must show that tier ran, and the results are
compared with `reference` on the same inputs:
    error(backend in dtype X vs the fp64 oracle) <= 2 * error(reference in dtype X vs the oracle) + floor[X]
with the oracle = the reference backend run in fp64 on the same (dtype-rounded) inputs. `pytest -m gpu_quick` is the
small subset `make gpu-check` runs (well under 40 s on an H100); `pytest -m gpu` is the full matrix.
Shapes: T time, B batch, H hidden.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import math
import os
import runpy
import shutil
import subprocess
import sys

import pytest
import torch
from cuda_common import FLOOR, check_ran, expect_ran, needs_cuda_build, needs_gpu, unverified_mark
from test_relu_backward import dead_unit_case

import fused_rnn
from fused_rnn.backends import cuda as cuda_backend
from fused_rnn.backends import cuda_heuristic, select, tier_log, verified
from fused_rnn.backends import reference as ref

TIERS = ("batch_tiled", "persistent", "cluster", "fallback")
FORCED_ONLY_TIERS = ("cluster2",)  # tested in tests/test_cluster2.py; stage 3.5 of make gpu-check
DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)

# ---------------------------------------------------------------------------------------------------------------
# Build checks (no GPU needed; CI builds with CUDA)
# ---------------------------------------------------------------------------------------------------------------


@needs_cuda_build
def test_cuda_tiers_compiled() -> None:
    tiers = list(torch.ops.fused_rnn.cuda_tiers())
    assert sorted(tiers) == sorted(TIERS + FORCED_ONLY_TIERS), tiers
    assert cuda_backend.compiled_tiers() == tuple(t for t in tiers if t in cuda_backend.TIERS)


@needs_cuda_build
@pytest.mark.parametrize("op", ["elman_fwd", "elman_bwd"])
def test_cuda_kernel_registered(op: str) -> None:
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fused_rnn::{op}", "CUDA")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("H", [1, 17, 224, 320, 1000, 8192])
@pytest.mark.parametrize("B", [1, 16, 257])
def test_heuristic_picks_a_compiled_tier(H: int, B: int, dtype: torch.dtype) -> None:
    """Any shape gets a tier from `compiled`; without batch_tiled compiled it is fallback."""
    dev = torch.device("cuda")
    tier = cuda_heuristic.pick_tier(H, B, dtype, dev, TIERS)
    assert tier in TIERS
    assert cuda_heuristic.pick_tier(H, B, dtype, dev, ("fallback",)) == "fallback"
    if H > 352:  # w_hh [H, H] cannot be resident in one CTA's 227 KB at any dtype: never batch_tiled
        assert tier != "batch_tiled"


def test_heuristic_rule() -> None:
    """The measured rule (csrc/cuda/NOTES_persistent.md): cluster on Hopper for H <= 1024 half / 768 fp32 and
    B <= 256, persistent for B <= 16 up to its shared-memory limit, fallback otherwise and for fp64; batch_tiled only
    when forced (not yet run on a GPU)."""
    dev = torch.device("cuda")
    hopper = torch.cuda.is_available() and torch.cuda.get_device_capability(dev)[0] >= 9
    small = cuda_heuristic.pick_tier(64, 1, torch.float32, dev, TIERS)
    assert small == ("cluster" if hopper else "persistent")
    assert cuda_heuristic.pick_tier(2048, 8, torch.float32, dev, TIERS) == "persistent"
    assert cuda_heuristic.pick_tier(2048, 64, torch.float32, dev, TIERS) == "fallback"
    assert cuda_heuristic.pick_tier(512, 1024, torch.bfloat16, dev, TIERS) == "fallback"
    assert cuda_heuristic.pick_tier(64, 1, torch.float64, dev, TIERS) == "fallback"
    assert cuda_heuristic.pick_tier(8192, 1, torch.bfloat16, dev, TIERS) == "fallback"
    for H in (1, 64, 240, 336):
        for dtype in DTYPES:
            assert cuda_heuristic.pick_tier(H, 4, dtype, dev, TIERS) != "batch_tiled"


@pytest.mark.parametrize(("dtype", "h_max"), [(torch.float32, 240), (torch.bfloat16, 336), (torch.float16, 336),
                                              (torch.float64, 168)], ids=str)
def test_heuristic_limit_matches_227kb(dtype: torch.dtype, h_max: int) -> None:
    """The largest H the batch_tiled launcher fits in 227 KB (computed by hand from its layout: H rows of
    roundup(H, 16 B) plus two fp32/fp64 state rows) is the python-side limit too."""
    assert cuda_heuristic.batch_tiled_smem_bytes(h_max, dtype) <= 227 * 1024
    assert cuda_heuristic.batch_tiled_smem_bytes(h_max + 1, dtype) > 227 * 1024
    if not torch.cuda.is_available():  # the device's own limit is used where there is one
        dev = torch.device("cuda")
        assert cuda_heuristic.batch_tiled_fits(h_max, dtype, dev)
        assert not cuda_heuristic.batch_tiled_fits(h_max + 1, dtype, dev)


# ---------------------------------------------------------------------------------------------------------------
# Dispatch decisions as pure functions (issue #21), checked on the CPU through the debug ops the op itself uses
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not fused_rnn._ext.LOADED, reason="the extension is not built")
def test_verified_list_is_one_list_read_by_the_op_and_the_selector() -> None:
    """select.GPU_VERIFIED is parsed from the op's own copy (csrc/cuda/gpu_verified.h), not written twice."""
    raw = [str(e) for e in torch.ops.fused_rnn.gpu_verified()]
    tiers, caps, report = verified.parse(raw)
    assert (select.GPU_VERIFIED, select.GPU_VERIFIED_CAPABILITY, select.GPU_VERIFIED_REPORT) == (tiers, caps, report)
    assert tiers["cuda"] and caps and report  # the H200 report of 2026-11-27 verified cluster/persistent/fallback


@needs_cuda_build
@pytest.mark.parametrize("H", [1, 17, 100, 224, 240, 336, 352, 353, 1000])
def test_empty_tier_runs_only_verified_tiers(H: int) -> None:
    """A direct elman_fwd/elman_bwd call with tier="" used to run batch_tiled for H <= 352, a tier that has never run
    on a GPU. Now "" takes batch_tiled only where the verified list has it for the device's capability."""
    for cc in ((9, 0), (8, 0), (8, 9), (10, 0), (12, 0)):
        want = "batch_tiled" if H <= 352 and verified.is_verified("cuda", "batch_tiled", cc) else "fallback"
        assert torch.ops.fused_rnn.cuda_resolve_tier("", H, *cc) == want, (H, cc)


@needs_cuda_build
def test_empty_tier_follows_the_list_it_is_given() -> None:
    """With an injected list the decision follows it: batch_tiled listed for 9.0 is taken at H <= 352 on 9.0 only; a
    named tier is always tried as asked (tests and benchmarks force tiers; a refusal still falls back)."""
    r = torch.ops.fused_rnn.cuda_resolve_tier
    listed = ["cuda:batch_tiled", "cuda:fallback", "capability:9.0"]
    assert r("", 352, 9, 0, listed) == "batch_tiled"
    assert r("", 1, 9, 0, listed) == "batch_tiled"
    assert r("", 353, 9, 0, listed) == "fallback"
    assert r("", 100, 8, 0, listed) == "fallback"
    assert r("", 100, 9, 0, ["cuda:batch_tiled", "capability:8.0"]) == "fallback"
    assert r("", 100, 9, 0, ["cuda:cluster", "cuda:fallback", "capability:9.0"]) == "fallback"
    for t in TIERS:
        assert r(t, 100, 8, 0, []) == t
    with pytest.raises(RuntimeError, match="unknown tier"):
        r("bogus", 1, 9, 0)


PLAN_FIELDS = ("cluster", "bt", "hs", "tiles", "active", "waves", "smem")
SMEM_OPTIN = 227 * 1024  # H100/H200


def _plan(B: int, H: int, elem: int, occupancy, optin: int = SMEM_OPTIN, only_bt: int = 0, force: int = 0) -> dict:
    """The cluster tier's plan (csrc/cuda/cluster_plan.h) for an occupancy answer occupancy(cluster, bt, smem) ->
    clusters co-resident at once (cudaOccupancyMaxActiveClusters' answer on a GPU)."""
    def smem_of(c: int, bt: int) -> int:  # one CTA's weight slice + the two fp32 state slots
        hs = math.ceil(math.ceil(H / c) / 4) * 4
        return (hs * H * elem + 15) // 16 * 16 + 2 * bt * H * 4
    occ = [int(occupancy(c, bt, smem_of(c, bt))) for c in range(1, 17) for bt in (1, 4, 8)]
    return dict(zip(PLAN_FIELDS, torch.ops.fused_rnn.cuda_cluster_plan(B, H, elem, optin, occ, only_bt, force)))


def _h200(c: int, bt: int, smem: int) -> int:
    """An H200-like answer: 7 co-resident 16-CTA clusters (what its timings show: bf16 B=256, H=1024 ran 32 clusters
    in 5 waves), more of the smaller sizes."""
    return {16: 7, 8: 16}.get(c, 132 // c)


@needs_cuda_build
def test_cluster_plan_takes_the_occupancy_answer_not_the_sm_count() -> None:
    """bf16 B=256, H=1024 on the H200: 32 tiles of 8 rows, 7 co-resident -> 5 waves (132 // 16 = 8 would say 4)."""
    p = _plan(256, 1024, 2, _h200)
    assert (p["cluster"], p["bt"], p["tiles"], p["active"], p["waves"]) == (16, 8, 32, 7, 5), p
    assert p["hs"] == 64 and p["smem"] == 64 * 1024 * 2 + 2 * 8 * 1024 * 4
    # the same shape where the device holds 8 such clusters: 4 waves -- the answer, not a constant, decides
    assert _plan(256, 1024, 2, lambda c, bt, s: 8)["waves"] == 4


@needs_cuda_build
@pytest.mark.parametrize(("B", "active16", "bt", "waves"), [
    (16, 7, 4, 1),    # 4 tiles of 4 rows fit the 7 co-resident clusters: more, smaller clusters (H200: 10.0 -> 6.5 us)
    (16, 3, 8, 1),    # only 3 fit: tiles of 8 rows, 2 clusters, still one wave
    (64, 7, 8, 2),    # 8 tiles of 8 > 7: two waves (tiles of 4: 16 tiles, 3 waves)
    (1, 7, 1, 1),
    (3, 1, 4, 1),     # B = 2..4 share the 4-row tile
])
def test_cluster_plan_one_wave_where_possible(B: int, active16: int, bt: int, waves: int) -> None:
    p = _plan(B, 1024, 2, lambda c, b, s: active16 if c == 16 else 0)
    assert (p["cluster"], p["bt"], p["waves"]) == (16, bt, waves), p
    assert p["tiles"] == math.ceil(B / bt) and p["waves"] == math.ceil(p["tiles"] / p["active"])


@needs_cuda_build
def test_cluster_plan_falls_back_to_smaller_clusters() -> None:
    """A part that cannot schedule 16-CTA (non-portable) clusters, e.g. fewer free SMs per GPC: the largest size the
    occupancy query admits is taken (fp32 H=512: 8 CTAs of 64 units); a failed query (-1) counts as "cannot"."""
    only8 = lambda c, bt, s: 0 if c > 8 else 132 // c  # noqa: E731
    p = _plan(16, 512, 4, only8)
    assert (p["cluster"], p["hs"]) == (8, 64), p
    assert _plan(16, 512, 4, lambda c, bt, s: -1 if c > 12 else 10)["cluster"] == 12
    # where no smaller cluster can hold its slice (bf16 H=1024: 8 CTAs need 256 KB each) there is no plan: refused
    assert _plan(16, 1024, 2, only8)["cluster"] == 0
    # nothing schedulable at all
    assert _plan(16, 256, 4, lambda c, bt, s: 0)["cluster"] == 0


@needs_cuda_build
def test_cluster_plan_shared_memory_and_small_h() -> None:
    """fp32 H=1024 cannot fit (16 CTAs x 64 rows x 4 KB = 256 KB each): no plan. H=17 splits into 5 CTAs of 4 units
    and its 3 rows take 1-row tiles (3 clusters fit at once)."""
    assert _plan(4, 1024, 4, _h200)["cluster"] == 0
    assert _plan(1, 1024, 4, _h200, optin=400 * 1024)["cluster"] == 16  # the limit is the device's, not a constant
    p = _plan(3, 17, 4, _h200)
    assert (p["cluster"], p["hs"], p["bt"], p["waves"]) == (5, 4, 1, 1), p
    assert _plan(1, 1, 4, _h200)["cluster"] == 1
    # the test knobs: one batch tile only, one cluster size only
    assert _plan(64, 512, 2, _h200, only_bt=1)["bt"] == 1
    assert _plan(64, 512, 2, _h200, force=8)["cluster"] == 8
    # H=100 over 16 CTAs would be 8-unit slices, of which only 13 are non-empty: no 16-CTA split exists
    assert _plan(64, 100, 2, _h200, force=16)["cluster"] == 0
    assert _plan(64, 100, 2, _h200)["cluster"] == 13


@needs_cuda_build
def test_fallback_gemm_is_16_bit_for_half_forward() -> None:
    """fallback used to upcast fp16/bf16 to fp32 and run an SGEMM per step. Forward now multiplies the 16-bit state
    (the rounded stored output, exact) by the 16-bit w_hh with fp32 accumulation and output on the tensor cores;
    backward keeps the fp32 carry of the precision policy (an SGEMM on an fp32 copy of w_hh)."""
    g = torch.ops.fused_rnn.cuda_fallback_gemm
    assert g(torch.bfloat16, False) == "gemm=bf16xbf16->fp32 cublasGemmEx CUBLAS_COMPUTE_32F"
    assert g(torch.float16, False) == "gemm=fp16xfp16->fp32 cublasGemmEx CUBLAS_COMPUTE_32F"
    for dt in (torch.bfloat16, torch.float16):
        assert g(dt, True) == "gemm=sgemm on an fp32 copy of w_hh (fp32 carry) ieee"
    assert g(torch.float32, False) == "gemm=sgemm ieee" and g(torch.float32, True, True) == "gemm=sgemm tf32"
    assert g(torch.float64, False) == g(torch.float64, True) == "gemm=dgemm"


@needs_cuda_build
def test_extension_links_the_16_bit_gemm() -> None:
    """The built extension calls cublasGemmEx (resolved through libtorch_cuda's libcublas when it loads)."""
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("no nm")
    so = fused_rnn._C.__file__
    out = subprocess.run([nm, "-D", "--undefined-only", so], capture_output=True, text=True, timeout=60).stdout
    assert "cublasGemmEx" in out


# ---------------------------------------------------------------------------------------------------------------
# The arch list (issue #20): setup.py's choice, and what the build says it compiled
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup_py() -> dict:
    """setup.py's functions, from running it with setuptools.setup captured (nothing is built)."""
    import setuptools

    real = setuptools.setup
    setuptools.setup = lambda **kw: None
    try:
        return runpy.run_path(os.path.join(_ROOT, "setup.py"), run_name="__main__")
    finally:
        setuptools.setup = real


def test_arch_list_spellings(setup_py: dict) -> None:
    n = setup_py["_normalize_archs"]
    assert n("80;86 sm_90a,sm_120+PTX") == "8.0;8.6;9.0a;12.0+PTX"
    assert n("8.0 9.0a 100") == "8.0;9.0a;10.0"
    with pytest.raises(SystemExit, match="cannot read"):
        n("ampere")
    assert setup_py["_arch_macros"]("8.0;9.0a;12.0+PTX") == [("FUSED_RNN_BUILT_ARCHS", "8.0:9.0a:12.0+PTX"),
                                                            ("FUSED_RNN_BUILT_SM90A", "1")]
    assert setup_py["_arch_macros"]("8.0") == [("FUSED_RNN_BUILT_ARCHS", "8.0")]


def test_arch_list_choice(setup_py: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """FUSED_RNN_CUDA_ARCHS wins, then TORCH_CUDA_ARCH_LIST, then the visible GPUs (9.0 as 9.0a), then -- no GPU
    visible, a distributable build -- sm_80, 86, 89, 90a (+ 100, 120 where nvcc has them) and PTX of the newest."""
    pick = setup_py["cuda_arch_list"]
    monkeypatch.delenv("FUSED_RNN_CUDA_ARCHS", raising=False)
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    archs, why = pick()
    toks = archs.split(";")
    assert toks[:4] == ["8.0", "8.6", "8.9", "9.0a"] and "no GPU" in why, archs
    assert toks[-1].endswith("+PTX") and not toks[-1].startswith("9.0a") and sum("+PTX" in t for t in toks) == 1
    have = setup_py["_nvcc_archs"]()
    for a in ("10.0", "12.0"):
        assert (any(t.startswith(a) for t in toks)) == (a.replace(".", "") in have), (archs, have)
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0a")
    assert pick() == ("9.0a", "TORCH_CUDA_ARCH_LIST")
    monkeypatch.setenv("FUSED_RNN_CUDA_ARCHS", "sm_80")
    assert pick()[0] == "8.0"
    monkeypatch.setenv("FUSED_RNN_CUDA_ARCHS", "dist")
    assert pick()[0] == archs
    monkeypatch.delenv("FUSED_RNN_CUDA_ARCHS")
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: [(9, 0), (8, 0)][i])
    assert pick() == ("8.0;9.0a", "the visible GPUs")


@needs_cuda_build
def test_build_reports_its_arch_list() -> None:
    """The extension knows what it was compiled for (csrc/cuda/arch.h), for error messages and show_config."""
    archs = str(torch.ops.fused_rnn.cuda_archs())
    assert archs != "unknown" and archs, archs
    for tok in archs.split(";"):
        assert tok.removesuffix("+PTX").removesuffix("a").replace(".", "").isdigit(), archs


# ---------------------------------------------------------------------------------------------------------------
# The kernels' logic on the CPU: csrc/cuda/emulate/emulate.cpp compiles elman_kernels.cuh as host C++ (a thread per
# CUDA thread, barriers for __syncthreads and shuffles) -- indexing, reductions, lengths, reverse and rounding are
# checked here without a GPU; timing, the memory model and the launches are not.
# ---------------------------------------------------------------------------------------------------------------

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_EMU_DT = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}


def _cuda_include_dirs() -> list[str]:
    """A CUDA toolkit include directory (cuda_fp16.h and crt/host_defines.h -- the nvidia wheels lack crt/), plus the
    wheels' include directory torch's headers may want; [] when there is no toolkit."""
    cands = [os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "include"), "/usr/local/cuda/include"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        cands.append(os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "include"))
    toolkit = [d for d in dict.fromkeys(cands)
               if all(os.path.exists(os.path.join(d, *f)) for f in (("cuda_fp16.h",), ("crt", "host_defines.h")))]
    if not toolkit:
        return []
    wheels = [os.path.join(sp, "nvidia", "cu13", "include") for sp in sys.path]
    return toolkit[:1] + [d for d in dict.fromkeys(wheels) if os.path.isdir(d)]


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    cxx = shutil.which("g++") or shutil.which("c++")
    cuda_inc = _cuda_include_dirs()
    if cxx is None or not cuda_inc:
        pytest.skip("no host C++ compiler or no CUDA toolkit headers to build the emulation")
    out = str(tmp_path_factory.mktemp("emu") / "libemu.so")
    from torch.utils.cpp_extension import include_paths

    cmd = [cxx, "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-o", out,
           os.path.join(_ROOT, "csrc", "cuda", "emulate", "emulate.cpp"), "-I" + os.path.join(_ROOT, "csrc", "cuda"),
           "-I" + os.path.join(_ROOT, "csrc")] + ["-I" + d for d in include_paths() + cuda_inc]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    return ctypes.CDLL(out)


def _ptr(t: torch.Tensor | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr() if t is not None else 0)


def _emu_fallback_fwd(lib: ctypes.CDLL, P: torch.Tensor, h0: torch.Tensor, w: torch.Tensor, L: torch.Tensor | None,
                      rev: bool, act: int) -> tuple[torch.Tensor, torch.Tensor]:
    """elman_cuda.cpp's fallback forward loop (GEMM per step, then the pointwise kernel) with the emulated kernels.
    P [T,B,H], h0 [B,H], w [H,H], L [B] | None -> Y [T,B,H], h_n [B,H]; outputs start as NaN. The state S is kept in
    the storage dtype, as the op keeps it; the GEMM multiplies its values (exact in fp32) by w_hh's with fp32
    accumulation and output -- what cublasGemmEx with CUBLAS_COMPUTE_32F does for fp16/bf16 (SGEMM/DGEMM otherwise)."""
    T, B, H = P.shape
    acc = torch.float64 if P.dtype == torch.float64 else torch.float32
    Y, hn = torch.full_like(P, float("nan")), torch.full_like(h0, float("nan"))
    S, W = h0.clone(), w.to(acc)
    G = torch.empty(B, H, dtype=acc)
    args = (_ptr(P), _ptr(h0), _ptr(w), _ptr(L), _ptr(Y), _ptr(hn), T, B, H, int(rev), act)
    for s in range(T):
        torch.mm(S.to(acc), W.t(), out=G)
        lib.emu_fb_fwd(_EMU_DT[P.dtype], 0, *args, s, _ptr(S), _ptr(G))
    lib.emu_fb_fwd(_EMU_DT[P.dtype], 2, *args, 0, _ptr(S), _ptr(G))
    return Y, hn


def _emu_fallback_bwd(lib: ctypes.CDLL, dY: torch.Tensor, dhn: torch.Tensor, Y: torch.Tensor, w: torch.Tensor,
                      L: torch.Tensor | None, rev: bool, act: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fallback backward loop; dY, Y [T,B,H], dhn [B,H], w [H,H] -> dA [T,B,H], dh0 [B,H]."""
    T, B, H = Y.shape
    acc = torch.float64 if Y.dtype == torch.float64 else torch.float32
    dA, dh0 = torch.full_like(Y, float("nan")), torch.full_like(dhn, float("nan"))
    G = torch.full((B, H), float("nan"), dtype=acc)
    D, W = torch.full_like(G, float("nan")), w.to(acc)
    args = (_ptr(dY), _ptr(dhn), _ptr(Y), _ptr(w), _ptr(L), _ptr(dA), _ptr(dh0), T, B, H, int(rev), act)
    for s in range(T - 1, -1, -1):
        if s < T - 1:
            torch.mm(D, W, out=G)
        lib.emu_fb_bwd(_EMU_DT[Y.dtype], 1, *args, s, _ptr(D), _ptr(G))
    torch.mm(D, W, out=G)
    lib.emu_fb_bwd(_EMU_DT[Y.dtype], 3, *args, 0, _ptr(D), _ptr(G))
    return dA, dh0


EMU_CASES = [  # (tier, T, B, H, dtype, reverse, varlen, act, BT): every G of the thread layout, partial tiles, the
    # unpadded shared-memory layout (fp32 H=240, bf16 H=336), T=1, H=1.
    ("batch_tiled", 7, 3, 17, torch.float32, True, True, "tanh", 2),
    ("batch_tiled", 9, 5, 100, torch.float64, False, True, "relu", 4),
    ("batch_tiled", 6, 7, 128, torch.bfloat16, True, True, "tanh", 2),
    ("batch_tiled", 5, 2, 240, torch.float32, True, True, "tanh", 1),
    ("batch_tiled", 4, 2, 336, torch.float16, False, True, "relu", 1),
    ("batch_tiled", 1, 3, 2, torch.float32, True, True, "tanh", 4),
    ("batch_tiled", 3, 1, 1, torch.float32, False, False, "relu", 1),
    ("fallback", 7, 3, 17, torch.float16, True, True, "relu", 1),
    ("fallback", 9, 5, 100, torch.bfloat16, False, True, "tanh", 1),
    ("fallback", 4, 2, 33, torch.float64, True, False, "tanh", 1),
]


@needs_cuda_build
@pytest.mark.slow  # ~10 s of g++ plus ~2 s per case on 2 cores: out of the quick CPU stage of make gpu-check
@pytest.mark.timeout(600)
@pytest.mark.parametrize("case", EMU_CASES, ids=lambda c: _case_id(c[:8]) + f"-BT{c[8]}")
def test_kernels_emulated_on_cpu(emu: ctypes.CDLL, case: tuple) -> None:
    tier, T, B, H, dtype, rev, varlen, act, BT = case
    P, h0, w, dY, dhn, L = _inputs(T, B, H, dtype, 11, varlen, torch.device("cpu"))
    a = 0 if act == "tanh" else 1
    if tier == "batch_tiled":
        Y, hn = torch.full_like(P, float("nan")), torch.full_like(h0, float("nan"))
        assert emu.emu_fwd(_EMU_DT[dtype], _ptr(P), _ptr(h0), _ptr(w), _ptr(L), _ptr(Y), _ptr(hn), T, B, H, int(rev),
                           a, BT) == 1
    else:
        Y, hn = _emu_fallback_fwd(emu, P, h0, w, L, rev, a)
    Yr, hnr = ref.forward(P, h0, w, L, rev, act)
    Yo, hno = ref.forward(P.double(), h0.double(), w.double(), L, rev, act)
    _judge("Y", Y, Yr, Yo, dtype)
    _judge("h_n", hn, hnr, hno, dtype)
    if tier == "batch_tiled":
        dA, dh0 = torch.full_like(P, float("nan")), torch.full_like(h0, float("nan"))
        assert emu.emu_bwd(_EMU_DT[dtype], _ptr(dY), _ptr(dhn), _ptr(Yr), _ptr(w), _ptr(L), _ptr(dA), _ptr(dh0), T, B,
                           H, int(rev), a, BT) == 1
    else:
        dA, dh0 = _emu_fallback_bwd(emu, dY, dhn, Yr, w, L, rev, a)
    dAr, dh0r = ref.backward(dY, dhn, Yr, w, L, rev, act)
    dAo, dh0o = ref.backward(dY.double(), dhn.double(), Yr.double(), w.double(), L, rev, act)
    _judge("dA", dA, dAr, dAo, dtype)
    _judge("dh0", dh0, dh0r, dh0o, dtype)


@needs_cuda_build
@pytest.mark.slow
@pytest.mark.parametrize("tier", ["batch_tiled", "fallback"])
def test_emulated_relu_dead_unit_blocks_nonfinite_gradient(emu: ctypes.CDLL, tier: str) -> None:
    """relu backward is torch's threshold_backward, a select (h <= 0 ? 0 : g): inf / NaN in dY at a dead unit gives
    dA = 0 there, as nn.RNN and the reference do (a 0/1 factor gave 0 · inf = NaN; tests/test_relu_backward.py)."""
    T, B, H = 5, 4, 24
    Y, w, dY, dhn, dead = dead_unit_case(T, B, H)
    if tier == "batch_tiled":
        dA, dh0 = torch.full_like(Y, float("nan")), torch.full_like(dhn, float("nan"))
        assert emu.emu_bwd(_EMU_DT[torch.float32], _ptr(dY), _ptr(dhn), _ptr(Y), _ptr(w), _ptr(None), _ptr(dA),
                           _ptr(dh0), T, B, H, 0, 1, 2) == 1
    else:
        dA, dh0 = _emu_fallback_bwd(emu, dY, dhn, Y, w, None, False, 1)
    rA, rh0 = ref.backward(dY, dhn, Y, w, None, False, "relu")
    assert torch.equal(dA[dead], torch.zeros_like(dA[dead])) and torch.isfinite(dA).all() and torch.isfinite(dh0).all()
    torch.testing.assert_close(dA, rA, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dh0, rh0, rtol=1e-5, atol=1e-5)


@needs_cuda_build
@pytest.mark.slow
def test_emulated_batch_tiled_refuses_what_does_not_fit(emu: ctypes.CDLL) -> None:
    """fp32 H=241 exceeds 227 KB: the launcher's config says "cannot run" (the dispatcher then runs fallback)."""
    P, h0, w, _, _, _ = _inputs(2, 1, 241, torch.float32, 12, False, torch.device("cpu"))
    Y, hn = torch.empty_like(P), torch.empty_like(h0)
    assert emu.emu_fwd(0, _ptr(P), _ptr(h0), _ptr(w), None, _ptr(Y), _ptr(hn), 2, 1, 241, 0, 0, 1) == 0


# ---------------------------------------------------------------------------------------------------------------
# GPU helpers
# ---------------------------------------------------------------------------------------------------------------


def _poison_cache(n: int, dev: torch.device) -> None:
    """Leave NaN in the caching allocator's free blocks, so an output element no kernel wrote shows up as NaN."""
    x = torch.full((n,), float("nan"), device=dev)
    del x


def _inputs(T: int, B: int, H: int, dtype: torch.dtype, seed: int, varlen: bool, dev: torch.device):
    """Random P [T,B,H], h0 [B,H], w_hh [H,H] (nn.RNN's init scale), lengths [B] | None, dY [T,B,H], dh_n [B,H]."""
    g = torch.Generator().manual_seed(seed)
    k = H ** -0.5
    P = torch.randn(T, B, H, generator=g, dtype=torch.float64)
    h0 = torch.rand(B, H, generator=g, dtype=torch.float64) * 2 - 1
    w = (torch.rand(H, H, generator=g, dtype=torch.float64) * 2 - 1) * k
    dY = torch.randn(T, B, H, generator=g, dtype=torch.float64)
    dhn = torch.randn(B, H, generator=g, dtype=torch.float64)
    lengths = None
    if varlen:
        lengths = torch.randint(1, T + 1, (B,), generator=g)
        lengths[0] = T  # one element runs the whole sequence
        lengths = lengths.to(dev)
    return [t.to(dev, dtype) for t in (P, h0, w, dY, dhn)] + [lengths]


def _err(x: torch.Tensor, oracle: torch.Tensor) -> float:
    """max |x - oracle| / max(1, max |oracle|), NaN if x has a NaN (so it never passes)."""
    d = (x.double() - oracle).abs().max()
    return (d / oracle.abs().max().clamp_min(1.0)).item()


def _judge(name: str, got: torch.Tensor, ref_x: torch.Tensor, oracle: torch.Tensor, dtype: torch.dtype) -> None:
    e, e_ref = _err(got, oracle), _err(ref_x, oracle)
    bound = 2 * e_ref + FLOOR[dtype]
    print(f"{name}: err {e:.3e}  reference err {e_ref:.3e}  bound {bound:.3e}")
    assert e <= bound, f"{name}: error {e:.3e} > bound {bound:.3e} (reference {e_ref:.3e})"


def _ran(expect: str | None, tier: str):
    return contextlib.nullcontext() if expect == "" else expect_ran(expect or tier)


def _check_tier(tier: str, T: int, B: int, H: int, dtype: torch.dtype, reverse: bool, varlen: bool, act: str,
                seed: int = 0, expect: str | None = None) -> None:
    """Forward and backward of the op forced to `tier` vs the reference in dtype and in fp64; the tier record must
    show `expect` (default: `tier` itself; "" = the caller checks the record) ran both."""
    dev = torch.device("cuda")
    P, h0, w, dY, dhn, lengths = _inputs(T, B, H, dtype, seed, varlen, dev)
    _poison_cache(4 * T * B * H + 4 * B * H, dev)
    with _ran(expect, tier):
        Y, hn = torch.ops.fused_rnn.elman_fwd(P, h0, w, lengths, reverse, act, tier, False)
    Yr, hnr = ref.forward(P, h0, w, lengths, reverse, act)
    Yo, hno = ref.forward(P.double(), h0.double(), w.double(), lengths, reverse, act)
    assert Y.dtype == dtype and Y.shape == (T, B, H) and hn.shape == (B, H)
    _judge("Y", Y, Yr, Yo, dtype)
    _judge("h_n", hn, hnr, hno, dtype)
    if lengths is not None:  # padded steps are exactly zero
        pad = torch.arange(T, device=dev).view(T, 1) >= lengths.view(1, B)
        assert (Y[pad] == 0).all()
    # Backward on the same saved Y (the reference's, in dtype), so only the BPTT differs.
    _poison_cache(4 * T * B * H + 4 * B * H, dev)
    with _ran(expect, tier):
        dA, dh0 = torch.ops.fused_rnn.elman_bwd(dY, dhn, Yr, w, lengths, reverse, act, tier, False)
    dAr, dh0r = ref.backward(dY, dhn, Yr, w, lengths, reverse, act)
    dAo, dh0o = ref.backward(dY.double(), dhn.double(), Yr.double(), w.double(), lengths, reverse, act)
    assert dA.dtype == dtype and dA.shape == (T, B, H) and dh0.shape == (B, H)
    _judge("dA", dA, dAr, dAo, dtype)
    _judge("dh0", dh0, dh0r, dh0o, dtype)


def _same(a: torch.Tensor, b: torch.Tensor, exact: bool) -> None:
    """Bitwise for our own kernels; within fp32 rounding where cuBLAS runs on another stream / workspace (its
    bitwise reproducibility is promised for one stream and workspace only). A stale or unwritten buffer is far off."""
    if exact:
        assert torch.equal(a, b)
    else:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _case_id(c: tuple) -> str:
    tier, T, B, H, dtype, reverse, varlen, act = c
    return (f"{tier}-T{T}-B{B}-H{H}-{str(dtype).replace('torch.', '')}-{'rev' if reverse else 'fwd'}"
            f"-{'len' if varlen else 'full'}-{act}")


def _full_matrix() -> list[tuple]:
    """Every tier × H × B × T; dtype, direction, lengths and activation cycle deterministically over the cases.

    Cases with T·B·H > 2^26 are left out: an fp64 oracle of that size alone is > 0.5 GB and the per-step
    reference loop would dominate the run (they test nothing a smaller T or B does not).
    """
    cases = []
    for i, (tier, H, B, T) in enumerate(itertools.product(TIERS, (1, 17, 100, 500, 1000, 2048, 4100),
                                                          (1, 3, 64, 257), (1, 7, 1025))):
        if T * B * H > 2**26:
            continue
        dtype = DTYPES[i % 4]
        cases.append((tier, T, B, H, dtype, bool(i // 4 % 2), bool(i // 8 % 2), ("tanh", "relu")[i // 16 % 2]))
    return cases


def _full_expect(tier: str, H: int, dtype: torch.dtype) -> str | None:
    """The tier a full-matrix case must run on the H200 class: the forced tier where it surely fits, `fallback` where it
    surely cannot (fp64 in the persistent tiers; w_hh beyond 227 KB for batch_tiled), None in between (then the
    tier or `fallback` with a reason is accepted)."""
    if tier == "fallback":
        return "fallback"
    if tier in ("persistent", "cluster"):
        return "fallback" if dtype == torch.float64 else (tier if H <= 500 else None)
    return tier if H <= 100 else ("fallback" if H >= 500 else None)


def _check_full(case: tuple) -> None:
    tier, T, B, H, dtype = case[:5]
    expect = _full_expect(tier, H, dtype)
    if expect is not None:
        _check_tier(*case, expect=expect)
        return
    with tier_log.record() as runs:
        _check_tier(*case, expect="")
    assert {r.ran for r in runs} <= {tier, "fallback"} and all(r.why for r in runs if r.ran != tier), runs


# The gpu_quick subset: each tier and dtype once at awkward small sizes, the B=1 long-T case users care about, a
# forced tier beyond its limits (batch_tiled at H=1000 / 4100, persistent and cluster while they report "cannot
# run"), and a B=257 tile edge. The last field is the tier the record must show (on the H200 class).
QUICK = [
    ("batch_tiled", 7, 3, 17, torch.float32, False, True, "tanh", "batch_tiled"),
    ("batch_tiled", 63, 5, 100, torch.float64, True, True, "relu", "batch_tiled"),
    ("batch_tiled", 33, 257, 100, torch.float16, True, True, "tanh", "batch_tiled"),
    ("batch_tiled", 1025, 1, 224, torch.float32, False, False, "tanh", "batch_tiled"),
    ("batch_tiled", 63, 3, 320, torch.bfloat16, True, True, "tanh", "batch_tiled"),
    ("batch_tiled", 9, 2, 1, torch.float32, True, False, "relu", "batch_tiled"),
    ("batch_tiled", 7, 3, 1000, torch.float32, False, True, "tanh", "fallback"),  # w_hh > 227 KB
    ("fallback", 7, 3, 17, torch.float16, True, True, "relu", "fallback"),
    ("fallback", 63, 64, 500, torch.float32, True, True, "tanh", "fallback"),
    ("fallback", 33, 3, 4100, torch.bfloat16, False, True, "tanh", "fallback"),
    ("fallback", 1, 1, 1, torch.float64, False, False, "tanh", "fallback"),
    ("persistent", 15, 3, 100, torch.float32, True, True, "tanh", "persistent"),
    ("cluster", 15, 3, 2048, torch.bfloat16, False, True, "relu", "fallback"),  # 128 bf16 rows of H=2048: 512 KB/CTA
]


def _quick_param(c: tuple):
    # batch_tiled has not run on a GPU; fallback's fp16/bf16 forward is new code (the 16-bit GEMM of issue #21)
    new = c[0] == "fallback" and c[4] in (torch.float16, torch.bfloat16)
    return pytest.param(c, marks=unverified_mark("cuda", c[0], new_code=new), id=_case_id(c[:8]))


@needs_gpu
@pytest.mark.gpu
@pytest.mark.gpu_quick
@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", [_quick_param(c) for c in QUICK])
def test_tier_quick(case: tuple) -> None:
    _check_tier(*case[:8], expect=case[8])


@needs_gpu
@pytest.mark.gpu
@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", _full_matrix(), ids=_case_id)
def test_tier_full(case: tuple) -> None:
    _check_full(case)


@needs_gpu
@pytest.mark.gpu
@pytest.mark.gpu_quick
@pytest.mark.timeout(60)
@pytest.mark.parametrize("tier", [pytest.param(t, marks=unverified_mark("cuda", t, new_code=True), id=t)
                                  for t in TIERS])
def test_relu_dead_unit_blocks_nonfinite_gradient_on_gpu(tier: str) -> None:
    """relu backward as torch's select (h <= 0 ? 0 : g; 2026-12-02, new code in every tier): inf / NaN in dY at a
    dead unit gives dA = 0 there, as the reference and nn.RNN give (tests/test_relu_backward.py)."""
    Y, w, dY, dhn, dead = dead_unit_case(5, 4, 24)
    with expect_ran(tier):
        dA, dh0 = cuda_backend.backward(dY.cuda(), dhn.cuda(), Y.cuda(), w.cuda(), None, False, "relu", tier, False)
    dA, dh0 = dA.cpu(), dh0.cpu()
    rA, rh0 = ref.backward(dY, dhn, Y, w, None, False, "relu")
    assert torch.equal(dA[dead], torch.zeros_like(dA[dead])) and torch.isfinite(dA).all() and torch.isfinite(dh0).all()
    torch.testing.assert_close(dA, rA, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dh0, rh0, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Module, determinism, streams, graphs, errors
# ---------------------------------------------------------------------------------------------------------------

SMALL_TIERS = [pytest.param(t, marks=unverified_mark("cuda", t), id=t) for t in ("batch_tiled", "fallback")]


@needs_gpu
@pytest.mark.gpu
@pytest.mark.gpu_quick
@pytest.mark.timeout(60)
@pytest.mark.parametrize("tier", SMALL_TIERS)
def test_module_vs_nn_rnn(tier: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """fused_rnn.RNN(backend="cuda") with FUSED_RNN_CUDA_TIER forced, fp64 on the GPU, vs torch.nn.RNN fp64 on the
    CPU with the same state_dict: output, h_n and the gradients of input, h0 and every parameter."""
    monkeypatch.setenv("FUSED_RNN_CUDA_TIER", tier)
    torch.manual_seed(0)
    T, B, n_in, H = 11, 5, 7, 33
    ours = fused_rnn.RNN(n_in, H, num_layers=2, bidirectional=True, backend="cuda").double().cuda()
    theirs = torch.nn.RNN(n_in, H, num_layers=2, bidirectional=True).double()
    theirs.load_state_dict({k: v.cpu() for k, v in ours.state_dict().items()})
    x = torch.randn(T, B, n_in, dtype=torch.float64)
    h0 = torch.randn(4, B, H, dtype=torch.float64)
    lengths = torch.tensor([11, 9, 9, 4, 1])
    xg, h0g = x.cuda().requires_grad_(), h0.cuda().requires_grad_()
    xc, h0c = x.clone().requires_grad_(), h0.clone().requires_grad_()
    pk = torch.nn.utils.rnn.pack_padded_sequence
    with expect_ran(tier):
        out, hn = ours(pk(xg, lengths, enforce_sorted=True), h0g)
    out_ref, hn_ref = theirs(pk(xc, lengths, enforce_sorted=True), h0c)
    torch.testing.assert_close(out.data.cpu(), out_ref.data, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(hn.cpu(), hn_ref, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(out_ref.data)
    gh = torch.randn_like(hn_ref)
    with expect_ran(tier):
        ((out.data * g.cuda()).sum() + (hn * gh.cuda()).sum()).backward()
    ((out_ref.data * g).sum() + (hn_ref * gh).sum()).backward()
    torch.testing.assert_close(xg.grad.cpu(), xc.grad, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(h0g.grad.cpu(), h0c.grad, rtol=1e-9, atol=1e-10)
    for (name, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters()):
        torch.testing.assert_close(p.grad.cpu(), q.grad, rtol=1e-9, atol=1e-10, msg=lambda m, n=name: f"{n}: {m}")


@needs_gpu
@pytest.mark.gpu
@pytest.mark.gpu_quick
@pytest.mark.timeout(60)
@pytest.mark.parametrize(("tier", "dtype"), [
    pytest.param(t, d, marks=unverified_mark("cuda", t, new_code=t == "fallback" and d == torch.bfloat16),
                 id=f"{t}-{str(d).removeprefix('torch.')}")
    for t in ("batch_tiled", "fallback") for d in (torch.float32, torch.bfloat16)])
def test_repeated_runs_bitwise_equal(tier: str, dtype: torch.dtype) -> None:
    P, h0, w, dY, dhn, lengths = _inputs(129, 7, 96, dtype, 3, True, torch.device("cuda"))
    with expect_ran(tier):
        outs = [torch.ops.fused_rnn.elman_fwd(P, h0, w, lengths, True, "tanh", tier, False) for _ in range(3)]
        grads = [torch.ops.fused_rnn.elman_bwd(dY, dhn, outs[0][0], w, lengths, True, "tanh", tier, False)
                 for _ in range(3)]
    for o in outs[1:]:
        assert torch.equal(o[0], outs[0][0]) and torch.equal(o[1], outs[0][1])
    for gr in grads[1:]:
        assert torch.equal(gr[0], grads[0][0]) and torch.equal(gr[1], grads[0][1])


@needs_gpu
@pytest.mark.gpu
@pytest.mark.gpu_quick
@pytest.mark.timeout(60)
@pytest.mark.parametrize("tier", SMALL_TIERS)
def test_non_default_stream(tier: str) -> None:
    """The kernels run on the current stream: a side stream gives the default stream's result bitwise."""
    dev = torch.device("cuda")
    P, h0, w, dY, dhn, lengths = _inputs(257, 3, 64, torch.float32, 4, True, dev)
    with expect_ran(tier):
        Y0, hn0 = torch.ops.fused_rnn.elman_fwd(P, h0, w, lengths, False, "tanh", tier, False)
        dA0, dh00 = torch.ops.fused_rnn.elman_bwd(dY, dhn, Y0, w, lengths, False, "tanh", tier, False)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            Y1, hn1 = torch.ops.fused_rnn.elman_fwd(P, h0, w, lengths, False, "tanh", tier, False)
            dA1, dh01 = torch.ops.fused_rnn.elman_bwd(dY, dhn, Y1, w, lengths, False, "tanh", tier, False)
        torch.cuda.current_stream().wait_stream(s)
    for a, b in ((Y0, Y1), (hn0, hn1), (dA0, dA1), (dh00, dh01)):
        _same(a, b, exact=tier == "batch_tiled")


@needs_gpu
@pytest.mark.gpu
@pytest.mark.gpu_quick
@pytest.mark.timeout(60)
@pytest.mark.parametrize(("tier", "dtype"), [
    pytest.param("batch_tiled", torch.float32, marks=unverified_mark("cuda", "batch_tiled"), id="batch_tiled-float32"),
    pytest.param("fallback", torch.float32, marks=unverified_mark("cuda", "fallback"), id="fallback-float32"),
    # the 16-bit GEMM of fallback's forward (issue #21): no allocation per step, so it captures
    pytest.param("fallback", torch.bfloat16, marks=unverified_mark("cuda", "fallback", new_code=True),
                 id="fallback-bfloat16"),
    pytest.param("fallback", torch.float16, marks=unverified_mark("cuda", "fallback", new_code=True),
                 id="fallback-float16"),
])
def test_cuda_graph_forward_backward(tier: str, dtype: torch.dtype) -> None:
    """Capture forward + backward (through the autograd Function) in a CUDA graph; replays with new input data
    match eager runs on that data."""
    dev = torch.device("cuda")
    T, B, H = 17, 3, 40
    P, h0, w, dY, dhn, lengths = _inputs(T, B, H, dtype, 5, True, dev)
    sP, sh0, sw = (t.clone().requires_grad_() for t in (P, h0, w))

    def step() -> tuple[torch.Tensor, ...]:
        Y, hn = fused_rnn.recurrence(sP, sh0, sw, lengths, True, "tanh", "cuda", tier, False)
        loss = (Y * dY).sum() + (hn * dhn).sum()
        return (Y, hn) + torch.autograd.grad(loss, (sP, sh0, sw))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with expect_ran(tier):
        with torch.cuda.stream(side):  # warm-up outside capture, as torch.cuda.graphs requires
            for _ in range(2):
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = step()
    for seed in (6, 7):
        nP, nh0, nw, *_ = _inputs(T, B, H, dtype, seed, False, dev)
        with torch.no_grad():
            sP.copy_(nP)
            sh0.copy_(nh0)
            sw.copy_(nw)
        graph.replay()
        eager = step()
        for a, b in zip(static_out, eager):
            _same(a, b, exact=tier == "batch_tiled")


@needs_gpu
@pytest.mark.gpu
@pytest.mark.gpu_quick
@pytest.mark.timeout(60)
@pytest.mark.parametrize("tier", SMALL_TIERS)
def test_lengths_out_of_range_are_clamped(tier: str) -> None:
    """lengths outside [1, T] never read or write out of bounds: a length > T behaves as T."""
    dev = torch.device("cuda")
    P, h0, w, dY, dhn, _ = _inputs(9, 4, 20, torch.float32, 8, False, dev)
    big = torch.tensor([9, 50, 2**40, 3], device=dev)
    clamped = big.clamp(max=9)
    with expect_ran(tier):
        Y, hn = torch.ops.fused_rnn.elman_fwd(P, h0, w, big, True, "tanh", tier, False)
        Yc, hnc = torch.ops.fused_rnn.elman_fwd(P, h0, w, clamped, True, "tanh", tier, False)
    assert torch.equal(Y, Yc) and torch.equal(hn, hnc)


@needs_gpu
@pytest.mark.gpu
@pytest.mark.gpu_quick
@pytest.mark.timeout(60)
def test_bad_inputs_raise_clear_errors() -> None:
    dev = torch.device("cuda")
    P, h0, w, dY, dhn, _ = _inputs(5, 2, 8, torch.float32, 9, False, dev)
    fwd, bwd = torch.ops.fused_rnn.elman_fwd, torch.ops.fused_rnn.elman_bwd
    with pytest.raises(RuntimeError, match="unknown tier"):
        fwd(P, h0, w, None, False, "tanh", "bogus", False)
    with pytest.raises(RuntimeError, match="unknown tier"):
        bwd(dY, dhn, P, w, None, False, "tanh", "bogus", False)
    with pytest.raises(RuntimeError, match="nonlinearity"):
        fwd(P, h0, w, None, False, "gelu", "fallback", False)
    with pytest.raises(RuntimeError, match="lengths must be on"):
        fwd(P, h0, w, torch.tensor([5, 3]), False, "tanh", "batch_tiled", False)
    with pytest.raises(RuntimeError, match="w_hh must be"):
        fwd(P, h0, w[:, :7], None, False, "tanh", "batch_tiled", False)
    with pytest.raises(RuntimeError, match="one dtype"):
        fwd(P, h0.double(), w, None, False, "tanh", "batch_tiled", False)
    with pytest.raises(RuntimeError, match="dtype must be"):
        fwd(P.int(), h0.int(), w.int(), None, False, "tanh", "batch_tiled", False)


@needs_gpu
@pytest.mark.gpu
@pytest.mark.timeout(120)
def test_env_tier_reaches_the_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    """FUSED_RNN_CUDA_TIER forces each tier through the selection layer (the module test runs two of them)."""
    for tier in TIERS:
        monkeypatch.setenv("FUSED_RNN_CUDA_TIER", tier)
        assert select.resolve("cuda", torch.device("cuda"), 64, 2, torch.float32).tier == tier



@needs_gpu
@pytest.mark.gpu
@pytest.mark.gpu_quick
@pytest.mark.timeout(60)
@pytest.mark.parametrize("H", [17, 100, 352])
def test_direct_call_with_empty_tier_runs_a_verified_tier(H: int) -> None:
    """Issue #21: torch.ops.fused_rnn.elman_fwd(..., tier="") at H <= 352 must not reach an unverified tier (it ran
    batch_tiled, which has never run on a GPU). The record shows the tier that ran and, for fallback, why."""
    dev = torch.device("cuda")
    cc = torch.cuda.get_device_capability(dev)
    want = "batch_tiled" if verified.is_verified("cuda", "batch_tiled", cc) else "fallback"
    P, h0, w, dY, dhn, lengths = _inputs(9, 3, H, torch.float32, 21, True, dev)
    with tier_log.record() as runs:
        Y, hn = torch.ops.fused_rnn.elman_fwd(P, h0, w, lengths, False, "tanh", "", False)
        torch.ops.fused_rnn.elman_bwd(dY, dhn, Y, w, lengths, False, "tanh", "", False)
    check_ran(runs, want)
    assert all(r.requested == "" for r in runs)
    if want == "fallback":
        assert all("not on the GPU-verified list" in r.why for r in runs), runs
    Yr, hnr = ref.forward(P, h0, w, lengths, False, "tanh")
    _judge("Y", Y, Yr, ref.forward(P.double(), h0.double(), w.double(), lengths, False, "tanh")[0], torch.float32)


@needs_gpu
@pytest.mark.gpu
@pytest.mark.gpu_quick
@pytest.mark.gpu_unverified
@pytest.mark.timeout(60)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_fallback_half_runs_the_16_bit_gemm_without_per_step_allocation(dtype: torch.dtype) -> None:
    """fallback's fp16/bf16 forward: the record names the 16-bit GEMM; the number of allocations does not grow with
    T (none per step: CUDA-graph capturable, test_cuda_graph_forward_backward captures it); results within the
    tolerance rule (test_tier_quick's fallback cases)."""
    dev = torch.device("cuda")
    counts = []
    for T in (2, 4, 64):  # the first call may allocate cuBLAS's workspace for this stream: not counted
        P, h0, w, dY, dhn, lengths = _inputs(T, 5, 96, dtype, 22, True, dev)
        torch.cuda.synchronize()
        before = torch.cuda.memory_stats(dev).get("allocation.all.allocated", 0)
        with tier_log.record() as runs:
            Y, hn = torch.ops.fused_rnn.elman_fwd(P, h0, w, lengths, False, "tanh", "fallback", False)
            torch.ops.fused_rnn.elman_bwd(dY, dhn, Y, w, lengths, False, "tanh", "fallback", False)
        torch.cuda.synchronize()
        counts.append(torch.cuda.memory_stats(dev).get("allocation.all.allocated", 0) - before)
        check_ran(runs, "fallback")
        name = "bf16" if dtype == torch.bfloat16 else "fp16"
        assert runs[0].detail == f"gemm={name}x{name}->fp32 cublasGemmEx CUBLAS_COMPUTE_32F", runs[0]
        assert "fp32 carry" in runs[1].detail, runs[1]
    assert counts[1] == counts[2], f"allocations grew with T: {counts}"


@needs_gpu
@pytest.mark.gpu
@pytest.mark.gpu_quick
@pytest.mark.gpu_unverified
@pytest.mark.timeout(60)
@pytest.mark.parametrize("B", [1, 16, 64, 256])
def test_cluster_plan_on_this_gpu(B: int) -> None:
    """The cluster tier's plan comes from the runtime's occupancy answer (issue #21): the record shows the plan it
    launched -- cluster size, batch tile, tiles, co-resident clusters, waves -- and it is consistent, one wave where
    the answer allows it. The numbers are printed for the GPU report (on the H200: how many 16-CTA clusters fit)."""
    dev = torch.device("cuda")
    P, h0, w, dY, dhn, lengths = _inputs(3, B, 1024, torch.bfloat16, 23, True, dev)
    with expect_ran("cluster") as runs:
        Y, hn = torch.ops.fused_rnn.elman_fwd(P, h0, w, lengths, False, "tanh", "cluster", False)
        torch.ops.fused_rnn.elman_bwd(dY, dhn, Y, w, lengths, False, "tanh", "cluster", False)
    for r in runs:
        print(f"B={B} H=1024 bf16 {r.op}: {r.detail}")
        plan = dict(kv.split("=") for kv in r.detail.split())
        c, bt, tiles, active, waves = (int(plan[k]) for k in ("cluster", "bt", "tiles", "active", "waves"))
        assert tiles == math.ceil(B / bt) and waves == math.ceil(tiles / active) and active >= 1
        if bt < 8 and B > 1:
            assert waves == 1, r  # a smaller tile is taken only when it still fits in one wave
        if c == 16 and B == 16:
            assert waves == 1, r
