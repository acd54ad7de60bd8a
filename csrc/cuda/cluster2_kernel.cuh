// `cluster2`: the cluster tier on tensor cores (issue 22; design, floors and proofs in csrc/cuda/NOTES_cluster2.md).
//
// One Hopper thread-block cluster of C <= 16 CTAs per batch tile of BT = 8 or 16 rows. CTA rank r owns the HS = 16 *
// mt_n hidden units [r*HS, r*HS + HS) and holds its slice of w_hh as mma.sync A fragments in registers for the whole
// sequence. One step:
//   1. wait on the mbarrier of the state slot (every peer's slice of the previous state has landed);
//   2. each of the 8 warps multiplies its k16 tiles of the state (ldmatrix from the slot) by its A fragments:
//      mma.sync m16n8k16, units as M, batch as N, fp32 accumulators;
//   3. the partial sums of the warps meet in shared memory and are added in warp order 0..7 (deterministic);
//   4. the epilogue (one thread per accumulator quad) applies bias + activation + length mask, writes the new state
//      slice into its own chunk of the other slot (storage dtype), and warp 0 pushes that chunk to every peer with
//      one cp.async.bulk.shared::cluster per peer, completing on the peer's mbarrier for that slot;
//   5. Y / h_n (forward) or dA / dh0 (backward) are stored after the push, off the exchange's critical path.
// No cluster barrier and no GPU-scope fence in the time loop (the only fence is the CTA-scope proxy fence before the
// push): the mbarrier's transaction count is the only handshake between CTAs.
//
// Ring protocol (kSlots = 2): step i reads slot i%2 and sends d_{i+1} into slot (i+1)%2 of every peer. A slot is
// never overwritten before every reader is done with it, and no mbarrier phase is armed twice, by causality alone:
// peer q sends d_{i+1} only after its own wait for d_i completed (all of d_i, ours included) and after its reads of
// d_{i-1} (barrier before the push), so when our wait for d_{i+1} completes every peer has finished reading slot
// (i+1)%2 from step i-1 and every copy we issued from that slot at step i-1 has landed. NOTES_cluster2.md has the
// full argument; the CPU emulation runs the protocol under adversarial schedules.
//
// Backward: carry[b][k] = sum_j dA[b][j] w[j][k] -- the same MMA with A = w_hhᵀ slice and the fp32 carry split into
// two storage-dtype planes hi = T(x), lo = T(x - hi) (x = hi + lo to ~2^-18 relative for bf16), two MMAs per tile.
// fp32 storage runs only under allow_tf32: m16n8k8 TF32 MMAs (two per k16 tile), the state / carry kept in fp32 in
// shared memory and rounded to tf32 as it is loaded, W rounded once; classes up to 3 m-tiles per CTA (H <= 768).
//
// Shapes: T time, B batch, H hidden, BT batch rows per cluster, HS units per CTA, C CTAs per cluster.
#pragma once

#include <cstdint>
#include <cstring>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "arch.h"
#ifndef FUSED_RNN_EMULATE
#include "cluster2_ptx.cuh"
#endif

// The kernel body exists in the device passes that have clusters (arch.h: sm_90 and newer) and in the CPU emulation;
// elsewhere it is a __trap() stub that the launcher never launches (it checks the device and the binary first).
#if defined(FUSED_RNN_DEVICE_CLUSTERS) || defined(FUSED_RNN_EMULATE)
#define FUSED_RNN_C2_BODY 1
#else
#define FUSED_RNN_C2_BODY 0
#endif

namespace fused_rnn {
namespace cuda {
namespace c2 {

constexpr int kThreads = 256;  // 8 warps: each takes a contiguous range of the k16 tiles
constexpr int kWarps = kThreads / 32;
constexpr int kSlots = 2;       // state ring depth; two suffice (header comment), more would only cost smem
constexpr int kMaxCluster = 16;  // non-portable cluster size (opt-in), the hardware maximum on sm_90
constexpr long long kWatchdogCycles = 1LL << 35;  // ~17 s at 1.98 GHz: a wait this long is a protocol bug

// Launch geometry and shared-memory layout, computed on the host (make_plan) and passed by value.
struct Plan {
  int C;          // CTAs per cluster (hidden slices), 1..16
  int mt_n;       // m16 tiles per CTA; HS = 16 * mt_n hidden units per CTA
  int HS;
  int kt_total;   // k16 tiles of the padded reduction, C * mt_n (chunk r holds tiles r*mt_n .. r*mt_n + mt_n - 1)
  int kt_n;       // k16 tiles per MMA warp
  int mma_warps;  // warps that own k tiles: ceil(kt_total / kt_n)
  int BT;         // batch rows per cluster: 8 (NT = 1) or 16 (NT = 2)
  int planes;     // state planes: 1 (forward: h in the storage dtype; tf32 backward: the fp32 carry), 2 (fp16 /
                  //   bf16 backward: the fp32 carry as hi + lo)
  int elem;       // bytes per state element: 2 (fp16 / bf16), 4 (fp32 under TF32)
  int pitch;      // bytes per state row of a chunk: elem * HS + 16 (an odd multiple of 16 B: ldmatrix conflict-free)
  int chunk;      // bytes of one CTA's slice of one slot, planes * BT * pitch: ONE bulk copy per peer and step
  int slot;       // bytes of one slot, C * chunk
  int off_slots;  // dynamic smem: [0, 16) the kSlots mbarriers, [off_slots, off_red) the slots,
  int off_red;    //   [off_red, smem) the cross-warp partial sums, float4 [mma_warps][mt_n][NT][32]
  int smem;
  int ntiles;     // clusters along the batch, ceil(B / BT)
};

inline int ceil_div(int a, int b) { return (a + b - 1) / b; }

// The tile class a plan runs on: register arrays are sized by (MT, KT), the plan's mt_n / kt_n are <= those.
// fp16 / bf16: (1, 2), (2, 4), (4, 8) -- mt_n = 3 runs on (4, 8). TF32 (A twice as wide: 8 registers per tile):
// (1, 2), (2, 4), (3, 6) and no mt_n = 4 (256 registers of A).
inline int class_mt(int mt_n, int elem) { return mt_n <= 2 ? (mt_n < 1 ? 1 : mt_n) : (elem == 4 ? 3 : 4); }
inline int class_kt(int mt) { return 2 * mt; }  // 8 warps x 2*MT k16 tiles = 16 * MT tiles = 16 CTAs x MT tiles
inline int max_mt(int elem) { return elem == 4 ? 3 : 4; }

// False when H needs more than kMaxCluster CTAs at this mt_n or the k tiles do not fit the class's registers.
inline bool make_plan(int H, int B, int mt_n, int NT, int planes, int elem, Plan* pl) {
  if (H < 1 || B < 1 || mt_n < 1 || mt_n > max_mt(elem) || (NT != 1 && NT != 2)) return false;
  Plan p{};
  p.mt_n = mt_n;
  p.HS = 16 * mt_n;
  p.C = ceil_div(H, p.HS);
  if (p.C > kMaxCluster) return false;
  p.kt_total = p.C * mt_n;
  p.kt_n = ceil_div(p.kt_total, kWarps);
  if (p.kt_n > class_kt(class_mt(mt_n, elem))) return false;
  p.mma_warps = ceil_div(p.kt_total, p.kt_n);
  p.BT = 8 * NT;
  p.planes = planes;
  p.elem = elem;
  p.pitch = elem * p.HS + 16;
  p.chunk = planes * p.BT * p.pitch;
  p.slot = p.C * p.chunk;
  p.off_slots = 128;
  p.off_red = p.off_slots + kSlots * p.slot;
  p.smem = p.off_red + p.mma_warps * mt_n * NT * 32 * 16;
  p.ntiles = ceil_div(B, p.BT);
  *pl = p;
  return true;
}

template <typename T>
struct Args {
  // forward: P [T,B,H], h0 [B,H] in; Y [T,B,H], h_n [B,H] out
  const T* P;
  const T* h0;
  T* Y;
  T* h_n;
  // backward: dY [T,B,H], dh_n [B,H], Ysaved [T,B,H] in; dA [T,B,H], dh0 [B,H] out
  const T* dY;
  const T* dh_n;
  const T* Ysaved;
  T* dA;
  T* dh0;
  const T* w;              // [H, H]
  const int64_t* lengths;  // [B] or nullptr
  int T_, B, H;
  bool reverse;
  int act;  // 0 tanh, 1 relu
  Plan plan;
};

template <typename T>
__device__ __forceinline__ float to_f(T x);
template <>
__device__ __forceinline__ float to_f<__half>(__half x) { return __half2float(x); }
template <>
__device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }
template <>
__device__ __forceinline__ float to_f<float>(float x) { return x; }
template <typename T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <>
__device__ __forceinline__ float from_f<float>(float x) { return x; }

template <typename T>
__device__ __forceinline__ uint32_t bits16(T x) {
  uint16_t u;
  memcpy(&u, &x, 2);
  return u;
}
__device__ __forceinline__ uint32_t bits32(float x) {
  uint32_t u;
  memcpy(&u, &x, 4);
  return u;
}

__device__ __forceinline__ float act_f(float a, int act) {
  // relu: `a <= 0 ? 0 : a` keeps NaN (the comparison is false), as torch.relu does.
  return act == 0 ? tanhf(a) : (a <= 0.f ? 0.f : a);
}
__device__ __forceinline__ float act_backward_from_out(float h, float g, int act) {
  // relu: the select `h <= 0 ? 0 : g`, torch's threshold_backward (nn.RNN): 0 for a dead unit even where g is inf or
  // NaN, and a NaN state passes g.
  return act == 0 ? (1.f - h * h) * g : (h <= 0.f ? 0.f : g);
}
__device__ __forceinline__ int length_of(const int64_t* lengths, int b, int T) {
  if (lengths == nullptr) return T;
  const int64_t L = lengths[b];
  return L < 0 ? 0 : (L > T ? T : static_cast<int>(L));  // clamped: a bad value never indexes out of bounds
}

// The PTX m16n8k16 C/D layout: accumulator register e (0..3) of a lane holds row (unit) g + c_du(e) and column
// (batch row) 2t + c_dn(e), g = lane / 4, t = lane % 4.
__device__ __forceinline__ int c_du(int e) { return 8 * (e >> 1); }
__device__ __forceinline__ int c_dn(int e) { return e & 1; }

#if FUSED_RNN_C2_BODY
// Element (m, k) of the MMA's A operand, m an output unit and k a reduction index (both global, 0 past H):
// forward a = s @ w_hhᵀ, so A[m][k] = w[m][k]; backward carry = dA @ w_hh, so A[m][k] = w[k][m].
template <typename T, bool kBwd>
__device__ __forceinline__ uint32_t a_elem(const T* __restrict__ w, int H, int m, int k) {
  if (m >= H || k >= H) return 0u;
  const T v = kBwd ? w[static_cast<size_t>(k) * H + m] : w[static_cast<size_t>(m) * H + k];
  if constexpr (sizeof(T) == 4) return cvt_tf32(bits32(v));  // TF32: one element per register, rounded
  else return bits16<T>(v);
}
// The 32-bit A register holding elements (m, k) (low half) and (m, k + 1) (high half).
template <typename T, bool kBwd>
__device__ __forceinline__ uint32_t a_pair(const T* __restrict__ w, int H, int m, int k) {
  return a_elem<T, kBwd>(w, H, m, k) | (a_elem<T, kBwd>(w, H, m, k + 1) << 16);
}

// B fragments of one k16 tile for every plane p and n8 tile nt. The state is stored [plane][n][unit] per chunk (row n
// = one batch row, `pitch` bytes), i.e. the B "col" layout; ldmatrix (no transpose) hands lane l the 32-bit word l%4 of
// row l/4 of each 8x8-b16 matrix (8 rows x 16 bytes). Matrix q = (p * NT + nt) * MPQ + j covers rows nt*8 .. +7 and
// bytes 16j .. 16j+15 of the tile, so lane l receives (n = nt*8 + l/4, word l%4 of those bytes):
//   fp16 / bf16 (MPQ = 2): j = 0 -> k 2t, 2t+1 = b0b1, j = 1 -> k 8+2t, 9+2t = b2b3 (m16n8k16 B layout);
//   TF32 (MPQ = 4, 4-byte elements): j -> k 4j + t, i.e. b0, b1 of the first k8 half (j = 0, 1) and of the second
//   (j = 2, 3) (m16n8k8 B layout: b0 = k t, b1 = k t+4), each rounded to tf32 here.
// `base` is the tile's first column in row 0 of plane 0 of its chunk.
template <int NP, int NT, int MPQ>
__device__ __forceinline__ void load_b_frags(uint32_t (&bf)[NP][NT][MPQ], saddr_t base, int pitch, int lane) {
  constexpr int BT = 8 * NT;
  constexpr int Q = MPQ * NT * NP;
  const int row = lane & 7;
  if constexpr (Q == 2) {
    uint32_t r[2];
    ldmatrix_x2(r, base + static_cast<saddr_t>(row * pitch + ((lane >> 3) & 1) * 16));
    bf[0][0][0] = r[0];
    bf[0][0][1] = r[1];
  } else {
#pragma unroll
    for (int q0 = 0; q0 < Q; q0 += 4) {
      const int q = q0 + (lane >> 3);
      const int j = q % MPQ, nt = (q / MPQ) % NT, p = (q / MPQ) / NT;
      uint32_t r[4];
      ldmatrix_x4(r, base + static_cast<saddr_t>((p * BT + nt * 8 + row) * pitch + j * 16));
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int qq = q0 + i;
        bf[(qq / MPQ) / NT][(qq / MPQ) % NT][qq % MPQ] = MPQ == 4 ? cvt_tf32(r[i]) : r[i];
      }
    }
  }
}

// Waits for the phase of parity `parity` of `bar`. A wait that outlasts kWatchdogCycles traps (the launch fails with
// an error) instead of hanging the GPU: only a protocol bug can make it that long, peers are co-scheduled.
__device__ __forceinline__ void mbar_wait(saddr_t bar, uint32_t parity) {
  if (mbar_try_wait(bar, parity)) return;
  const long long t0 = wall_clock();
  while (!mbar_try_wait(bar, parity)) {
    if (wall_clock() - t0 > kWatchdogCycles) watchdog_trap();
  }
}

#endif  // FUSED_RNN_C2_BODY

// ---------------------------------------------------------------------------------------------------------------
// The kernel. Grid (C, ntiles), cluster (C, 1, 1), 256 threads, dynamic smem plan.smem. MT / KT: register tiles of
// the class (plan.mt_n <= MT, plan.kt_n <= KT); NT = BT / 8; kBwd: backward (dA @ w_hh, hi/lo carry planes).
template <typename T, int MT, int KT, int NT, bool kBwd>
__global__ void __launch_bounds__(kThreads, 1) elman_cluster2_kernel(const Args<T> a) {
#if FUSED_RNN_C2_BODY
  constexpr bool kTF32 = sizeof(T) == 4;  // fp32 storage, TF32 products (only under allow_tf32)
  constexpr int E = static_cast<int>(sizeof(T));  // bytes per state element
  constexpr int AR = kTF32 ? 8 : 4;       // A registers per (m16, k16) tile: two m16n8k8 halves for TF32
  constexpr int MPQ = kTF32 ? 4 : 2;      // ldmatrix 8x8-b16 matrices (B registers) per (plane, n8 tile, k16 tile)
  constexpr int NP = (kBwd && !kTF32) ? 2 : 1;  // state planes (fp16 / bf16 backward: the carry as hi + lo)
  constexpr int BT = 8 * NT;
  const Plan pl = a.plan;
  unsigned char* smem = dyn_smem();
  const int tid = static_cast<int>(threadIdx.x), warp = tid >> 5, lane = tid & 31;
  const int rank = cluster_rank();
  const int H = a.H, B = a.B, T_ = a.T_;
  const int mt_n = pl.mt_n, HS = pl.HS;
  const int j0 = rank * HS;                        // first hidden unit of this CTA
  const int b0 = static_cast<int>(blockIdx.y) * BT;  // first batch row of this cluster
  const int iters = kBwd ? T_ + 1 : T_;           // backward: one more walk step that only finishes dh0
  const saddr_t sbase = smem_addr(smem);
  const saddr_t bars = sbase;  // mbarrier of slot s at bars + 8 s
  unsigned char* slots = smem + pl.off_slots;
  float4* red = reinterpret_cast<float4*>(smem + pl.off_red);

  // ---- A fragments of this warp's k16 tiles, for the whole sequence. PTX m16n8k16 A layout (fp16 / bf16): lane
  // l = 4g + t holds rows g / g+8 and column pairs 2t / 2t+8 of the 16x16 tile. m16n8k8 TF32 layout, per k8 half
  // hk: rows g / g+8, columns t / t+4 of the half, one element per register.
  const int kt0 = warp * pl.kt_n;
  const int kt_my = pl.kt_total - kt0 < pl.kt_n ? pl.kt_total - kt0 : pl.kt_n;  // <= 0: no tiles
  uint32_t A[MT][KT][AR];
  {
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int kt = 0; kt < KT; ++kt) {
        const bool on = mt < mt_n && kt < kt_my;
        const int m = j0 + mt * 16 + g, kb = (kt0 + kt) * 16;
        if constexpr (kTF32) {
#pragma unroll
          for (int hk = 0; hk < 2; ++hk) {
            const int k = kb + 8 * hk + t;
            A[mt][kt][4 * hk + 0] = on ? a_elem<T, kBwd>(a.w, H, m, k) : 0u;
            A[mt][kt][4 * hk + 1] = on ? a_elem<T, kBwd>(a.w, H, m + 8, k) : 0u;
            A[mt][kt][4 * hk + 2] = on ? a_elem<T, kBwd>(a.w, H, m, k + 4) : 0u;
            A[mt][kt][4 * hk + 3] = on ? a_elem<T, kBwd>(a.w, H, m + 8, k + 4) : 0u;
          }
        } else {
          const int k = kb + 2 * t;
          A[mt][kt][0] = on ? a_pair<T, kBwd>(a.w, H, m, k) : 0u;
          A[mt][kt][1] = on ? a_pair<T, kBwd>(a.w, H, m + 8, k) : 0u;
          A[mt][kt][2] = on ? a_pair<T, kBwd>(a.w, H, m, k + 8) : 0u;
          A[mt][kt][3] = on ? a_pair<T, kBwd>(a.w, H, m + 8, k + 8) : 0u;
        }
      }
  }

  // ---- Slots: zero (padding rows / units / bytes stay 0 for the whole run), forward slot 0 = h0 for every chunk
  // (each CTA reads h0 itself: no exchange before step 0).
  for (int o = tid * 16; o < kSlots * pl.slot; o += kThreads * 16)
    *reinterpret_cast<uint4*>(slots + o) = make_uint4(0u, 0u, 0u, 0u);
  if (tid == 0) {
#pragma unroll
    for (int s = 0; s < kSlots; ++s) mbar_init(bars + 8 * s, 1);
    fence_mbar_init();
  }
  __syncthreads();
  if constexpr (!kBwd) {
    const int HP = pl.C * HS;  // padded H
    for (int idx = tid; idx < BT * HP; idx += kThreads) {
      const int n = idx / HP, k = idx - n * HP, b = b0 + n;
      if (b < B && k < H) {
        const int r = k / HS, u = k - r * HS;
        *reinterpret_cast<T*>(slots + r * pl.chunk + n * pl.pitch + u * E) = a.h0[static_cast<size_t>(b) * H + k];
      }
    }
  }

  // Peers' bulk copies (async proxy) will write into the slots this thread just zeroed / filled (generic proxy).
  fence_proxy_async();

  // ---- Epilogue ownership: thread q < mt_n*NT*32 owns the accumulator quad (m-tile, n-tile, lane) of the MMA
  // layout: units u0 = mt*16 + g and u0 + 8, batch rows n0 = nt*8 + 2t and n0 + 1 (c0..c3 = (u0,n0), (u0,n0+1),
  // (u0+8,n0), (u0+8,n0+1)). Every (unit, row) of the CTA's [HS][BT] block has exactly one owner.
  const bool epi = tid < mt_n * NT * 32;
  const int q_mt = tid / (NT * 32), q_nt = (tid >> 5) % NT, q_lane = tid & 31;
  const int qu0 = q_mt * 16 + (q_lane >> 2), qn0 = q_nt * 8 + (q_lane & 3) * 2;
  int Ln[2];
  bool inr[4];  // the position is a real (unit < H, row < B) output of this thread
#pragma unroll
  for (int r = 0; r < 2; ++r) Ln[r] = (epi && b0 + qn0 + r < B) ? length_of(a.lengths, b0 + qn0 + r, T_) : 0;
#pragma unroll
  for (int e = 0; e < 4; ++e) inr[e] = epi && j0 + qu0 + c_du(e) < H && b0 + qn0 + c_dn(e) < B;
  auto gidx = [&](int e) {  // [b][j] offset of position e
    return static_cast<size_t>(b0 + qn0 + c_dn(e)) * H + (j0 + qu0 + c_du(e));
  };
  // Elements of length 0 (a clamped bad value) never run a step: h_n = h0, dh0 = dh_n.
#pragma unroll
  for (int e = 0; e < 4; ++e)
    if (inr[e] && Ln[c_dn(e)] == 0) {
      if constexpr (kBwd) a.dh0[gidx(e)] = a.dh_n[gidx(e)];
      else a.h_n[gidx(e)] = a.h0[gidx(e)];
    }

  // ---- Prefetch two walk steps ahead: P (forward) / dY and Y (backward) of step i live in pf0, of i+1 in pf1.
  auto step_time = [&](int i) { return kBwd ? (a.reverse ? i : T_ - 1 - i) : (a.reverse ? T_ - 1 - i : i); };
  T pf0[2][4], pf1[2][4], pf2[2][4];
  auto prefetch = [&](int i, T (&dst)[2][4]) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      dst[0][e] = from_f<T>(0.f);
      dst[1][e] = from_f<T>(0.f);
      if (inr[e] && i < T_) {
        const size_t o = static_cast<size_t>(step_time(i)) * B * H + gidx(e);
        if constexpr (kBwd) {
          dst[0][e] = a.dY[o];
          dst[1][e] = a.Ysaved[o];
        } else {
          dst[0][e] = a.P[o];
        }
      }
    }
  };
  prefetch(0, pf0);
  prefetch(1, pf1);
  T dhn[4];
#pragma unroll
  for (int e = 0; e < 4; ++e) dhn[e] = (kBwd && inr[e]) ? a.dh_n[gidx(e)] : from_f<T>(0.f);

  // ---- Arm the first two phases: slot 1 receives d_1 (used by step 1), slot 0 receives d_2; each phase expects one
  // local arrival (this one) and (C-1) chunks of transaction bytes from the peers.
  const uint32_t tx_bytes = static_cast<uint32_t>((pl.C - 1) * pl.chunk);
  if (tid == 0) {
    if (1 < iters) mbar_arrive_expect_tx(bars + 8 * 1, tx_bytes);
    if (2 < iters) mbar_arrive_expect_tx(bars + 8 * 0, tx_bytes);
  }
  // Every CTA of the cluster has initialized its mbarriers and slots before any peer copies into them.
  cluster_arrive();
  cluster_wait();

  for (int i = 0; i < iters; ++i) {
    const int s = i & 1;  // slot of d_i, the state this step reads
    const bool send = i + 1 < iters;
    prefetch(i + 2, pf2);  // its latency overlaps this whole step
    if (i >= 1) mbar_wait(bars + 8 * s, static_cast<uint32_t>(((i - 1) >> 1) & 1));

    // ---- MMA: acc[mt][nt] += A[mt][kt] * state tile (kt, nt) over this warp's k tiles.
    float acc[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[mt][nt][c] = 0.f;
    const saddr_t slot_a = sbase + static_cast<saddr_t>(pl.off_slots + s * pl.slot);
#pragma unroll
    for (int kt = 0; kt < KT; ++kt) {
      if (kt < kt_my) {
        const int ktg = kt0 + kt, r = ktg / mt_n, kc = ktg - r * mt_n;  // chunk r, tile kc within it
        uint32_t bf[NP][NT][MPQ];
        load_b_frags<NP, NT, MPQ>(bf, slot_a + static_cast<saddr_t>(r * pl.chunk + kc * 16 * E), pl.pitch, lane);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
          if (mt < mt_n) {
#pragma unroll
            for (int p = 0; p < NP; ++p)
#pragma unroll
              for (int nt = 0; nt < NT; ++nt) {
                if constexpr (kTF32) {  // two k8 halves
                  const uint32_t a0[4] = {A[mt][kt][0], A[mt][kt][1], A[mt][kt][2], A[mt][kt][3]};
                  const uint32_t a1[4] = {A[mt][kt][4], A[mt][kt][5], A[mt][kt][6], A[mt][kt][7]};
                  const uint32_t b0[2] = {bf[p][nt][0], bf[p][nt][1]};
                  const uint32_t b1[2] = {bf[p][nt][2], bf[p][nt][3]};
                  mma_1688_tf32(acc[mt][nt], a0, b0);
                  mma_1688_tf32(acc[mt][nt], a1, b1);
                } else {
                  mma_16816<T>(acc[mt][nt], A[mt][kt], bf[p][nt]);
                }
              }
          }
      }
    }
    if (warp < pl.mma_warps) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
        if (mt < mt_n) {
#pragma unroll
          for (int nt = 0; nt < NT; ++nt)
            red[((warp * mt_n + mt) * NT + nt) * 32 + lane] =
                make_float4(acc[mt][nt][0], acc[mt][nt][1], acc[mt][nt][2], acc[mt][nt][3]);
        }
    }
    __syncthreads();  // partial sums complete; every thread is past this step's mbarrier wait
    // Re-arm slot s for d_{i+2} (its phase for d_i completed, and every thread of this CTA has seen that).
    if (tid == 0 && i >= 1 && i + 2 < iters) mbar_arrive_expect_tx(bars + 8 * s, tx_bytes);

    // ---- Epilogue: fixed-order sum over the warps, activation / gradient, new state into our chunk of slot s^1.
    T outv[4];      // Y_t (forward) / dA_t (backward) of each position
    T dh0v[4];      // backward: dh0 value
    bool last[4];   // forward: h_n written this step; backward: dh0 written this step
    const int t = step_time(i);
    if (epi) {
      float c[4] = {0.f, 0.f, 0.f, 0.f};
      for (int w = 0; w < pl.mma_warps; ++w) {
        const float4 v = red[((w * mt_n + q_mt) * NT + q_nt) * 32 + q_lane];
        c[0] += v.x;
        c[1] += v.y;
        c[2] += v.z;
        c[3] += v.w;
      }
      unsigned char* mine = slots + (s ^ 1) * pl.slot + rank * pl.chunk;  // our chunk of the next slot
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int u = qu0 + c_du(e), n = qn0 + c_dn(e);
        const int L = Ln[c_dn(e)];
        outv[e] = from_f<T>(0.f);
        dh0v[e] = from_f<T>(0.f);
        last[e] = false;
        if constexpr (!kBwd) {
          T st = from_f<T>(0.f);  // next state; 0 for padding units / rows
          if (inr[e]) {
            if (t < L) {
              const T h = from_f<T>(act_f(to_f<T>(pf0[0][e]) + c[e], a.act));  // rounded to storage (contract)
              st = h;
              outv[e] = h;
              last[e] = a.reverse ? (t == 0) : (t == L - 1);
            } else {
              // Padded step: the state is carried unchanged (reverse: still h0 when the first step t = L-1 comes).
              st = *reinterpret_cast<const T*>(slots + s * pl.slot + rank * pl.chunk + n * pl.pitch + u * E);
            }
          }
          if (send) *reinterpret_cast<T*>(mine + n * pl.pitch + u * E) = st;
        } else {
          float x = 0.f;  // fp32 carry dA_t pushed to the next walk step (0 at padded steps and padding)
          if (inr[e]) {
            if (i > 0) {
              const int tp = a.reverse ? i - 1 : T_ - i;  // time of the previous walk step
              last[e] = tp < L && (a.reverse ? (tp == L - 1) : (tp == 0));  // it was the first step in order
              dh0v[e] = from_f<T>(c[e]);                                   // dh0 = dA_first @ w_hh
            }
            if (i < T_ && t < L) {
              const bool lst = a.reverse ? (t == 0) : (t == L - 1);
              const float g = to_f<T>(pf0[0][e]) + (lst ? to_f<T>(dhn[e]) : c[e]);
              x = act_backward_from_out(to_f<T>(pf0[1][e]), g, a.act);
              outv[e] = from_f<T>(x);
            }
          }
          if (send) {
            const T hi = from_f<T>(x);  // TF32: the fp32 carry itself (one plane; rounded to tf32 when loaded)
            *reinterpret_cast<T*>(mine + n * pl.pitch + u * E) = hi;
            if constexpr (NP == 2)
              *reinterpret_cast<T*>(mine + (BT + n) * pl.pitch + u * E) = from_f<T>(x - to_f<T>(hi));
          }
        }
      }
      if (send) fence_proxy_async();  // our generic stores above are read next by the bulk copy (async proxy)
    }
    __syncthreads();  // our chunk of slot s^1 is complete; the partial sums may be overwritten by step i+1
    // ---- Push our chunk to every peer: one bulk copy each, lane r of warp 0 to peer r.
    if (send && warp == 0 && lane < pl.C && lane != rank) {
      const saddr_t src = sbase + static_cast<saddr_t>(pl.off_slots + (s ^ 1) * pl.slot + rank * pl.chunk);
      bulk_copy_to_peer(map_peer(src, lane), src, static_cast<uint32_t>(pl.chunk),
                        map_peer(bars + 8 * (s ^ 1), lane));
    }
    // ---- Global stores of this step, after the push.
    if (epi) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        if (!inr[e]) continue;
        if constexpr (kBwd) {
          if (last[e]) a.dh0[gidx(e)] = dh0v[e];
          if (i < T_) a.dA[static_cast<size_t>(t) * B * H + gidx(e)] = outv[e];
        } else {
          a.Y[static_cast<size_t>(t) * B * H + gidx(e)] = outv[e];
          if (last[e]) a.h_n[gidx(e)] = outv[e];
        }
      }
    }
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      pf0[0][e] = pf1[0][e];
      pf0[1][e] = pf1[1][e];
      pf1[0][e] = pf2[0][e];
      pf1[1][e] = pf2[1][e];
    }
  }
  // No CTA exits while a peer's copy may still read its shared memory or write into it: every CTA arrives here only
  // after its last wait, i.e. after every copy into it landed, and copies out of it are copies into its peers.
  cluster_arrive();
  cluster_wait();
#else
  // Never launched below sm_90: the launcher checks the device and the binary's architecture first.
  __trap();
#endif
}

template <typename T>
using KernelFn = void (*)(const Args<T>);

// The kernel of a plan's class: (MT, KT) = (1, 2), (2, 4) or (4, 8) by mt_n; NT = BT / 8.
template <typename T, bool kBwd>
KernelFn<T> pick_kernel(int mt_n, int NT) {
  const int mt = class_mt(mt_n, sizeof(T));
  if constexpr (sizeof(T) == 4) {  // TF32 classes: (1, 2), (2, 4), (3, 6)
    if (NT == 1) {
      if (mt == 1) return elman_cluster2_kernel<T, 1, 2, 1, kBwd>;
      if (mt == 2) return elman_cluster2_kernel<T, 2, 4, 1, kBwd>;
      return elman_cluster2_kernel<T, 3, 6, 1, kBwd>;
    }
    if (mt == 1) return elman_cluster2_kernel<T, 1, 2, 2, kBwd>;
    if (mt == 2) return elman_cluster2_kernel<T, 2, 4, 2, kBwd>;
    return elman_cluster2_kernel<T, 3, 6, 2, kBwd>;
  } else {
    if (NT == 1) {
      if (mt == 1) return elman_cluster2_kernel<T, 1, 2, 1, kBwd>;
      if (mt == 2) return elman_cluster2_kernel<T, 2, 4, 1, kBwd>;
      return elman_cluster2_kernel<T, 4, 8, 1, kBwd>;
    }
    if (mt == 1) return elman_cluster2_kernel<T, 1, 2, 2, kBwd>;
    if (mt == 2) return elman_cluster2_kernel<T, 2, 4, 2, kBwd>;
    return elman_cluster2_kernel<T, 4, 8, 2, kBwd>;
  }
}

// Candidate plans, best first: the fewest units per CTA (largest cluster, shortest per-step MMA chain) whose
// shared memory fits; BT = 8 while ntiles * C <= sms, else 16 (fewer, wider clusters). The CPU emulation runs these;
// the launcher makes the same choice with the device's cluster occupancy instead of sms (launch_cluster2).
// force_mt / force_nt > 0 (tests) pin mt_n / NT. Returns the number of plans written (<= 4).
inline int plan_candidates(int H, int B, bool bwd, int elem, int sms, int smem_limit, int force_mt, int force_nt,
                           Plan* out) {
  int n = 0;
  const int mt_min = ceil_div(H, 16 * kMaxCluster);
  const int planes = (bwd && elem == 2) ? 2 : 1;
  for (int mt = mt_min < 1 ? 1 : mt_min; mt <= max_mt(elem); ++mt) {
    if (force_mt > 0 && mt != force_mt) continue;
    int NT = B <= 8 ? 1 : 2;
    if (NT == 2) {
      Plan p1;
      if (make_plan(H, B, mt, 1, planes, elem, &p1) && static_cast<long long>(p1.ntiles) * p1.C <= sms) NT = 1;
    }
    if (force_nt > 0) NT = force_nt;
    Plan p;
    if (!make_plan(H, B, mt, NT, planes, elem, &p) || p.smem > smem_limit) continue;
    out[n++] = p;
  }
  return n;
}

}  // namespace c2
}  // namespace cuda
}  // namespace fused_rnn

// ===============================================================================================================
// Host launcher (not in the emulation). Returns false -- having launched nothing and leaving no CUDA error pending --
// when no plan can run (H too large, shared memory, cluster occupancy, pre-sm_90 device or binary), after noting why
// in the tier record (dispatch_log::note_refusal; `arch` refusals make the dispatcher warn once); on a launch it notes
// the plan (dispatch_log::note_detail, only while the record is on).
#ifndef FUSED_RNN_EMULATE
#include <cstdio>
#include <string>

#include "dispatch_log.h"

namespace fused_rnn {
namespace cuda {
namespace c2 {

inline bool refuse() {
  (void)cudaGetLastError();
  return false;
}
inline bool refuse(const std::string& why, bool arch = false) {
  dispatch_log::note_refusal(why, arch);
  return refuse();
}

template <typename... Xs>
inline std::string fmt(const char* f, Xs... args) {
  char buf[512];
  std::snprintf(buf, sizeof(buf), f, args...);
  return buf;
}
inline std::string cuda_err(const char* what, cudaError_t e) {
  return std::string("cluster2: ") + what + ": " + cudaGetErrorString(e);
}

// Prepares the kernel of plan `pl` (dynamic smem, non-portable cluster size) and fills `cfg`; returns how many of its
// clusters fit on the device at once, or 0 with `why` set (a failed attribute call or occupancy query -- the error is
// cleared -- or no cluster of this size schedulable: a smaller cluster may still run), or -1 after noting an `arch`
// refusal (no kernel image, or a binary without sm_90 code: no plan can run).
template <typename T, bool kBwd>
int prepare(const Plan& pl, cudaStream_t stream, cudaLaunchConfig_t* cfg, cudaLaunchAttribute* attr,
            std::string* why) {
  const KernelFn<T> kern = pick_kernel<T, kBwd>(pl.mt_n, pl.BT / 8);
  cudaFuncAttributes fa{};
  cudaError_t e = cudaFuncGetAttributes(&fa, kern);
  if (e != cudaSuccess) {
    refuse(fmt("cluster2: no kernel image for this device (built for %s): %s", arch::built_archs(),
               cudaGetErrorString(e)),
           true);
    return -1;
  }
  if (fa.binaryVersion < 90) {  // no sm_90 code in this build: the body would be the __trap() stub
    refuse(fmt("cluster2: this build has no sm_90+ code for the cluster2 kernels (the device runs sm_%d code; built "
               "for %s)",
               fa.binaryVersion, arch::built_archs()),
           true);
    return -1;
  }
  const auto failed = [&](const char* what) {
    *why = std::string(what) + ": " + cudaGetErrorString(e);
    refuse();
    return 0;
  };
  if ((e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, pl.smem)) != cudaSuccess)
    return failed("cudaFuncSetAttribute (dynamic shared memory)");
  if (pl.C > 8 &&
      (e = cudaFuncSetAttribute(kern, cudaFuncAttributeNonPortableClusterSizeAllowed, 1)) != cudaSuccess)
    return failed("cudaFuncSetAttribute (non-portable cluster size)");
  *cfg = cudaLaunchConfig_t{};
  cfg->gridDim = dim3(pl.C, pl.ntiles, 1);
  cfg->blockDim = dim3(kThreads, 1, 1);
  cfg->dynamicSmemBytes = pl.smem;
  cfg->stream = stream;
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = pl.C;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg->attrs = attr;
  cfg->numAttrs = 1;
  int clusters = 0;
  // A cluster is co-scheduled as a unit: when one fits at all, the mbarrier waits between its CTAs always complete
  // (clusters of different batch tiles never wait on each other, so more clusters than fit just run in waves).
  // A cluster size the device cannot schedule makes the query fail or answer 0: both mean "try a smaller cluster".
  if ((e = cudaOccupancyMaxActiveClusters(&clusters, kern, cfg)) != cudaSuccess)
    return failed("cudaOccupancyMaxActiveClusters");
  if (clusters < 1)
    *why = fmt("a %d-CTA cluster (mt_n=%d, %d B of shared memory per CTA) cannot be scheduled on this device "
               "(cudaOccupancyMaxActiveClusters: 0)",
               pl.C, pl.mt_n, pl.smem);
  return clusters;
}

template <typename T, bool kBwd>
bool launch_cluster2(Args<T> a, cudaStream_t stream, int force_mt = 0, int force_nt = 0) {
  constexpr int elem = static_cast<int>(sizeof(T));
  constexpr int planes = (kBwd && elem == 2) ? 2 : 1;
  const int mt_min = ceil_div(a.H, 16 * kMaxCluster);
  if (mt_min > max_mt(elem))
    return refuse(fmt("cluster2: H=%d > %d (%s): w_hh does not fit in the registers of a %d-CTA cluster", a.H,
                      16 * kMaxCluster * max_mt(elem), elem == 4 ? "fp32 as TF32" : "fp16/bf16", kMaxCluster));
  int dev = 0, major = 0, minor = 0, optin = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return refuse(cuda_err("cudaGetDevice", e));
  if ((e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev)) != cudaSuccess ||
      (e = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev)) != cudaSuccess ||
      (e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev)) != cudaSuccess)
    return refuse(cuda_err("cudaDeviceGetAttribute", e));
  if (major < 9)
    return refuse(fmt("cluster2: thread-block clusters and DSMEM bulk copies need compute capability 9.0 or newer; "
                      "this device is %d.%d",
                      major, minor),
                  true);
  // The smallest mt_n (largest cluster) that can run. Batch tiles of 8 rows while all their clusters fit on the
  // device at once (cudaOccupancyMaxActiveClusters, not #SMs / C: a GPC holds whole clusters only), else 16.
  std::string last = "no candidate plan";
  for (int mt = mt_min; mt <= max_mt(elem); ++mt) {
    if (force_mt > 0 && mt != force_mt) continue;
    Plan p8, p16;
    cudaLaunchConfig_t cfg8, cfg16;
    cudaLaunchAttribute at8[1], at16[1];
    const bool ok8 = (force_nt == 0 || force_nt == 1) && make_plan(a.H, a.B, mt, 1, planes, elem, &p8) &&
                     p8.smem <= optin && p8.ntiles <= 65535;
    std::string why8, why16;
    const int fit8 = ok8 ? prepare<T, kBwd>(p8, stream, &cfg8, at8, &why8) : 0;
    if (fit8 < 0) return false;  // refusal noted (no sm_90 code, or a failed attribute call)
    const bool want16 = force_nt == 2 || (force_nt == 0 && a.B > 8 && fit8 < (ok8 ? p8.ntiles : 1 << 30));
    const bool ok16 = want16 && make_plan(a.H, a.B, mt, 2, planes, elem, &p16) && p16.smem <= optin &&
                      p16.ntiles <= 65535;
    const int fit16 = ok16 ? prepare<T, kBwd>(p16, stream, &cfg16, at16, &why16) : 0;
    if (fit16 < 0) return false;
    const bool use16 = fit16 >= 1;  // only tried when preferred (or forced) over 8-row tiles
    if (!use16 && fit8 < 1) {  // why this mt_n cannot run; the last one tried is the refusal's reason
      Plan q;
      if (ok8 || ok16)
        last = !why16.empty() ? why16 : why8;
      else if (!make_plan(a.H, a.B, mt, force_nt == 2 ? 2 : 1, planes, elem, &q))
        last = fmt("mt_n=%d: no plan of this class (forced batch tile %d)", mt, force_nt);
      else if (q.smem > optin)
        last = fmt("mt_n=%d: %d B of shared memory per CTA > the device's opt-in limit of %d B", mt, q.smem, optin);
      else
        last = fmt("B=%d needs %d clusters along the batch (grid y <= 65535)", a.B, q.ntiles);
      continue;
    }
    const Plan& pl = use16 ? p16 : p8;
    cudaLaunchConfig_t& cfg = use16 ? cfg16 : cfg8;
    a.plan = pl;
    if ((e = cudaLaunchKernelEx(&cfg, pick_kernel<T, kBwd>(pl.mt_n, pl.BT / 8), a)) != cudaSuccess)
      return refuse(cuda_err("cudaLaunchKernelEx", e));
    if (dispatch_log::enabled())
      dispatch_log::note_detail(fmt("cluster=%d mt_n=%d hs=%d bt=%d tiles=%d active=%d smem=%d%s", pl.C, pl.mt_n,
                                    pl.HS, pl.BT, pl.ntiles, use16 ? fit16 : fit8, pl.smem,
                                    elem == 4 ? " tf32" : ""));
    return true;
  }
  return refuse(fmt("cluster2: no plan can run B=%d H=%d on this device (last candidate %s)", a.B, a.H,
                    last.c_str()));
}

}  // namespace c2
}  // namespace cuda
}  // namespace fused_rnn
#endif  // FUSED_RNN_EMULATE
