"""The triton backend: interpreter parity on CPU (CI) and the GPU checks (marked ``gpu``; ``gpu_quick`` subset).

* ``test_interpreter_parity`` runs tests/triton_interp_cases.py in a subprocess with ``TRITON_INTERPRET=1`` set before
  triton is imported (``@triton.jit`` reads it when applied): resident and per_step vs the reference (fp32/fp64, odd
  sizes, lengths, reverse, non-zero h0, tanh/relu, forward and backward), gradcheck, the module vs torch.nn.RNN.
* ``cooperative`` refuses torch.compile (its grid barrier is safe only under triton's cooperative launch, which
  nothing shows reaching torch.compile's generated launch): forced, compiling raises; ``pick_tier`` never picks it
  while tracing. Checked on the CPU (the op's fake implementation and Dynamo need no GPU).
* The GPU tests run the compiled kernels in this process: each tier forced vs the reference in every dtype (bf16,
  fp16, fp32 IEEE and TF32, fp64) under the tolerance rule of docs/design.md, the module vs torch.nn.RNN, bitwise
  repeatability, a non-default stream and CUDA-graph capture of forward + backward. Each asserts, through the tier
  record (fused_rnn.backends.tier_log), that the tier under test is what launched. No Triton tier has run on a GPU
  yet, so all of them are marked gpu_unverified (the last part of `make gpu-check`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from contextlib import contextmanager

import pytest
import torch
from cuda_common import expect_ran, unverified_mark  # tests/cuda_common.py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"

gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
compiled_mode = pytest.mark.skipif(INTERPRETING, reason="this process runs triton in interpreter mode")


# ----------------------------------------------------------------------------------------------------------------------
# CPU / CI
# ----------------------------------------------------------------------------------------------------------------------


# The interpreter cases in tests/triton_interp_cases.py, counted by hand (a dropped parametrize line or a new skip
# must show): backend parity 2 tiers x 2 dtypes x 6 shapes = 24, low precision 2 x 2 x 2 = 8, bf16 rounding 2,
# per_step K chunks 1, resident over its limit 1, cooperative unavailable 1, cooperative kernels 3, available 1, bad
# input 1, gradcheck 3, module vs nn.RNN 2 x 2 x 4 = 16, torch.compile 1, opcheck 1, wrap_triton 2, empty batch 1,
# tier record 1, relu dead units 2.
INTERPRETER_CASES = 69


@pytest.mark.slow  # ~45 s on 2 cores; `-m "not slow"` leaves it to the full CI run
@pytest.mark.timeout(400)
def test_interpreter_parity(tmp_path) -> None:
    """tests/triton_interp_cases.py under TRITON_INTERPRET=1 in its own process: exactly INTERPRETER_CASES cases
    run and pass, none skipped (about 45 s on 2 cores)."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    env.pop("FUSED_RNN_TRITON_TIER", None)
    env.pop("FUSED_RNN_BACKEND", None)
    report = tmp_path / "interp.xml"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                           f"--junitxml={report}", os.path.join("tests", "triton_interp_cases.py")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=380)
    assert proc.returncode == 0, f"interpreter cases failed:\n{proc.stdout[-8000:]}\n{proc.stderr[-3000:]}"
    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, "0")) for k in ("tests", "failures", "errors", "skipped")}
    assert counts == {"tests": INTERPRETER_CASES, "failures": 0, "errors": 0, "skipped": 0}, (
        f"{counts}\n{proc.stdout[-3000:]}")


@compiled_mode
def test_not_available_on_cpu_without_interpreter() -> None:
    from fused_rnn.backends import triton as TB

    assert not TB.supports_device(torch.device("cpu"))
    ok, why = TB.available()
    if torch.cuda.is_available():
        assert ok
    else:
        assert not ok and ("CUDA" in why or "triton" in why)


def test_auto_never_selects_triton_on_cpu(monkeypatch) -> None:
    from fused_rnn.backends.select import resolve

    monkeypatch.delenv("FUSED_RNN_BACKEND", raising=False)
    assert resolve("auto", torch.device("cpu"), 64, 4, torch.float32).backend != "triton"


@compiled_mode
@needs_cuda
def test_cooperative_exists_on_this_triton() -> None:
    """triton 3.6-3.8 have launch_cooperative_grid; if a triton lacks it the tier must say so, not emulate it."""
    from fused_rnn.backends import triton as TB

    ok, why = TB.cooperative_available()
    assert ok == TB._has_cooperative_launch(), why


@compiled_mode
@pytest.mark.parametrize("op", ["elman_fwd", "elman_bwd"])
def test_cooperative_refuses_torch_compile(op: str) -> None:
    """Forced 'cooperative' under torch.compile raises a clear error at trace time (the op's fake implementation runs
    only while tracing), instead of compiling a launch that may lack the cooperative option. No GPU needed."""
    pytest.importorskip("triton")
    from fused_rnn.backends import triton as TB

    if TB.K is None:
        pytest.skip(f"triton backend not importable: {TB._IMPORT_ERROR}")
    T, B, H = 3, 2, 8
    x = [torch.randn(T, B, H), torch.randn(B, H), torch.randn(H, H)]
    if op == "elman_fwd":
        def f(P, h0, w):
            return torch.ops.fused_rnn_triton.elman_fwd(P, h0, w, None, False, "tanh", "cooperative", False)
    else:
        x = [torch.randn(T, B, H), torch.randn(B, H), torch.randn(T, B, H), torch.randn(H, H)]

        def f(dY, dhn, Y, w):
            return torch.ops.fused_rnn_triton.elman_bwd(dY, dhn, Y, w, None, False, "tanh", "cooperative", False)
    torch._dynamo.reset()
    with pytest.raises(Exception, match="cannot run under torch.compile"):
        torch.compile(f, backend="eager", fullgraph=True)(*x)
    torch._dynamo.reset()


@compiled_mode
def test_pick_tier_never_cooperative_while_compiling(monkeypatch: pytest.MonkeyPatch) -> None:
    """`auto` / backend="triton" go through pick_tier: in eager mode it picks cooperative where the grid fits (made
    true here by patching the device queries), under torch.compile it never does; effective_tier refuses a forced
    cooperative while tracing."""
    pytest.importorskip("triton")
    from fused_rnn.backends import triton as TB

    if TB.K is None:
        pytest.skip(f"triton backend not importable: {TB._IMPORT_ERROR}")
    monkeypatch.setattr(TB, "cooperative_available", lambda: (True, ""))
    monkeypatch.setattr(TB, "_coop_blocks", lambda H, B, device: (16, 4))
    dev = torch.device("cuda")  # a device object only; nothing runs on it
    assert TB.pick_tier(4096, 16, torch.float32, dev) == "cooperative"

    def f(x: torch.Tensor) -> torch.Tensor:
        return x + (1.0 if TB.pick_tier(4096, 16, torch.float32, dev) == "cooperative" else 2.0)

    torch._dynamo.reset()
    out = torch.compile(f, backend="eager", fullgraph=True)(torch.zeros(3))
    torch._dynamo.reset()
    assert torch.equal(out, torch.full((3,), 2.0)), "pick_tier chose cooperative while torch.compile traced"
    with pytest.raises(RuntimeError, match="cannot run under torch.compile"):
        TB.effective_tier("cooperative", 4096, 16, torch.float32, dev, tracing=True)
    assert TB.effective_tier("cooperative", 4096, 16, torch.float32, dev, tracing=False) == "cooperative"


# ----------------------------------------------------------------------------------------------------------------------
# GPU
# ----------------------------------------------------------------------------------------------------------------------

DTYPE_CASES = {  # id -> (storage dtype, allow_tf32)
    "fp32": (torch.float32, False),
    "tf32": (torch.float32, True),
    "fp16": (torch.float16, False),
    "bf16": (torch.bfloat16, False),
    "fp64": (torch.float64, False),
}
# (T, B, H) per tier at which the tier really runs (checked with effective_tier in each test)
TIER_SHAPES = {
    "resident": [(17, 5, 48), (9, 33, 64)],
    "cooperative": [(11, 20, 150), (5, 3, 1000)],
    "per_step": [(13, 70, 130), (3, 1, 17)],
}


@contextmanager
def _torch_tf32(enabled: bool):
    """The reference's own fp32 matmuls in TF32 (or IEEE) for the 'reference error in this dtype' baseline."""
    m = torch.backends.cuda.matmul
    old = m.allow_tf32
    m.allow_tf32 = enabled
    try:
        yield
    finally:
        m.allow_tf32 = old


def _inputs(T: int, B: int, H: int, lengths: bool, seed: int, device: str = "cuda") -> dict:
    """fp64 inputs on ``device``: P [T,B,H], h0 [B,H], w [H,H] (spectral radius ~0.8), L [B] | None, dY, dhn."""
    g = torch.Generator().manual_seed(seed)
    d = dict(
        P=torch.randn(T, B, H, generator=g, dtype=torch.float64),
        h0=0.5 * torch.randn(B, H, generator=g, dtype=torch.float64),
        w=0.8 * torch.randn(H, H, generator=g, dtype=torch.float64) / H**0.5,
        dY=torch.randn(T, B, H, generator=g, dtype=torch.float64),
        dhn=torch.randn(B, H, generator=g, dtype=torch.float64),
    )
    d = {k: v.to(device) for k, v in d.items()}
    d["L"] = None
    if lengths:
        L = torch.randint(1, T + 1, (B,), generator=g)
        L[0] = T
        L[-1] = 1
        d["L"] = L.to(device)
    return d


def _run(mod, d: dict, dtype: torch.dtype, reverse: bool, nl: str, tier: str, tf32: bool) -> list[torch.Tensor]:
    P, h0, w, dY, dhn = (d[k].to(dtype) for k in ("P", "h0", "w", "dY", "dhn"))
    Y, hn = mod.forward(P, h0, w, d["L"], reverse, nl, tier, tf32)
    dA, dh0 = mod.backward(dY, dhn, Y, w, d["L"], reverse, nl, tier, tf32)
    return [Y, hn, dA, dh0]


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def _floor(dtype: torch.dtype, tf32: bool, scale: float) -> float:
    """The small absolute floor of the tolerance rule: a few units of the dtype's (or TF32's) epsilon at this scale."""
    eps = 2.0**-10 if tf32 else torch.finfo(dtype).eps
    return 4 * eps * max(1.0, scale)


def _check_tier(tier: str, dtype_id: str, T: int, B: int, H: int, reverse: bool, nl: str, lengths: bool) -> None:
    from fused_rnn.backends import reference as R
    from fused_rnn.backends import triton as TB

    dtype, tf32 = DTYPE_CASES[dtype_id]
    dev = torch.device("cuda")
    assert TB.effective_tier(tier, H, B, dtype, dev, tf32) == tier, "the test shape must run the tier under test"
    d = _inputs(T, B, H, lengths, seed=T * 7919 + B * 31 + H)
    oracle = _run(R, d, torch.float64, reverse, nl, "", False)
    with expect_ran(tier, backend="triton"):
        got = _run(TB, d, dtype, reverse, nl, tier, tf32)
    torch.cuda.synchronize()
    names = ("Y", "h_n", "dA", "dh0")
    if dtype == torch.float64:
        for name, a, o in zip(names, got, oracle):
            assert _err(a, o) <= 1e-10, f"{name}: {_err(a, o):.3e}"
    else:
        with _torch_tf32(tf32):
            own = _run(R, d, dtype, reverse, nl, "", tf32)
        for name, a, r, o in zip(names, got, own, oracle):
            bound = 2 * _err(r, o) + _floor(dtype, tf32, o.abs().max().item())
            print(f"{tier} {dtype_id} {name}: err {_err(a, o):.3e} (reference {_err(r, o):.3e}, bound {bound:.3e})")
            assert _err(a, o) <= bound, f"{name}: err {_err(a, o):.3e} > bound {bound:.3e}"
    if d["L"] is not None:
        pad = torch.arange(T, device=dev).unsqueeze(1) >= d["L"].unsqueeze(0)
        assert torch.all(got[0][pad] == 0) and torch.all(got[2][pad] == 0)


def _tier_params() -> list:
    return [pytest.param(t, marks=unverified_mark("triton", t), id=t) for t in TIER_SHAPES]


@gpu
@pytest.mark.gpu_quick
@needs_cuda
@compiled_mode
@pytest.mark.parametrize("dtype_id", list(DTYPE_CASES))
@pytest.mark.parametrize("tier", _tier_params())
def test_tier_vs_reference_quick(tier: str, dtype_id: str) -> None:
    T, B, H = TIER_SHAPES[tier][0]
    _check_tier(tier, dtype_id, T, B, H, reverse=True, nl="tanh", lengths=True)


@gpu
@needs_cuda
@compiled_mode
@pytest.mark.parametrize("dtype_id", list(DTYPE_CASES))
@pytest.mark.parametrize("tier,shape", [pytest.param(t, s, marks=unverified_mark("triton", t),
                                                     id=f"{t}-T{s[0]}-B{s[1]}-H{s[2]}")
                                        for t, ss in TIER_SHAPES.items() for s in ss])
@pytest.mark.parametrize("reverse,nl,lengths", [(False, "tanh", False), (False, "relu", True),
                                                (True, "relu", False)], ids=["fwd-tanh", "fwd-relu-len", "rev-relu"])
def test_tier_vs_reference_full(tier: str, shape: tuple, dtype_id: str, reverse: bool, nl: str,
                                lengths: bool) -> None:
    _check_tier(tier, dtype_id, *shape, reverse=reverse, nl=nl, lengths=lengths)


@gpu
@needs_cuda
@compiled_mode
@pytest.mark.parametrize("dtype_id,H", [pytest.param(d, h, marks=unverified_mark("triton", "resident"))
                                        for d, h in [("fp16", 200), ("bf16", 256), ("tf32", 100), ("fp64", 128)]])
def test_resident_at_its_limit(dtype_id: str, H: int) -> None:
    """The largest resident variants (BLOCK_H=256 in fp16/bf16, 128 in TF32/fp64) launch and match."""
    _check_tier("resident", dtype_id, 6, 18, H, reverse=False, nl="tanh", lengths=True)


@gpu
@pytest.mark.gpu_quick
@needs_cuda
@compiled_mode
@pytest.mark.parametrize("tier,H", [pytest.param(t, h, marks=unverified_mark("triton", t), id=t)
                                    for t, h in [("resident", 32), ("cooperative", 150), ("per_step", 130)]])
def test_module_vs_torch_nn_rnn(tier: str, H: int, monkeypatch) -> None:
    """fused_rnn.RNN(backend="triton") vs torch.nn.RNN (cuDNN) in fp64: packed, bidirectional, 2 layers."""
    import fused_rnn
    from fused_rnn.backends import triton as TB

    monkeypatch.setenv("FUSED_RNN_TRITON_TIER", tier)
    B, T, n_in = 6, 9, 10
    assert TB.effective_tier(tier, H, B, torch.float64, torch.device("cuda")) == tier
    torch.manual_seed(3)
    kw = dict(num_layers=2, bidirectional=True, nonlinearity="tanh")
    ref = torch.nn.RNN(n_in, H, **kw).double().cuda()
    mod = fused_rnn.RNN(n_in, H, **kw, backend="triton").double().cuda()
    mod.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, n_in, dtype=torch.float64, device="cuda")
    h0 = 0.3 * torch.randn(4, B, H, dtype=torch.float64, device="cuda")
    lengths = torch.tensor([9, 8, 6, 5, 2, 1])

    def go(m):
        xi, hi = x.clone().requires_grad_(), h0.clone().requires_grad_()
        out, hn = m(torch.nn.utils.rnn.pack_padded_sequence(xi, lengths), hi)
        out = torch.nn.utils.rnn.pad_packed_sequence(out)[0]
        g = torch.Generator().manual_seed(1)
        w1 = torch.randn(out.shape, generator=g, dtype=torch.float64).cuda()
        w2 = torch.randn(hn.shape, generator=g, dtype=torch.float64).cuda()
        ((out * w1).sum() + (hn * w2).sum()).backward()
        return [out, hn, xi.grad, hi.grad] + [p.grad for p in m.parameters()]

    with expect_ran(tier, backend="triton") as runs:
        got = go(mod)
    assert len(runs) == 8, runs  # 2 layers x 2 directions x (forward, backward)
    for i, (a, b) in enumerate(zip(got, go(ref))):
        assert _err(a, b) <= 1e-9, f"tensor {i}: {_err(a, b):.3e}"


@gpu
@pytest.mark.gpu_quick
@needs_cuda
@compiled_mode
@pytest.mark.parametrize("tier", _tier_params())
def test_repeatable_bitwise_and_non_default_stream(tier: str) -> None:
    """Two runs give identical bits; a run on a side stream gives the same bits (no reliance on the default stream)."""
    from fused_rnn.backends import triton as TB

    T, B, H = TIER_SHAPES[tier][0]
    d = _inputs(T, B, H, True, seed=5)
    with expect_ran(tier, backend="triton"):
        first = _run(TB, d, torch.float32, True, "tanh", tier, False)
        second = _run(TB, d, torch.float32, True, "tanh", tier, False)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            third = _run(TB, d, torch.float32, True, "tanh", tier, False)
        torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    for a, b, c in zip(first, second, third):
        assert torch.equal(a, b) and torch.equal(a, c)


@gpu
@pytest.mark.gpu_quick
@needs_cuda
@compiled_mode
@pytest.mark.parametrize("tier", _tier_params())
def test_cuda_graph_capture_forward_backward(tier: str) -> None:
    """Capture forward + backward in one CUDA graph, replay on new inputs, compare with an eager run bitwise."""
    from fused_rnn.backends import triton as TB

    T, B, H = TIER_SHAPES[tier][0]
    d = _inputs(T, B, H, True, seed=8)
    static = {k: (v.float() if v.is_floating_point() else v).clone() for k, v in d.items() if v is not None}

    def step():
        Y, hn = TB.forward(static["P"], static["h0"], static["w"], static["L"], False, "tanh", tier, False)
        dA, dh0 = TB.backward(static["dY"], static["dhn"], Y, static["w"], static["L"], False, "tanh", tier, False)
        return [Y, hn, dA, dh0]

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with expect_ran(tier, backend="triton"):
        with torch.cuda.stream(side):  # warm up (compiles the kernels) outside the capture
            step()
            step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outs = step()
    new = _inputs(T, B, H, True, seed=9)
    for k in ("P", "h0", "w", "dY", "dhn"):
        static[k].copy_(new[k].float())
    static["L"].copy_(new["L"])
    graph.replay()
    torch.cuda.synchronize()
    want = step()
    torch.cuda.synchronize()
    for a, b in zip(outs, want):
        assert torch.equal(a, b)



@gpu
@pytest.mark.gpu_quick
@pytest.mark.gpu_unverified
@needs_cuda
@compiled_mode
def test_cooperative_under_torch_compile_on_the_gpu(monkeypatch) -> None:
    """On the GPU: a compiled module with the tier forced to cooperative raises the clear error; with the triton
    backend's own choice it compiles to a non-cooperative tier and matches eager mode."""
    import fused_rnn

    torch.manual_seed(4)
    m = fused_rnn.RNN(16, 150, backend="triton").cuda()
    x = torch.randn(7, 4, 16, device="cuda")
    monkeypatch.setenv("FUSED_RNN_TRITON_TIER", "cooperative")
    torch._dynamo.reset()
    with pytest.raises(Exception, match="cannot run under torch.compile"):
        torch.compile(m, fullgraph=True)(x)
    monkeypatch.delenv("FUSED_RNN_TRITON_TIER")
    torch._dynamo.reset()
    out, hn = torch.compile(m, fullgraph=True)(x)
    want, want_hn = m(x)
    torch._dynamo.reset()
    assert torch.allclose(out, want, atol=1e-5) and torch.allclose(hn, want_hn, atol=1e-5)
