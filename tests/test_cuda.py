"""The CUDA C++ backend (csrc/cuda/): every tier against the reference backend, under the tolerance rule.

Without a GPU only the build checks run (the ops have CUDA kernels, the tiers are listed, the heuristic is sane).
With one, each tier is forced in turn through the op's `tier` argument (and once through FUSED_RNN_CUDA_TIER) and
compared with `reference` on the same inputs:
    error(backend in dtype X vs the fp64 oracle) <= 2 * error(reference in dtype X vs the oracle) + floor[X]
with the oracle = the reference backend run in fp64 on the same (dtype-rounded) inputs. `pytest -m gpu_quick` is the
small subset `make gpu-check` runs (well under 40 s on an H100); `pytest -m gpu` is the full matrix.
Shapes: T time, B batch, H hidden.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import shutil
import subprocess
import sys

import pytest
import torch
from cuda_common import FLOOR, needs_cuda_build, needs_gpu  # tests/cuda_common.py

import fused_rnn
from fused_rnn.backends import cuda as cuda_backend
from fused_rnn.backends import cuda_heuristic, select
from fused_rnn.backends import reference as ref

TIERS = ("batch_tiled", "persistent", "cluster", "fallback")
FORCED_ONLY_TIERS = ("cluster2",)  # tested in tests/test_cluster2.py, its own stage of make gpu-check
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
    P [T,B,H], h0 [B,H], w [H,H], L [B] | None -> Y [T,B,H], h_n [B,H]; outputs start as NaN."""
    T, B, H = P.shape
    acc = torch.float64 if P.dtype == torch.float64 else torch.float32
    Y, hn = torch.full_like(P, float("nan")), torch.full_like(h0, float("nan"))
    S, W = h0.to(acc).clone(), w.to(acc)
    G = torch.empty_like(S)
    args = (_ptr(P), _ptr(h0), _ptr(w), _ptr(L), _ptr(Y), _ptr(hn), T, B, H, int(rev), act)
    for s in range(T):
        torch.mm(S, W.t(), out=G)
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


def _check_tier(tier: str, T: int, B: int, H: int, dtype: torch.dtype, reverse: bool, varlen: bool, act: str,
                seed: int = 0) -> None:
    """Forward and backward of the op forced to `tier` vs the reference in dtype and in fp64."""
    dev = torch.device("cuda")
    P, h0, w, dY, dhn, lengths = _inputs(T, B, H, dtype, seed, varlen, dev)
    _poison_cache(4 * T * B * H + 4 * B * H, dev)
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


# The gpu_quick subset: each tier and dtype once at awkward small sizes, the B=1 long-T case users care about, a
# forced tier beyond its limits (batch_tiled at H=1000 / 4100, persistent and cluster while they report "cannot
# run"), and a B=257 tile edge.
QUICK = [
    ("batch_tiled", 7, 3, 17, torch.float32, False, True, "tanh"),
    ("batch_tiled", 63, 5, 100, torch.float64, True, True, "relu"),
    ("batch_tiled", 33, 257, 100, torch.float16, True, True, "tanh"),
    ("batch_tiled", 1025, 1, 224, torch.float32, False, False, "tanh"),
    ("batch_tiled", 63, 3, 320, torch.bfloat16, True, True, "tanh"),
    ("batch_tiled", 9, 2, 1, torch.float32, True, False, "relu"),
    ("batch_tiled", 7, 3, 1000, torch.float32, False, True, "tanh"),
    ("fallback", 7, 3, 17, torch.float16, True, True, "relu"),
    ("fallback", 63, 64, 500, torch.float32, True, True, "tanh"),
    ("fallback", 33, 3, 4100, torch.bfloat16, False, True, "tanh"),
    ("fallback", 1, 1, 1, torch.float64, False, False, "tanh"),
    ("persistent", 15, 3, 100, torch.float32, True, True, "tanh"),
    ("cluster", 15, 3, 2048, torch.bfloat16, False, True, "relu"),
]


@needs_gpu
@pytest.mark.gpu
@pytest.mark.gpu_quick
@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", QUICK, ids=_case_id)
def test_tier_quick(case: tuple) -> None:
    _check_tier(*case)


@needs_gpu
@pytest.mark.gpu
@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", _full_matrix(), ids=_case_id)
def test_tier_full(case: tuple) -> None:
    _check_tier(*case)


# ---------------------------------------------------------------------------------------------------------------
# Module, determinism, streams, graphs, errors
# ---------------------------------------------------------------------------------------------------------------


@needs_gpu
@pytest.mark.gpu
@pytest.mark.gpu_quick
@pytest.mark.timeout(60)
@pytest.mark.parametrize("tier", ["batch_tiled", "fallback"])
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
    out, hn = ours(pk(xg, lengths, enforce_sorted=True), h0g)
    out_ref, hn_ref = theirs(pk(xc, lengths, enforce_sorted=True), h0c)
    torch.testing.assert_close(out.data.cpu(), out_ref.data, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(hn.cpu(), hn_ref, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(out_ref.data)
    gh = torch.randn_like(hn_ref)
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
@pytest.mark.parametrize("tier", ["batch_tiled", "fallback"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_repeated_runs_bitwise_equal(tier: str, dtype: torch.dtype) -> None:
    P, h0, w, dY, dhn, lengths = _inputs(129, 7, 96, dtype, 3, True, torch.device("cuda"))
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
@pytest.mark.parametrize("tier", ["batch_tiled", "fallback"])
def test_non_default_stream(tier: str) -> None:
    """The kernels run on the current stream: a side stream gives the default stream's result bitwise."""
    dev = torch.device("cuda")
    P, h0, w, dY, dhn, lengths = _inputs(257, 3, 64, torch.float32, 4, True, dev)
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
@pytest.mark.parametrize("tier", ["batch_tiled", "fallback"])
def test_cuda_graph_forward_backward(tier: str) -> None:
    """Capture forward + backward (through the autograd Function) in a CUDA graph; replays with new input data
    match eager runs on that data."""
    dev = torch.device("cuda")
    T, B, H = 17, 3, 40
    P, h0, w, dY, dhn, lengths = _inputs(T, B, H, torch.float32, 5, True, dev)
    sP, sh0, sw = (t.clone().requires_grad_() for t in (P, h0, w))

    def step() -> tuple[torch.Tensor, ...]:
        Y, hn = fused_rnn.recurrence(sP, sh0, sw, lengths, True, "tanh", "cuda", tier, False)
        loss = (Y * dY).sum() + (hn * dhn).sum()
        return (Y, hn) + torch.autograd.grad(loss, (sP, sh0, sw))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside capture, as torch.cuda.graphs requires
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = step()
    for seed in (6, 7):
        nP, nh0, nw, *_ = _inputs(T, B, H, torch.float32, seed, False, dev)
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
def test_lengths_out_of_range_are_clamped() -> None:
    """lengths outside [1, T] never read or write out of bounds: a length > T behaves as T."""
    dev = torch.device("cuda")
    P, h0, w, dY, dhn, _ = _inputs(9, 4, 20, torch.float32, 8, False, dev)
    big = torch.tensor([9, 50, 2**40, 3], device=dev)
    clamped = big.clamp(max=9)
    for tier in ("batch_tiled", "fallback"):
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
