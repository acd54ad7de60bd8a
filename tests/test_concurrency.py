"""Bidirectional layers with the two directions on two CUDA streams (fused_rnn/concurrency.py).

On the CPU: the setting's parsing, when it is on, and -- with recording stand-ins for the stream primitives -- the
order the module enqueues work in (fork before the reverse direction, the reverse inside the side stream, join after
both) and exactly which tensors, by identity, are handed to record_stream on which stream (the reverse direction's
layer input, hx and lengths on the side stream; its two outputs on the main stream), with results and gradients
equal to nn.RNN through that path; _record_on's own filter (CUDA tensors only, nothing during graph capture).
On a GPU (`-m gpu_quick`, run by `make gpu-check`): concurrent vs one-after-the-other for every CUDA tier and the
Triton tiers, from a non-default caller stream, while another stream keeps the GPU busy, under CUDA-graph capture,
and with the side stream stalled while main frees the inputs and fills freed memory with NaN.
Shapes: T time, B batch, I input, H hidden.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from cuda_common import FLOOR, needs_gpu  # tests/cuda_common.py

import fused_rnn
import fused_rnn.stack as stack  # the fused stack (layers × directions): where elman_layer is called
from fused_rnn import concurrency as conc

ENV = conc.ENV


# ---------------------------------------------------------------------------------------------------------------
# the setting (CPU)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "want"), [("1", "1"), ("on", "1"), ("TRUE", "1"), ("0", "0"), ("off", "0"),
                                             ("auto", "auto"), ("", "auto"), (" Auto ", "auto")],
                         ids=["1", "on", "TRUE", "0", "off", "auto", "empty", "spaced"])
def test_setting_parses(value: str, want: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, value)
    assert conc.setting() == want


def test_setting_unset_is_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert conc.setting() == "auto"


@pytest.mark.parametrize("value", ["2", "yes please", "streams"])
def test_setting_rejects_other_values(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, value)
    with pytest.raises(ValueError, match=ENV):
        conc.setting()


def test_bad_setting_reaches_the_user_of_a_bidirectional_cuda_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """A typo in the variable is an error, not silently 'off' -- checked before any CUDA work (no GPU needed)."""
    monkeypatch.setenv(ENV, "maybe")
    with pytest.raises(ValueError, match=ENV):
        conc.enabled(torch.device("cuda"), 2)


@pytest.mark.parametrize(("device", "dirs", "value", "want"), [
    ("cpu", 2, "1", False),       # CPU tensors: never (one stream of host work)
    ("cuda", 1, "1", False),      # unidirectional: nothing to overlap
    ("cuda", 2, "1", True),       # forced on
    ("cuda", 2, "0", False),      # forced off
    ("cuda", 2, "auto", False),   # auto: not GPU-verified yet (VERIFIED is False), so off
], ids=["cpu", "one-direction", "forced-on", "forced-off", "auto-unverified"])
def test_enabled(device: str, dirs: int, value: str, want: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, value)
    monkeypatch.setattr(conc, "VERIFIED", False)
    assert conc.enabled(torch.device(device), dirs) is want


@pytest.mark.parametrize(("verified_device", "want"), [(True, True), (False, False)], ids=["sm90", "other-gpu"])
def test_auto_follows_the_verified_list(verified_device: bool, want: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once VERIFIED is set (with a committed GPU report), auto turns it on, but only on verified GPUs."""
    from fused_rnn.backends import select

    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setattr(conc, "VERIFIED", True)
    monkeypatch.setattr(select, "_verified_device", lambda d: verified_device)
    assert conc.enabled(torch.device("cuda"), 2) is want


def test_not_under_torch_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "1")
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert conc.enabled(torch.device("cuda"), 2) is False


# ---------------------------------------------------------------------------------------------------------------
# the module's concurrent path, with recording stand-ins for the streams (CPU)
# ---------------------------------------------------------------------------------------------------------------


class _FakeStream:
    def __init__(self, name: str, log: list) -> None:
        self.name, self.log = name, log

    def wait_stream(self, other: _FakeStream) -> None:
        self.log.append(("wait", self.name, other.name))


class _FakeCudaTensor(torch.Tensor):
    """A CPU tensor that says it is a CUDA tensor and logs record_stream calls (for _record_on's own test)."""

    records: list = []

    @property
    def is_cuda(self) -> bool:  # type: ignore[override]
        return True

    def record_stream(self, stream) -> None:  # type: ignore[override]
        _FakeCudaTensor.records.append((self, stream))


def test_record_on_marks_cuda_tensors_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """_record_on calls record_stream(stream) on each CUDA tensor it is given, passes over None and CPU tensors,
    and records nothing during CUDA-graph capture."""
    monkeypatch.setattr(_FakeCudaTensor, "records", [])
    a = torch.Tensor._make_subclass(_FakeCudaTensor, torch.zeros(3))
    b = torch.Tensor._make_subclass(_FakeCudaTensor, torch.ones(2))
    stream = object()
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    conc._record_on((a, None, torch.zeros(4), b), stream)
    assert [(t is x, s is stream) for (t, s), x in zip(_FakeCudaTensor.records, (a, b))] == [(True, True)] * 2
    assert len(_FakeCudaTensor.records) == 2
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    conc._record_on((a, b), stream)
    assert len(_FakeCudaTensor.records) == 2, "record_stream called during graph capture"


@pytest.mark.parametrize("layers", [1, 3], ids=["1layer", "3layers"])
@pytest.mark.parametrize("form", ["padded", "lengths", "packed"])
def test_concurrent_path_order_and_parity(layers: int, form: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The module's two-stream path, run on the CPU with stand-ins that record what would be enqueued where, and
    which tensors are handed to record_stream on which stream (by identity, not by count).

    Each layer must: fork (side waits main) -> record on the side stream exactly the tensors the reverse direction
    reads that were made on main: its layer input (the same tensor object elman_layer gets), the whole hx [L·D, B, H]
    (whose slice it gets) and lengths (the same object, None without lengths) -> the reverse direction inside the
    side stream -> the forward direction on main -> join (main waits side) -> record on main exactly the two tensors
    the reverse direction returned (Y_rev, h_n_rev), not the forward ones. Outputs, h_n and every gradient equal
    nn.RNN's (fp64), so the per-layer closures bind the right layer, input and hx slice."""
    log: list[tuple] = []
    main, side = _FakeStream("main", log), _FakeStream("side", log)
    current = [main]

    @contextlib.contextmanager
    def stream_ctx(s: _FakeStream):
        log.append(("enter", s.name))
        prev, current[0] = current[0], s
        try:
            yield
        finally:
            current[0] = prev
            log.append(("exit", s.name))

    real_layer, real_record_on = stack.elman_layer, conc._record_on
    calls: list[dict] = []  # every elman_layer call: its direction, stream, inputs and outputs
    records: list[tuple[str, tuple]] = []  # every _record_on call: (stream name, the tensors, as objects)

    def logged_layer(*args, **kwargs):
        reverse = args[7]
        log.append(("rev" if reverse else "fwd", current[0].name))
        out = real_layer(*args, **kwargs)
        calls.append(dict(reverse=reverse, x=args[0], h0=args[1], lengths=args[6], out=out))
        return out

    def logged_record_on(tensors, stream: _FakeStream) -> None:
        log.append(("record", stream.name))
        records.append((stream.name, tuple(tensors)))
        real_record_on(tensors, stream)  # CPU tensors: passes over them (the filter has its own test above)

    monkeypatch.setattr(conc, "enabled", lambda device, n: n == 2)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: main)
    monkeypatch.setattr(torch.cuda, "stream", stream_ctx)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.setattr(conc, "side_stream", lambda device: side)
    monkeypatch.setattr(conc, "_record_on", logged_record_on)
    monkeypatch.setattr(stack, "elman_layer", logged_layer)

    torch.manual_seed(layers)
    T, B, n_in, H = 7, 4, 5, 6
    oracle = torch.nn.RNN(n_in, H, num_layers=layers, bidirectional=True).double()
    m = fused_rnn.RNN(n_in, H, num_layers=layers, bidirectional=True, backend="reference").double()
    m.load_state_dict(oracle.state_dict())
    x = torch.randn(T, B, n_in, dtype=torch.float64)
    hx = torch.randn(2 * layers, B, H, dtype=torch.float64)
    lengths = torch.tensor([7, 2, 5, 1])
    outs = []
    for mod in (oracle, m):
        xr, hr = x.clone().requires_grad_(), hx.clone().requires_grad_()
        if form == "padded":
            out, hn = mod(xr, hr)
        elif form == "packed" or mod is oracle:
            pk = torch.nn.utils.rnn.pack_padded_sequence(xr, lengths, enforce_sorted=False)
            out, hn = mod(pk, hr)
            out = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)[0]
        else:
            out, hn = mod(xr, hr, lengths=lengths)
        (out.square().sum() + (hn * 0.5).sum()).backward()
        outs.append((out, hn, xr.grad, hr.grad, [p.grad for p in mod.parameters()]))
    (o_out, o_hn, o_gx, o_gh, o_gp), (f_out, f_hn, f_gx, f_gh, f_gp) = outs
    for a, b in [(f_out, o_out), (f_hn, o_hn), (f_gx, o_gx), (f_gh, o_gh), *zip(f_gp, o_gp)]:
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)

    per_layer = [("wait", "side", "main"), ("record", "side"), ("enter", "side"), ("rev", "side"), ("exit", "side"),
                 ("fwd", "main"), ("wait", "main", "side"), ("record", "main")]
    assert log == per_layer * layers

    # Which tensors, by identity. calls alternate rev, fwd per layer (the reverse is enqueued first).
    assert [c["reverse"] for c in calls] == [True, False] * layers
    assert [name for name, _ in records] == ["side", "main"] * layers
    for layer in range(layers):
        rev, fwd = calls[2 * layer], calls[2 * layer + 1]
        (_, on_side), (_, on_main) = records[2 * layer], records[2 * layer + 1]
        assert len(on_side) == 3 and len(on_main) == 2
        layer_input, hx_all, lens = on_side
        assert layer_input is rev["x"] and layer_input is fwd["x"], f"layer {layer}: side record misses the input"
        assert isinstance(hx_all, torch.Tensor) and hx_all.shape == (2 * layers, B, H)
        assert rev["h0"]._base is hx_all and fwd["h0"]._base is hx_all, f"layer {layer}: side record misses hx"
        assert lens is rev["lengths"] and (lens is None) == (form == "padded"), f"layer {layer}: lengths"
        y_rev, h_rev = rev["out"]
        assert on_main[0] is y_rev and on_main[1] is h_rev, f"layer {layer}: main must record the reverse outputs"
        if layer > 0:  # the input of a deeper layer is the previous layer's output, not the module input
            assert layer_input is not calls[0]["x"]


def test_sequential_path_when_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """Off: run_pair calls forward then reverse and touches no stream API (CPU-only machines never reach CUDA)."""
    calls: list[str] = []
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a: pytest.fail("stream API used while off"))
    fwd, rev = conc.run_pair(torch.device("cpu"), False, lambda: calls.append("f") or ("F",),
                             lambda: calls.append("r") or ("R",))
    assert (fwd, rev, calls) == (("F",), ("R",), ["f", "r"])


# ---------------------------------------------------------------------------------------------------------------
# GPU: concurrent == sequential for every tier, busy GPU, caller stream, graph capture
# ---------------------------------------------------------------------------------------------------------------

# The Triton case is in the full `gpu` set only: its first call JIT-compiles several kernels (seconds each), too slow
# for the gpu_quick stage of `make gpu-check`.
GPU_CASES = [("cuda", "cluster"), ("cuda", "persistent"), ("cuda", "fallback"), ("cuda", "batch_tiled"),
             ("triton", "per_step")]
_QUICK = {"cuda"}
TIER_ENV = {"cuda": "FUSED_RNN_CUDA_TIER", "triton": "FUSED_RNN_TRITON_TIER"}


def _gpu_quick(fn):
    """The marks of a test in the gpu_quick subset (needs a GPU; `make gpu-check` runs it; 120 s at most)."""
    for mark in (pytest.mark.timeout(120), pytest.mark.gpu_quick, pytest.mark.gpu, needs_gpu):
        fn = mark(fn)
    return fn


def _run(backend: str, dtype: torch.dtype, concurrent: bool, monkeypatch: pytest.MonkeyPatch, *, H: int = 96,
         stream: torch.cuda.Stream | None = None) -> list[torch.Tensor]:
    """2-layer bidirectional module with lengths on CUDA: [output, h_n, grad x, grad hx, *param grads]."""
    monkeypatch.setenv(ENV, "1" if concurrent else "0")
    assert conc.enabled(torch.device("cuda"), 2) is concurrent
    torch.manual_seed(11)
    T, B, n_in = 33, 5, 24
    m = fused_rnn.RNN(n_in, H, num_layers=2, bidirectional=True, backend=backend).to("cuda", dtype)
    x = torch.randn(T, B, n_in, device="cuda", dtype=dtype, requires_grad=True)
    hx = torch.randn(4, B, H, device="cuda", dtype=dtype, requires_grad=True)
    lengths = torch.tensor([33, 1, 17, 32, 9])
    if stream is not None:
        stream.wait_stream(torch.cuda.current_stream())  # x, hx and the parameters were made on the current stream
    ctx = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
    with ctx:
        out, hn = m(x, hx, lengths=lengths)
        (out.float().square().sum() + hn.float().sum()).backward()
    torch.cuda.synchronize()
    return [out.detach(), hn.detach(), x.grad, hx.grad] + [p.grad for p in m.parameters()]


def _close(a: list[torch.Tensor], b: list[torch.Tensor], dtype: torch.dtype) -> None:
    """Same kernels on the same data: equal up to a few roundings (a race would show up as garbage or NaN)."""
    tol = 4 * FLOOR[dtype]
    for i, (u, v) in enumerate(zip(a, b)):
        assert torch.isfinite(u).all(), f"tensor {i} has non-finite values"
        scale = max(1.0, v.abs().max().item())
        err = (u.double() - v.double()).abs().max().item() / scale
        assert err <= tol, f"tensor {i}: relative error {err:.3g} > {tol:.3g}"


@needs_gpu
@pytest.mark.gpu
@pytest.mark.timeout(120)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(("backend", "tier"), [
    pytest.param(b, t, id=f"{b}-{t}", marks=[pytest.mark.gpu_quick] if b in _QUICK else []) for b, t in GPU_CASES])
def test_concurrent_equals_sequential(backend: str, tier: str, dtype: torch.dtype,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    if backend not in fused_rnn.available_backends():
        pytest.skip(f"backend {backend} not available")
    monkeypatch.setenv(TIER_ENV[backend], tier)
    seq = _run(backend, dtype, False, monkeypatch)
    par = _run(backend, dtype, True, monkeypatch)
    _close(par, seq, dtype)


@_gpu_quick
@pytest.mark.parametrize("tier", ["cluster", "persistent"])
def test_concurrent_from_a_caller_stream_while_the_gpu_is_busy(tier: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller works on its own stream while a third stream floods the GPU with matmuls: the fork/join must
    follow the caller's stream (not the default one), nothing may hang, and results equal the sequential run."""
    monkeypatch.setenv("FUSED_RNN_CUDA_TIER", tier)
    seq = _run("cuda", torch.bfloat16, False, monkeypatch, H=512)
    busy = torch.cuda.Stream()
    a = torch.randn(4096, 4096, device="cuda")
    busy.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(busy):
        for _ in range(40):
            a = torch.tanh(a @ a * 1e-2)
    caller = torch.cuda.Stream()
    par = _run("cuda", torch.bfloat16, True, monkeypatch, H=512, stream=caller)
    busy.synchronize()
    assert torch.isfinite(a).all()
    _close(par, seq, torch.bfloat16)


@_gpu_quick
@pytest.mark.parametrize("tier", ["cluster", "fallback"])
def test_concurrent_forward_in_a_cuda_graph(tier: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inference forward captured in a CUDA graph with the side stream forked into the capture; replays on new data
    equal eager sequential runs."""
    monkeypatch.setenv("FUSED_RNN_CUDA_TIER", tier)
    torch.manual_seed(5)
    T, B, n_in, H = 40, 3, 16, 128
    m = fused_rnn.RNN(n_in, H, num_layers=2, bidirectional=True, backend="cuda").cuda().eval()
    static_x = torch.randn(T, B, n_in, device="cuda")
    monkeypatch.setenv(ENV, "1")
    warm = torch.cuda.Stream()
    warm.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(warm):
        for _ in range(2):
            m(static_x)
    torch.cuda.current_stream().wait_stream(warm)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        static_out, static_hn = m(static_x)
    for seed in (1, 2):
        static_x.copy_(torch.randn(T, B, n_in, device="cuda", generator=torch.Generator("cuda").manual_seed(seed)))
        graph.replay()
        monkeypatch.setenv(ENV, "0")
        with torch.no_grad():
            out, hn = m(static_x)
        monkeypatch.setenv(ENV, "1")
        torch.cuda.synchronize()
        _close([static_out, static_hn], [out, hn], torch.float32)


# The side stream stalled with torch.cuda._sleep while the main stream frees and overwrites memory: what the fork,
# the join and the record_stream calls protect. ~5e7 cycles ≈ 30 ms at the H200's ~1.8 GHz: far longer than the host
# needs to enqueue the rest of the pass, so a missing sync or record is hit, not raced past.
_STALL_CYCLES = 50_000_000


def _poison(nbytes: list[int], copies: int = 32) -> None:
    """Allocate ``copies`` blocks of each byte size on the current stream, fill every byte with 0xFF (NaN as fp32,
    -1 as int64) and free them: a block the caching allocator hands out early now holds garbage the results show."""
    keep = [torch.full((n,), 255, dtype=torch.uint8, device="cuda") for n in nbytes for _ in range(copies)]
    del keep


class _StallSideInBackward(torch.autograd.Function):
    """Identity on the reverse direction's outputs (Y [T, B, H], h_n [B, H]); runs on the side stream in forward, so
    its backward -- the first of the reverse direction's backward nodes -- also runs there and stalls it."""

    @staticmethod
    def forward(ctx, y: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return y.clone(), h.clone()

    @staticmethod
    def backward(ctx, dy: torch.Tensor, dh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        torch.cuda._sleep(_STALL_CYCLES)
        return dy, dh


class _PoisonInBackward(torch.autograd.Function):
    """Identity on a scalar; its backward poisons freed memory on the caller's (main) stream. Applied before the
    module's forward, it has the lowest sequence number in the graph, so autograd runs it after every node of the
    module -- after the reverse direction's nodes have released the layer input and hx they saved (enqueued on the
    stalled side stream, not yet run), and before anything on main waits for the side stream."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        ctx.sizes = sizes
        return z.clone()

    @staticmethod
    def backward(ctx, dz: torch.Tensor) -> tuple[torch.Tensor, None]:
        _poison(ctx.sizes)
        return dz, None


@_gpu_quick
@pytest.mark.parametrize("phase", ["forward", "backward"])
def test_stalled_side_stream_with_main_stream_reuse(phase: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The side stream is stalled (torch.cuda._sleep) while the main stream frees the inputs and fills freed memory
    with NaN bytes; results must equal the sequential run up to a few roundings (_close).

    forward (no_grad): main writes x and hx late (after a sleep twice as long), so a missing fork lets the reverse
    read them unwritten; after the call the inputs are deleted and memory of their sizes poisoned on main, so a
    missing join lets main's cat read Y_rev early and main's reuse overwrite x under the stalled reverse.
    backward: x and hx do not require grad and are held only by the tensors autograd saved; the reverse direction's
    backward stalls on the side stream, and a node ordered after the module's poisons memory on main. Without
    x / hx / lengths recorded on the side stream the allocator hands their blocks to main while the stalled reverse
    backward has still to read them (dW_ih_reverse, dW_hh_reverse)."""
    torch.manual_seed(23)
    T, B, n_in, H = 37, 6, 40, 64
    m = fused_rnn.RNN(n_in, H, bidirectional=True, backend="cuda").cuda()
    x_src = torch.randn(T, B, n_in, device="cuda")
    hx_src = torch.randn(2, B, H, device="cuda")
    lengths = torch.tensor([37, 1, 20, 36, 9, 30])
    w_out = torch.randn(T, B, 2 * H, device="cuda")
    sizes = [x_src.nbytes, hx_src.nbytes, lengths.nbytes]
    real_layer = stack.elman_layer

    def stalled_layer(*args, **kwargs):
        if args[7]:  # the reverse direction: on the side stream when concurrent
            if phase == "forward":
                torch.cuda._sleep(_STALL_CYCLES)
                return real_layer(*args, **kwargs)
            return _StallSideInBackward.apply(*real_layer(*args, **kwargs))
        return real_layer(*args, **kwargs)

    def run(concurrent: bool) -> list[torch.Tensor]:
        monkeypatch.setenv(ENV, "1" if concurrent else "0")
        m.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        _poison(sizes)
        if concurrent:
            with torch.cuda.stream(conc.side_stream(torch.device("cuda"))):
                _poison(sizes)  # the side stream's pool too: stale blocks from earlier runs hold no valid results
            torch.cuda.synchronize()
        if phase == "forward":
            torch.cuda._sleep(2 * _STALL_CYCLES)
            x, hx = x_src * 1.0, hx_src * 1.0  # written on main only after the sleep
            with torch.no_grad():
                out, hn = m(x, hx, lengths=lengths)
            del x, hx
            _poison(sizes)
            torch.cuda.synchronize()
            return [out, hn]
        z = torch.zeros((), device="cuda", requires_grad=True)
        poison = _PoisonInBackward.apply(z, sizes)  # before the module: runs last in backward
        x, hx = x_src.clone(), hx_src.clone()
        out, hn = m(x, hx, lengths=lengths)
        del x, hx  # autograd's saved tensors hold the only references now
        ((out * w_out).sum() + hn.square().sum() + poison).backward()
        torch.cuda.synchronize()
        return [out.detach(), hn.detach()] + [p.grad for p in m.parameters()]

    want = run(False)
    monkeypatch.setattr(stack, "elman_layer", stalled_layer)
    got = run(True)
    names = ["output", "h_n"] + ([n for n, _ in m.named_parameters()] if phase == "backward" else [])
    assert len(got) == len(want) == len(names)
    for name, a, b in zip(names, got, want):
        assert torch.isfinite(a).all(), f"{name}: non-finite values (memory reused under the stalled side stream)"
        _close([a], [b], torch.float32)
