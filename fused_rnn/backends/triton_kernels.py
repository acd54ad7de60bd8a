"""Triton kernels for the Elman recurrence (the sequential part; docs/design.md "The backend contract").

Shapes: T time, B batch, H hidden. P, Y, dY, dA are contiguous [T, B, H]; h0, h_n, dh_n, dh0 are [B, H]; w_hh is
[H, H] in nn.RNN layout (a_t = P_t + h_prev @ w_hhᵀ); lengths is [B] int64 on the device (values in [1, T]).

Three tiers, each a forward and a backward kernel:

* ``resident``    -- one program per batch tile of BLOCK_B rows holds all of w_hh (padded to BLOCK_H, a power of
  two) in registers / shared memory and loops over all T steps; no inter-program communication.
* ``per_step``    -- one launch per time step; the program (batch tile, hidden tile) streams its w_hh columns from
  L2 in BLOCK_K chunks. Any H. The state lives in a ping-pong buffer in global memory.
* ``cooperative`` -- the ``per_step`` tile body in one launch looping over all T: the hidden units of a batch tile are
  split across programs that meet at a grid barrier (one per step, ping-pong state buffers). Launched ONLY with
  triton's ``launch_cooperative_grid=True`` (the driver then guarantees co-residency or refuses the launch); w_hh
  slices are re-read every step from L2 (the same slice per program each step, so it stays cache-resident).

Numerics (all tiers): accumulation in fp32 (fp64 for fp64); forward rounds h_t to the storage dtype every step and
feeds the rounded value to the next step; backward carries the gradient in fp32 and rounds dA only when storing.
fp16/bf16 backward multiplies the fp32 dA by w_hh as two dots of a hi/lo split of dA in the storage dtype (w_hh is
exact in it), which keeps ~16 (bf16) / ~22 (fp16) significant bits of the fp32 operand instead of 8 / 11.

Interpreter (TRITON_INTERPRET=1) workarounds, all behind the ``INTERP`` constexpr so the GPU path is untouched:
no tanh in the interpreter (1 - 2/(exp(2x)+1) instead); bf16/fp16 ``tl.dot`` is done on fp32-upcast operands
(the interpreter's bf16 dot is wrong); fp32 -> bf16 rounds to nearest even by hand (the interpreter truncates);
loop bounds come from host ints (``T_HOST``, ``H_HOST``: triton 3.6's interpreter hands scalars to ``range`` as
1-element arrays, which NumPy >= 2.5 refuses). Under the interpreter fp16 / bf16 thus follow the same rounding
contract as the reference (checked in tests/triton_interp_cases.py); the GPU path never sees these branches.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

try:  # triton 3.x: the backend-dispatching libdevice
    from triton.language.extra import libdevice
except ImportError:  # pragma: no cover - older layouts
    from triton.language.extra.cuda import libdevice  # type: ignore[no-redef]

# `@triton.jit` decides interpreter mode when it is applied (at import); kernels receive the same fact as a constexpr.
INTERPRET: bool = os.environ.get("TRITON_INTERPRET", "0") == "1"

NONLIN_TANH: int = 0
NONLIN_RELU: int = 1


# ----------------------------------------------------------------------------------------------------------------------
# shared pieces
# ----------------------------------------------------------------------------------------------------------------------


@triton.jit
def _activation(a, NONLIN: tl.constexpr, INTERP: tl.constexpr):
    """f(a) elementwise on an fp32/fp64 block: tanh (NONLIN=0) or relu (NONLIN=1)."""
    if NONLIN == 0:
        if INTERP:
            # the interpreter has no tanh; exact enough in fp32/fp64 (saturates cleanly: exp -> inf gives 1)
            h = 1.0 - 2.0 / (tl.exp(2.0 * a) + 1.0)
        else:
            h = libdevice.tanh(a)
    else:
        h = tl.where(a < 0.0, 0.0, a)  # relu that propagates NaN (a NaN fails `a < 0`)
    return h


@triton.jit
def _activation_backward(h, g, NONLIN: tl.constexpr):
    """f'(a) · g from h = f(a): (1 - h²) · g (tanh); relu the select h <= 0 ? 0 : g, torch's threshold_backward (and
    so nn.RNN's): 0 for a dead unit even where g is inf or NaN, and a NaN state passes g."""
    if NONLIN == 0:
        da = (1.0 - h * h) * g
    else:
        da = tl.where(h <= 0.0, 0.0, g)
    return da


@triton.jit
def _round(x, DT: tl.constexpr, INTERP: tl.constexpr):
    """Round an fp32/fp64 block to the storage dtype DT (round to nearest even)."""
    if DT == tl.bfloat16 and INTERP:
        # the interpreter truncates fp32 -> bf16: round the fp32 bits to nearest even by hand, then the (now exact)
        # cast; inf stays inf, NaN stays NaN, overflow rounds to inf as on the GPU
        b = x.to(tl.float32).to(tl.uint32, bitcast=True)
        b = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) << 16
        r = b.to(tl.float32, bitcast=True).to(DT)
    elif DT == tl.float16 or DT == tl.bfloat16:
        r = x.to(DT, fp_downcast_rounding="rtne")
    else:
        r = x.to(DT)
    return r


@triton.jit
def _dot_state(h, w, ACC: tl.constexpr, DOT_PREC: tl.constexpr, INTERP: tl.constexpr):
    """h [M, K] (storage dtype, exact) @ w [K, N] (storage dtype) -> [M, N] in ACC."""
    if INTERP and (h.dtype == tl.bfloat16 or h.dtype == tl.float16):
        out = tl.dot(h.to(tl.float32), w.to(tl.float32), input_precision="ieee", out_dtype=tl.float32)
    elif ACC == tl.float64:
        out = tl.dot(h, w, input_precision="ieee", out_dtype=tl.float64)
    elif h.dtype == tl.float32:
        out = tl.dot(h, w, input_precision=DOT_PREC, out_dtype=tl.float32)
    else:
        out = tl.dot(h, w, out_dtype=tl.float32)
    return out


@triton.jit
def _dot_grad(g, w, DT: tl.constexpr, ACC: tl.constexpr, DOT_PREC: tl.constexpr, INTERP: tl.constexpr):
    """g [M, K] (ACC, not rounded) @ w [K, N] (storage dtype DT) -> [M, N] in ACC."""
    if DT == tl.float16 or DT == tl.bfloat16:
        if INTERP:
            out = tl.dot(g, w.to(tl.float32), input_precision="ieee", out_dtype=tl.float32)
        else:
            # hi/lo split: w is exact in DT, so two DT dots with fp32 accumulation keep most of g's fp32 precision
            hi = g.to(DT, fp_downcast_rounding="rtne")
            lo = (g - hi.to(tl.float32)).to(DT, fp_downcast_rounding="rtne")
            out = tl.dot(hi, w, out_dtype=tl.float32)
            out = tl.dot(lo, w, acc=out, out_dtype=tl.float32)
    elif ACC == tl.float64:
        out = tl.dot(g, w, input_precision="ieee", out_dtype=tl.float64)
    else:
        out = tl.dot(g, w, input_precision=DOT_PREC, out_dtype=tl.float32)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# resident tier: one program per batch tile, all of w_hh on-chip, loop over T inside
# ----------------------------------------------------------------------------------------------------------------------


@triton.jit
def elman_fwd_resident_kernel(
    P, H0, W, LEN, Y, HN,  # P, Y [T, B, H]; H0, HN [B, H]; W [H, H]; LEN [B] int64 (unused unless HAS_LEN)
    T, B, H,
    HAS_LEN: tl.constexpr, REVERSE: tl.constexpr, NONLIN: tl.constexpr, DOT_PREC: tl.constexpr,
    INTERP: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, T_HOST: tl.constexpr,
):
    """Grid (cdiv(B, BLOCK_B),). Program b-tile: Y[:, tile], HN[tile] from P[:, tile], H0[tile] and all of W.

    T_HOST: T when interpreting, else 0 (unused; a constant, so it never causes a recompile).
    """
    DT: tl.constexpr = P.dtype.element_ty
    ACC: tl.constexpr = tl.float64 if DT == tl.float64 else tl.float32
    rb = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rh = tl.arange(0, BLOCK_H)
    mb = rb < B
    mh = rh < H
    m2 = mb[:, None] & mh[None, :]
    offs = rb[:, None].to(tl.int64) * H + rh[None, :]
    # wt[k, n] = W[n, k]  (a_t = h @ Wᵀ); zero padding keeps the padded columns of h at f(0 + 0) = 0
    wt = tl.load(W + rh[None, :] * H + rh[:, None], mask=mh[:, None] & mh[None, :], other=0.0)
    h = tl.load(H0 + offs, mask=m2, other=0.0)  # the carried state, storage dtype
    if HAS_LEN:
        L = tl.load(LEN + rb, mask=mb, other=0)
    # T_HOST under the interpreter: triton 3.6's interpreter makes a scalar argument (and any assigned value) a
    # 1-element array that `range` rejects with NumPy >= 2.5; an inline constexpr choice keeps the GPU loop runtime
    for s in range(T_HOST if INTERP else T):
        if REVERSE:
            t = T - 1 - s
        else:
            t = s
        base = t.to(tl.int64) * B * H  # never B.to(...): triton passes B == 1 as a constexpr
        p = tl.load(P + base + offs, mask=m2, other=0.0).to(ACC)
        a = p + _dot_state(h, wt, ACC, DOT_PREC, INTERP)
        h_new = _round(_activation(a, NONLIN, INTERP), DT, INTERP)
        if HAS_LEN:
            valid = (t < L)[:, None]
            tl.store(Y + base + offs, tl.where(valid, h_new, 0.0).to(DT), mask=m2)
            h = tl.where(valid, h_new, h)
        else:
            tl.store(Y + base + offs, h_new, mask=m2)
            h = h_new
    tl.store(HN + offs, h, mask=m2)


@triton.jit
def elman_bwd_resident_kernel(
    DY, DHN, Y, W, LEN, DA, DH0,  # DY, Y, DA [T, B, H]; DHN, DH0 [B, H]; W [H, H]; LEN [B] int64
    T, B, H,
    HAS_LEN: tl.constexpr, REVERSE: tl.constexpr, NONLIN: tl.constexpr, DOT_PREC: tl.constexpr,
    INTERP: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, T_HOST: tl.constexpr,
):
    """Grid (cdiv(B, BLOCK_B),). BPTT for one batch tile: DA[:, tile], DH0[tile]; the carry stays in ACC.

    T_HOST: T when interpreting, else 0 (see the forward kernel).
    """
    DT: tl.constexpr = Y.dtype.element_ty
    ACC: tl.constexpr = tl.float64 if DT == tl.float64 else tl.float32
    rb = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rh = tl.arange(0, BLOCK_H)
    mb = rb < B
    mh = rh < H
    m2 = mb[:, None] & mh[None, :]
    offs = rb[:, None].to(tl.int64) * H + rh[None, :]
    w = tl.load(W + rh[:, None] * H + rh[None, :], mask=mh[:, None] & mh[None, :], other=0.0)  # carry = dA @ W
    carry = tl.load(DHN + offs, mask=m2, other=0.0).to(ACC)
    if HAS_LEN:
        L = tl.load(LEN + rb, mask=mb, other=0)
    # T_HOST under the interpreter: triton 3.6's interpreter makes a scalar argument (and any assigned value) a
    # 1-element array that `range` rejects with NumPy >= 2.5; an inline constexpr choice keeps the GPU loop runtime
    for s in range(T_HOST if INTERP else T):
        if REVERSE:  # walk the forward order backwards
            t = s
        else:
            t = T - 1 - s
        base = t.to(tl.int64) * B * H
        y = tl.load(Y + base + offs, mask=m2, other=0.0).to(ACC)
        dy = tl.load(DY + base + offs, mask=m2, other=0.0).to(ACC)
        da = _activation_backward(y, dy + carry, NONLIN)
        nxt = _dot_grad(da, w, DT, ACC, DOT_PREC, INTERP)
        if HAS_LEN:
            valid = (t < L)[:, None]
            tl.store(DA + base + offs, _round(tl.where(valid, da, 0.0), DT, INTERP), mask=m2)
            carry = tl.where(valid, nxt, carry)
        else:
            tl.store(DA + base + offs, _round(da, DT, INTERP), mask=m2)
            carry = nxt
    tl.store(DH0 + offs, _round(carry, DT, INTERP), mask=m2)


# ----------------------------------------------------------------------------------------------------------------------
# per_step / cooperative: a (batch tile, hidden tile) body for one step, w_hh streamed in BLOCK_K chunks
# ----------------------------------------------------------------------------------------------------------------------


@triton.jit
def _fwd_step_tile(
    P, W, LEN, HPREV, HNEXT, Y,  # P, Y [T, B, H]; HPREV, HNEXT [B, H] storage dtype; W [H, H]
    t, B, H, pid_b, pid_n,
    HAS_LEN: tl.constexpr, NONLIN: tl.constexpr, DOT_PREC: tl.constexpr, INTERP: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STATE_CACHE: tl.constexpr,
    H_HOST: tl.constexpr,
):
    """Y[t, b-tile, n-tile] and HNEXT[b-tile, n-tile] = f(P[t] + HPREV @ Wᵀ) (HPREV where the step is padding)."""
    DT: tl.constexpr = P.dtype.element_ty
    ACC: tl.constexpr = tl.float64 if DT == tl.float64 else tl.float32
    rb = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mb = rb < B
    mn = rn < H
    rb64 = rb.to(tl.int64)
    acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=ACC)
    for k0 in range(0, H_HOST if INTERP else H, BLOCK_K):  # H_HOST: see the resident kernels
        rk = k0 + tl.arange(0, BLOCK_K)
        mk = rk < H
        hk = tl.load(HPREV + rb64[:, None] * H + rk[None, :], mask=mb[:, None] & mk[None, :], other=0.0,
                     cache_modifier=STATE_CACHE)
        wk = tl.load(W + rn[None, :].to(tl.int64) * H + rk[:, None], mask=mk[:, None] & mn[None, :], other=0.0)
        acc += _dot_state(hk, wk, ACC, DOT_PREC, INTERP)
    m2 = mb[:, None] & mn[None, :]
    offs = rb64[:, None] * H + rn[None, :]
    base = t.to(tl.int64) * B * H
    p = tl.load(P + base + offs, mask=m2, other=0.0).to(ACC)
    h_new = _round(_activation(p + acc, NONLIN, INTERP), DT, INTERP)
    if HAS_LEN:
        L = tl.load(LEN + rb, mask=mb, other=0)
        valid = (t < L)[:, None]
        h_old = tl.load(HPREV + offs, mask=m2, other=0.0, cache_modifier=STATE_CACHE)
        tl.store(Y + base + offs, tl.where(valid, h_new, 0.0).to(DT), mask=m2)
        tl.store(HNEXT + offs, tl.where(valid, h_new, h_old), mask=m2)
    else:
        tl.store(Y + base + offs, h_new, mask=m2)
        tl.store(HNEXT + offs, h_new, mask=m2)


@triton.jit
def _bwd_step_tile(
    DY, Y, W, LEN, CPREV, CNEXT, DA,  # DY, Y, DA [T, B, H]; CPREV, CNEXT [B, H] in ACC; W [H, H]
    t, B, H, pid_b, pid_n,
    HAS_LEN: tl.constexpr, NONLIN: tl.constexpr, DOT_PREC: tl.constexpr, INTERP: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STATE_CACHE: tl.constexpr,
    H_HOST: tl.constexpr,
):
    """DA[t, b-tile, n-tile] = f'(Y_t)(dY_t + CPREV); CNEXT[b-tile, n-tile] = dA_t @ W (CPREV where padding).

    dA_t over all K is recomputed per hidden tile from Y, dY and CPREV (cheap pointwise) instead of a second launch.
    """
    DT: tl.constexpr = Y.dtype.element_ty
    ACC: tl.constexpr = tl.float64 if DT == tl.float64 else tl.float32
    rb = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mb = rb < B
    mn = rn < H
    rb64 = rb.to(tl.int64)
    base = t.to(tl.int64) * B * H
    acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=ACC)
    for k0 in range(0, H_HOST if INTERP else H, BLOCK_K):  # H_HOST: see the resident kernels
        rk = k0 + tl.arange(0, BLOCK_K)
        mk = rk < H
        mbk = mb[:, None] & mk[None, :]
        ok = rb64[:, None] * H + rk[None, :]
        yk = tl.load(Y + base + ok, mask=mbk, other=0.0).to(ACC)
        dyk = tl.load(DY + base + ok, mask=mbk, other=0.0).to(ACC)
        ck = tl.load(CPREV + ok, mask=mbk, other=0.0, cache_modifier=STATE_CACHE)
        dak = _activation_backward(yk, dyk + ck, NONLIN)
        wk = tl.load(W + rk[:, None].to(tl.int64) * H + rn[None, :], mask=mk[:, None] & mn[None, :], other=0.0)
        acc += _dot_grad(dak, wk, DT, ACC, DOT_PREC, INTERP)
    m2 = mb[:, None] & mn[None, :]
    offs = rb64[:, None] * H + rn[None, :]
    y = tl.load(Y + base + offs, mask=m2, other=0.0).to(ACC)
    dy = tl.load(DY + base + offs, mask=m2, other=0.0).to(ACC)
    c = tl.load(CPREV + offs, mask=m2, other=0.0, cache_modifier=STATE_CACHE)
    da = _activation_backward(y, dy + c, NONLIN)
    if HAS_LEN:
        L = tl.load(LEN + rb, mask=mb, other=0)
        valid = (t < L)[:, None]
        tl.store(DA + base + offs, _round(tl.where(valid, da, 0.0), DT, INTERP), mask=m2)
        tl.store(CNEXT + offs, tl.where(valid, acc, c), mask=m2)
    else:
        tl.store(DA + base + offs, _round(da, DT, INTERP), mask=m2)
        tl.store(CNEXT + offs, acc, mask=m2)


@triton.jit(do_not_specialize=["t"])
def elman_fwd_step_kernel(
    P, W, LEN, HPREV, HNEXT, Y,  # P, Y [T, B, H]; W [H, H]; LEN [B]; HPREV, HNEXT [B, H]
    t, B, H,
    HAS_LEN: tl.constexpr, NONLIN: tl.constexpr, DOT_PREC: tl.constexpr, INTERP: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, H_HOST: tl.constexpr,
):
    """Grid (cdiv(B, BLOCK_B), cdiv(H, BLOCK_N)): one forward step t. H_HOST: H when interpreting, else 0."""
    _fwd_step_tile(P, W, LEN, HPREV, HNEXT, Y, t, B, H, tl.program_id(0), tl.program_id(1),
                   HAS_LEN, NONLIN, DOT_PREC, INTERP, BLOCK_B, BLOCK_N, BLOCK_K, "", H_HOST)


@triton.jit(do_not_specialize=["t"])
def elman_bwd_step_kernel(
    DY, Y, W, LEN, CPREV, CNEXT, DA,  # DY, Y, DA [T, B, H]; W [H, H]; LEN [B]; CPREV, CNEXT [B, H] fp32/fp64
    t, B, H,
    HAS_LEN: tl.constexpr, NONLIN: tl.constexpr, DOT_PREC: tl.constexpr, INTERP: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, H_HOST: tl.constexpr,
):
    """Grid (cdiv(B, BLOCK_B), cdiv(H, BLOCK_N)): one backward step t. H_HOST: H when interpreting, else 0."""
    _bwd_step_tile(DY, Y, W, LEN, CPREV, CNEXT, DA, t, B, H, tl.program_id(0), tl.program_id(1),
                   HAS_LEN, NONLIN, DOT_PREC, INTERP, BLOCK_B, BLOCK_N, BLOCK_K, "", H_HOST)


@triton.jit
def _grid_barrier(SYNC, target):
    """Wait until the int32 counter *SYNC reaches ``target`` after adding this program's arrival.

    Safe only under a cooperative launch (all programs co-resident). Release on arrival publishes this program's
    state stores (the CTA barrier first orders every thread's stores before thread 0's release); acquire on the
    polling read plus the CTA barrier after it make the other programs' stores visible to every thread here.
    """
    tl.debug_barrier()
    tl.atomic_add(SYNC, 1, sem="release", scope="gpu")
    seen = tl.atomic_add(SYNC, 0, sem="acquire", scope="gpu")
    while seen < target:
        seen = tl.atomic_add(SYNC, 0, sem="acquire", scope="gpu")
    tl.debug_barrier()


@triton.jit
def elman_fwd_coop_kernel(
    P, W, LEN, HBUF, Y, SYNC,  # P, Y [T, B, H]; W [H, H]; LEN [B]; HBUF [2, B, H] (HBUF[0] = h0); SYNC [n_btiles]
    T, B, H,
    HAS_LEN: tl.constexpr, REVERSE: tl.constexpr, NONLIN: tl.constexpr, DOT_PREC: tl.constexpr,
    INTERP: tl.constexpr, N_TILES: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, T_HOST: tl.constexpr, H_HOST: tl.constexpr,
):
    """Grid (cdiv(B, BLOCK_B) * N_TILES,), cooperative launch only. h_n ends in HBUF[T % 2].

    (The interpreter can run it only with N_TILES=1, where each program's barrier waits on itself alone: that is how
    tests/triton_interp_cases.py checks the ping-pong bookkeeping on CPU.)
    """
    pid = tl.program_id(0)
    pid_b = pid // N_TILES
    pid_n = pid % N_TILES
    for s in range(T_HOST if INTERP else T):  # T_HOST, H_HOST: see the resident kernels
        if REVERSE:
            t = T - 1 - s
        else:
            t = s
        cur = s % 2  # (an assignment: the interpreter makes it a tensor even when s is a host int)
        cur = cur.to(tl.int64)
        # ping-pong: step s reads HBUF[s % 2] and writes HBUF[1 - s % 2]; one barrier per step is then enough
        _fwd_step_tile(P, W, LEN, HBUF + cur * B * H, HBUF + (1 - cur) * B * H, Y, t, B, H, pid_b, pid_n,
                       HAS_LEN, NONLIN, DOT_PREC, INTERP, BLOCK_B, BLOCK_N, BLOCK_K, ".cg", H_HOST)
        _grid_barrier(SYNC + pid_b, (s + 1) * N_TILES)


@triton.jit
def elman_bwd_coop_kernel(
    DY, Y, W, LEN, CBUF, DA, SYNC,  # DY, Y, DA [T, B, H]; W [H, H]; LEN [B]; CBUF [2, B, H] ACC (CBUF[0] = dh_n)
    T, B, H,
    HAS_LEN: tl.constexpr, REVERSE: tl.constexpr, NONLIN: tl.constexpr, DOT_PREC: tl.constexpr,
    INTERP: tl.constexpr, N_TILES: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, T_HOST: tl.constexpr, H_HOST: tl.constexpr,
):
    """Grid (cdiv(B, BLOCK_B) * N_TILES,), cooperative launch only. dh0 (in ACC) ends in CBUF[T % 2]."""
    pid = tl.program_id(0)
    pid_b = pid // N_TILES
    pid_n = pid % N_TILES
    for s in range(T_HOST if INTERP else T):  # T_HOST, H_HOST: see the resident kernels
        if REVERSE:
            t = s
        else:
            t = T - 1 - s
        cur = s % 2  # (an assignment: the interpreter makes it a tensor even when s is a host int)
        cur = cur.to(tl.int64)
        _bwd_step_tile(DY, Y, W, LEN, CBUF + cur * B * H, CBUF + (1 - cur) * B * H, DA, t, B, H, pid_b, pid_n,
                       HAS_LEN, NONLIN, DOT_PREC, INTERP, BLOCK_B, BLOCK_N, BLOCK_K, ".cg", H_HOST)
        _grid_barrier(SYNC + pid_b, (s + 1) * N_TILES)
