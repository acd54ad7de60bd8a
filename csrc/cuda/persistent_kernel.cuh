// Persistent hidden-partitioned tiers of fused_rnn::elman_fwd / elman_bwd (issue 7; floors and resource use in
// csrc/cuda/NOTES_persistent.md). Two launch shapes share one kernel template:
//
//   persistent (kCluster = false)  a cooperative grid of nblk CTAs; CTA c owns hidden units [c*HS, c*HS + HS) and
//                                  keeps that slice of w_hh in shared memory for all T. Every CTA handles every batch
//                                  tile in turn; the state of step t is exchanged through global memory (forward: Y
//                                  itself, backward: an fp32 ping-pong buffer) with ONE grid.sync() per step.
//   cluster    (kCluster = true)   a Hopper thread-block cluster of nblk CTAs per batch tile (sm_90 only); the state
//                                  lives in a two-slot ping-pong buffer in every CTA's shared memory, each CTA pushes
//                                  its slice of the new state into all CTAs' next slot through distributed shared
//                                  memory, and ONE cluster.sync() per step publishes it. Clusters (batch tiles) are
//                                  independent of each other.
//
// Shapes: T time, B batch, H hidden, BT batch-tile rows (1, 4 or 8: compile-time so accumulators stay in registers),
// HS hidden units per CTA (a multiple of kRows). All arithmetic is fp32 (FMA, IEEE tanhf); the forward state is the
// stored output rounded to the storage dtype; the backward carry dA stays fp32 in the exchange buffer.
//
// Determinism: each output is one warp's dot product in a fixed order (lane-strided partial sums, then a fixed xor
// butterfly), no atomics -- repeated runs are bitwise equal.
#pragma once

#include <cstdint>

#include <cstdio>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "arch.h"
#include "cluster_plan.h"
#include "dispatch_log.h"

namespace fused_rnn {
namespace cuda {
namespace persistent_detail {

namespace cg = cooperative_groups;

constexpr int kThreads = 256;  // 8 warps per CTA
constexpr int kWarps = kThreads / 32;
constexpr int kRows = plan::kRows;  // hidden rows per warp pass: kRows * BT accumulators, kRows * BT <= 32 (one lane each)
constexpr int kStageU = 4;  // staged elements per thread and row in flight at once (persistent tier)

// Everything a kernel needs, by value (a cooperative launch passes kernel arguments as an array of pointers).
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
  float* xbuf;  // [2, B, H] fp32 exchange buffer of the persistent backward (nullptr otherwise)
  const T* w;   // [H, H]
  const int64_t* lengths;  // [B] or nullptr
  int T_, B, H;
  int HS;  // hidden units per CTA (multiple of kRows)
  bool reverse;
  int act;  // 0 tanh, 1 relu
};

template <typename T>
__device__ __forceinline__ float to_f(T x);
template <>
__device__ __forceinline__ float to_f<float>(float x) { return x; }
template <>
__device__ __forceinline__ float to_f<__half>(__half x) { return __half2float(x); }
template <>
__device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ float from_f<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Load that bypasses L1 (ld.global.cg): used for data another SM wrote in this launch. grid.sync() already orders
// it (its fences are GPU-scope), this only removes any doubt about a stale L1 line shared with an earlier step's row.
template <typename T>
__device__ __forceinline__ float ld_cg(const T* p) {
  if constexpr (sizeof(T) == 4) {
    return __ldcg(reinterpret_cast<const float*>(p));
  } else {
    unsigned short bits = __ldcg(reinterpret_cast<const unsigned short*>(p));
    T v;
    memcpy(&v, &bits, sizeof(T));
    return to_f<T>(v);
  }
}

__device__ __forceinline__ float act_f(float a, int act) {
  // relu: `a <= 0 ? 0 : a` keeps NaN (the comparison is false), as torch.relu does; fmaxf would drop it.
  return act == 0 ? tanhf(a) : (a <= 0.f ? 0.f : a);
}
__device__ __forceinline__ float act_backward_from_out(float h, float g, int act) {
  // relu: the select `h <= 0 ? 0 : g`, torch's threshold_backward (nn.RNN): 0 for a dead unit even where g is inf or
  // NaN (a 0/1 factor gave 0 * inf = NaN), and a NaN state passes g.
  return act == 0 ? (1.f - h * h) * g : (h <= 0.f ? 0.f : g);
}

__device__ __forceinline__ int length_of(const int64_t* lengths, int b, int T) {
  if (lengths == nullptr) return T;
  int64_t L = lengths[b];
  // Clamp so a bad value can never index out of bounds (the contract promises [1, T]).
  return L < 0 ? 0 : (L > T ? T : static_cast<int>(L));
}

// c[rr][bb] = sum_k Ws[rr][k] * X[bb][k] for the CTA's HS rows and the tile's BT rows, then epi(rr, bb, c) on one
// lane per (rr, bb). Ws: [HS][H] storage dtype (shared), X: [BT][H] fp32 (shared, local or cluster-owned).
// Lanes walk k with stride 32, so consecutive lanes read consecutive words: no bank conflicts.
// No barrier inside: every thread may leave early per warp without affecting the CTA-wide barriers around it.
template <typename T, int BT, class Epi>
__device__ __forceinline__ void matvec_tile(const T* __restrict__ Ws, const float* __restrict__ X, int H, int HS,
                                            Epi&& epi) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int r0 = warp * kRows; r0 < HS; r0 += kWarps * kRows) {
    float acc[kRows][BT];
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int b = 0; b < BT; ++b) acc[r][b] = 0.f;
    const T* w0 = Ws + static_cast<size_t>(r0) * H;
    for (int k = lane; k < H; k += 32) {
      float wv[kRows];
#pragma unroll
      for (int r = 0; r < kRows; ++r) wv[r] = to_f<T>(w0[static_cast<size_t>(r) * H + k]);
#pragma unroll
      for (int b = 0; b < BT; ++b) {
        const float x = X[b * H + k];
#pragma unroll
        for (int r = 0; r < kRows; ++r) acc[r][b] = fmaf(wv[r], x, acc[r][b]);
      }
    }
    // Fixed xor butterfly: every lane ends with the same full sum, in the same order on every run (deterministic).
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int b = 0; b < BT; ++b)
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) acc[r][b] += __shfl_xor_sync(0xffffffffu, acc[r][b], off);
    // Lane l takes pair (l / BT, l % BT); selection by compile-time indices keeps acc in registers.
    float mine = 0.f;
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int b = 0; b < BT; ++b)
        if (lane == r * BT + b) mine = acc[r][b];
    if (lane < kRows * BT) epi(r0 + lane / BT, lane % BT, mine);
  }
}

// Loads this CTA's weight slice into shared memory: forward Ws[rr][k] = w[j0+rr][k] (rows of w_hh: a = s @ w_hhᵀ);
// backward Ws[rr][j] = w[j][j0+rr] (columns: carry = dA @ w_hh). Rows past H are zero so the matvec needs no guard.
template <typename T, bool kBwd>
__device__ __forceinline__ void load_weight_slice(T* Ws, const T* __restrict__ w, int H, int HS, int j0) {
  const int n = HS * H;
  for (int idx = threadIdx.x; idx < n; idx += kThreads) {
    int rr, k;
    if constexpr (kBwd) {  // consecutive threads take consecutive columns of one row of w: coalesced reads
      k = idx / HS;
      rr = idx % HS;
    } else {
      rr = idx / H;
      k = idx % H;
    }
    const int j = j0 + rr;
    T v = from_f<T>(0.f);
    if (j < H) v = kBwd ? w[static_cast<size_t>(k) * H + j] : w[static_cast<size_t>(j) * H + k];
    Ws[static_cast<size_t>(rr) * H + k] = v;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Per-output step bodies (shared by both launch shapes). Walk iteration i visits time t:
//   forward op:  t = i (reverse: T-1-i), i in [0, T)
//   backward op: walks the order backwards, t = T-1-i (reverse: i), plus one extra iteration i = T with no step that
//                only finishes dh0 = dA_first @ w_hh for elements whose first step in order was the last walk step.

// Forward output (b, j) at time t with c = (s_t @ w_hhᵀ)[b][j]. Returns the state carried to the next step.
template <typename T>
__device__ __forceinline__ float fwd_output(const Args<T>& a, int t, int b, int j, float c, float s_prev) {
  const int L = length_of(a.lengths, b, a.T_);
  const size_t o = (static_cast<size_t>(t) * a.B + b) * a.H + j;
  const bool valid = t < L;
  float hv = 0.f;
  if (valid) {
    const T h = from_f<T>(act_f(to_f<T>(a.P[o]) + c, a.act));  // rounded to storage every step (contract)
    hv = to_f<T>(h);
    a.Y[o] = h;
    const bool last = a.reverse ? (t == 0) : (t == L - 1);
    if (last) a.h_n[static_cast<size_t>(b) * a.H + j] = h;
  } else {
    a.Y[o] = from_f<T>(0.f);  // padded steps are exactly 0
  }
  // Masking for finished / not-yet-started sequences: the state is carried unchanged (reverse: it is still h0 when
  // the element's first step t = L-1 comes).
  return valid ? hv : s_prev;
}

// Backward output (b, k) at walk iteration i with c = (x_{i-1} @ w_hh)[b][k], where x_{i-1} is the fp32 dA of the
// previous walk step (0 when it was padded). Returns the fp32 dA this step contributes to the next exchange.
template <typename T>
__device__ __forceinline__ float bwd_output(const Args<T>& a, int i, int b, int k, float c) {
  const int T_ = a.T_;
  const int L = length_of(a.lengths, b, T_);
  const size_t bk = static_cast<size_t>(b) * a.H + k;
  if (i > 0) {
    const int tp = a.reverse ? i - 1 : T_ - i;  // time of the previous walk step
    const bool first_in_order = a.reverse ? (tp == L - 1) : (tp == 0);
    if (tp < L && first_in_order) a.dh0[bk] = from_f<T>(c);  // dh0 = dA_first @ w_hh
  }
  if (i >= T_) return 0.f;
  const int t = a.reverse ? i : T_ - 1 - i;
  const size_t o = static_cast<size_t>(t) * a.B * a.H + bk;
  if (t >= L) {
    a.dA[o] = from_f<T>(0.f);
    return 0.f;
  }
  const bool last_in_order = a.reverse ? (t == 0) : (t == L - 1);
  const float g = to_f<T>(a.dY[o]) + (last_in_order ? to_f<T>(a.dh_n[bk]) : c);
  const float da = act_backward_from_out(to_f<T>(a.Ysaved[o]), g, a.act);
  a.dA[o] = from_f<T>(da);
  return da;  // fp32 carry (contract: the carried gradient stays fp32)
}

// Elements with length 0 (only reachable through a clamped bad value) never run a step: h_n = h0, dh0 = dh_n, as the
// reference's carry gives.
template <typename T, bool kBwd>
__device__ __forceinline__ void zero_length_outputs(const Args<T>& a, int b_begin, int b_end, int j0) {
  for (int idx = threadIdx.x; idx < (b_end - b_begin) * a.HS; idx += kThreads) {
    const int b = b_begin + idx / a.HS, j = j0 + idx % a.HS;
    if (b >= a.B || j >= a.H || length_of(a.lengths, b, a.T_) != 0) continue;
    const size_t o = static_cast<size_t>(b) * a.H + j;
    if constexpr (kBwd) a.dh0[o] = a.dh_n[o];
    else a.h_n[o] = a.h0[o];
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Cooperative-grid kernel. Grid: nblk CTAs (1-D), each owns hidden units [blockIdx.x*HS, +HS). Dynamic smem:
// Ws [HS][H] storage dtype, then X [BT][H] fp32 (the batch tile's previous state / carry, staged from global).
template <typename T, int BT, bool kBwd>
__global__ void __launch_bounds__(kThreads, 1) elman_coop_kernel(const Args<T> a) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* Ws = reinterpret_cast<T*>(smem_raw);
  float* X = reinterpret_cast<float*>(smem_raw + ((static_cast<size_t>(a.HS) * a.H * sizeof(T) + 15) / 16) * 16);
  cg::grid_group grid = cg::this_grid();
  const int j0 = blockIdx.x * a.HS;
  const int H = a.H, B = a.B, T_ = a.T_;

  load_weight_slice<T, kBwd>(Ws, a.w, H, a.HS, j0);
  zero_length_outputs<T, kBwd>(a, 0, B, j0);
  // (the __syncthreads() at the top of the first tile orders Ws before its first read)

  const int iters = kBwd ? T_ + 1 : T_;
  // Every CTA runs exactly `iters` iterations and `iters - 1` grid barriers, whatever its rows or the lengths: no
  // early return anywhere (a CTA that skipped a grid.sync() would hang the others).
  for (int i = 0; i < iters; ++i) {
    const int t = kBwd ? (a.reverse ? i : T_ - 1 - i) : (a.reverse ? T_ - 1 - i : i);
    for (int b0 = 0; b0 < B; b0 += BT) {
      __syncthreads();  // the previous tile's matvec has finished reading X (and, at the start, Ws is complete)
      // Row sources of this tile. Forward: s_t is h0 at the element's first step, else the previous step's output
      // read from Y (written by its owner CTA before the last grid.sync()); Y[t±1] is a different slot from the
      // Y[t] written in this step, so Y itself serves as the T-deep ping-pong buffer, and a padded predecessor
      // reads 0 that only feeds masked outputs. Backward: x_{i-1}, the fp32 dA of the previous walk step in
      // xbuf[i%2] (nothing before the first walk step). nullptr = a row of zeros.
      const void* src[BT];
#pragma unroll
      for (int bb = 0; bb < BT; ++bb) {
        const int b = b0 + bb;
        src[bb] = nullptr;
        if (b >= B) continue;
        if constexpr (kBwd) {
          if (i > 0) src[bb] = a.xbuf + (static_cast<size_t>(i % 2) * B + b) * H;
        } else {
          const int L = length_of(a.lengths, b, T_);
          const bool from_h0 = a.reverse ? (t + 1 >= L) : (t == 0);
          src[bb] = from_h0 ? a.h0 + static_cast<size_t>(b) * H
                            : a.Y + (static_cast<size_t>(a.reverse ? t + 1 : t - 1) * B + b) * H;
        }
      }
      // BT x kStageU loads in flight per thread before the first store: staging one element at a time (one L2
      // round trip after another) made it the largest part of a step. H200, 2026-11-27, T=1024 fp32 forward:
      // 54 -> 12.4 us/step at B=16, H=2048; 5.3 -> 2.9 at B=1, H=2048.
      for (int k0 = threadIdx.x; k0 < H; k0 += kThreads * kStageU) {
        float v[BT][kStageU];
#pragma unroll
        for (int bb = 0; bb < BT; ++bb)
#pragma unroll
          for (int u = 0; u < kStageU; ++u) {
            const int k = k0 + u * kThreads;
            float x = 0.f;
            if (src[bb] != nullptr && k < H) {
              if constexpr (kBwd) x = __ldcg(static_cast<const float*>(src[bb]) + k);
              else x = ld_cg<T>(static_cast<const T*>(src[bb]) + k);
            }
            v[bb][u] = x;
          }
#pragma unroll
        for (int bb = 0; bb < BT; ++bb)
#pragma unroll
          for (int u = 0; u < kStageU; ++u) {
            const int k = k0 + u * kThreads;
            if (k < H) X[bb * H + k] = v[bb][u];
          }
      }
      __syncthreads();  // X complete before any warp reads it
      matvec_tile<T, BT>(Ws, X, H, a.HS, [&](int rr, int bb, float c) {
        const int j = j0 + rr, b = b0 + bb;
        if (j >= H || b >= B) return;
        if constexpr (kBwd) {
          const float x = bwd_output<T>(a, i, b, j, c);
          if (i < T_) a.xbuf[(static_cast<size_t>((i + 1) % 2) * B + b) * H + j] = x;
        } else {
          fwd_output<T>(a, t, b, j, c, 0.f);  // carry not needed: a masked element's state is never read again
        }
      });
    }
    // ONE grid barrier per step. Why it is enough: step i reads slot S_i (Y[t∓1] or xbuf[i%2]) and writes slot
    // S_{i+1} != S_i; the barrier after step i-1 ordered all writes of S_i before these reads, and the barrier
    // after step i orders all reads of S_i (xbuf: the slot step i+1 overwrites) before step i+1's writes.
    // Visibility: grid.sync() includes GPU-scope fences, so global writes before it are visible to every CTA after.
    if (i + 1 < iters) grid.sync();
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Cluster kernel (sm_90+). Grid: (nblk, ntiles) with cluster dims (nblk, 1, 1); CTA rank r owns hidden units
// [r*HS, +HS) of batch tile blockIdx.y. Dynamic smem: Ws [HS][H] storage dtype, then S [2][BT][H] fp32 (state /
// carry ping-pong; every CTA holds the whole tile's vector).
template <typename T, int BT, bool kBwd>
__global__ void __launch_bounds__(kThreads, 1) elman_cluster_kernel(const Args<T> a) {
#if defined(FUSED_RNN_DEVICE_CLUSTERS)  // arch.h: sm_90 and newer (clusters, DSMEM, cluster barriers)
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* Ws = reinterpret_cast<T*>(smem_raw);
  float* S = reinterpret_cast<float*>(smem_raw + ((static_cast<size_t>(a.HS) * a.H * sizeof(T) + 15) / 16) * 16);
  cg::cluster_group cluster = cg::this_cluster();
  const int nblk = static_cast<int>(cluster.num_blocks());
  const int rank = static_cast<int>(cluster.block_rank());
  const int j0 = rank * a.HS;
  const int b0 = blockIdx.y * BT;
  const int H = a.H, B = a.B, T_ = a.T_;
  const int tile = BT * H;

  load_weight_slice<T, kBwd>(Ws, a.w, H, a.HS, j0);
  zero_length_outputs<T, kBwd>(a, b0, b0 + BT, j0);
  // Slot 0 = the state before the first walk step (forward: h0; backward: no carry yet), slot 1 zero; rows past B
  // stay 0 in both slots for the whole run (nobody pushes them).
  for (int idx = threadIdx.x; idx < 2 * tile; idx += kThreads) {
    const int b = b0 + (idx % tile) / H, k = idx % H;
    float v = 0.f;
    if (!kBwd && idx < tile && b < B) v = to_f<T>(a.h0[static_cast<size_t>(b) * H + k]);
    S[idx] = v;
  }
  // Before any CTA writes into another's shared memory, every CTA of the cluster must have started and finished
  // initializing its own slots: this cluster barrier (release/acquire at cluster scope) guarantees both.
  cluster.sync();

  const int iters = kBwd ? T_ + 1 : T_;
  for (int i = 0; i < iters; ++i) {
    const int t = kBwd ? (a.reverse ? i : T_ - 1 - i) : (a.reverse ? T_ - 1 - i : i);
    const float* cur = S + (i % 2) * tile;
    float* nxt = S + ((i + 1) % 2) * tile;
    matvec_tile<T, BT>(Ws, cur, H, a.HS, [&](int rr, int bb, float c) {
      const int j = j0 + rr, b = b0 + bb;
      if (j >= H || b >= B) return;
      float v;
      if constexpr (kBwd) {
        v = bwd_output<T>(a, i, b, j, c);
        if (i >= T_) return;  // the extra dh0 iteration pushes nothing
      } else {
        v = fwd_output<T>(a, t, b, j, c, cur[bb * H + j]);
      }
      // Push this unit of the new state into the next slot of every CTA of the cluster (own one included).
      for (int r = 0; r < nblk; ++r) cluster.map_shared_rank(nxt, r)[bb * H + j] = v;
    });
    // ONE cluster barrier per step (arrive.release + wait.acquire at cluster scope). It makes this step's DSMEM
    // pushes into slot (i+1)%2 visible to every CTA before step i+1 reads it, and it ensures every CTA finished
    // reading slot i%2 in step i before step i+1 pushes into that slot: the ping-pong makes one barrier enough.
    // It also runs after the last step, so no CTA exits while a peer may still write into its shared memory.
    cluster.sync();
  }
#else
  // Never launched below sm_90: the host side (cluster_refusal) checks the device and the binary's architecture first.
  __trap();
#endif
}

}  // namespace persistent_detail
}  // namespace cuda
}  // namespace fused_rnn

// ===============================================================================================================
// Host launchers. Each returns false -- having launched nothing and leaving no CUDA error pending -- when the shape
// cannot run (shared memory, co-residency, architecture), after noting why (dispatch_log::note_refusal); the
// dispatcher then runs `fallback`, and the tier record (dispatch_log.h) carries the reason.
namespace fused_rnn {
namespace cuda {
namespace persistent_detail {

using plan::align16;
using plan::ceil_div;
using plan::pick_bt;  // batch-tile rows: compile-time so the kRows x BT accumulators stay in registers

// Shared memory of one CTA: the weight slice [HS][H] in the storage dtype, then `slots` fp32 [BT][H] state tiles.
template <typename T>
inline size_t smem_bytes(int HS, int H, int BT, int slots) {
  return plan::smem_bytes(HS, H, BT, slots, static_cast<int>(sizeof(T)));
}

// Clears the sticky-free "last error" a failed query or launch left behind, so that the dispatcher's own launch
// check does not report our refusal as its failure.
inline bool refuse() {
  (void)cudaGetLastError();
  return false;
}
inline bool refuse(const std::string& why) {
  dispatch_log::note_refusal(why);
  return refuse();
}
// A refusal because this GPU (or the build's arch list) cannot run the tier at all: the dispatcher warns once.
inline bool refuse_arch(const std::string& why) {
  dispatch_log::note_refusal(why, true);
  return refuse();
}

template <typename... Xs>
inline std::string fmt(const char* f, Xs... args) {
  char buf[512];
  std::snprintf(buf, sizeof(buf), f, args...);
  return buf;
}
inline std::string cuda_err(const char* what, cudaError_t e) { return std::string(what) + ": " + cudaGetErrorString(e); }

// Cooperative grid. force_blocks > 0 (tests only) asks for that many CTAs instead of one per SM at most.
template <typename T, int BT, bool kBwd>
bool launch_coop(Args<T> a, cudaStream_t stream, int force_blocks = 0) {
  int dev = 0, sms = 0, optin = 0, coop = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return refuse(cuda_err("persistent: cudaGetDevice", e));
  if ((e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev)) != cudaSuccess ||
      (e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev)) != cudaSuccess ||
      (e = cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev)) != cudaSuccess)
    return refuse(cuda_err("persistent: cudaDeviceGetAttribute", e));
  if (!coop || sms <= 0) return refuse("persistent: the device does not support cooperative launches");
  // At most one CTA per SM by default: the fewest rows per CTA (shortest per-step matvec) without making the grid
  // barrier wait on CTAs that share an SM. Measured on an H200 (2026-11-27), T=1024 fp32 forward, one CTA per SM
  // vs 32 rows per CTA (all 8 warps busy, fewer CTAs): 8.4 vs 11.0 us/step at B=16, H=1024; 2.42 vs 2.76 at B=1.
  const int want = force_blocks > 0 ? force_blocks : sms;
  int HS = ceil_div(ceil_div(a.H, want), kRows) * kRows;
  const int nblk = force_blocks > 0 ? force_blocks : ceil_div(a.H, HS);
  if (force_blocks > 0) HS = ceil_div(ceil_div(a.H, nblk), kRows) * kRows;
  const size_t smem = smem_bytes<T>(HS, a.H, BT, 1);
  if (smem > static_cast<size_t>(optin))
    return refuse(fmt("persistent: %zu B of shared memory per CTA (%d rows of w_hh, H=%d, batch tile %d) > the "
                      "device's opt-in limit of %d B",
                      smem, HS, a.H, BT, optin));
  auto kern = elman_coop_kernel<T, BT, kBwd>;
  if ((e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem))) !=
      cudaSuccess)
    return refuse(cuda_err("persistent: cudaFuncSetAttribute", e));
  int per_sm = 0;
  if ((e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, kThreads, smem)) != cudaSuccess)
    return refuse(cuda_err("persistent: cudaOccupancyMaxActiveBlocksPerMultiprocessor", e));
  // Co-residency is checked, not assumed: every CTA must be resident at once or grid.sync() could never complete.
  if (static_cast<long long>(per_sm) * sms < nblk)
    return refuse(fmt("persistent: a grid of %d CTAs cannot be co-resident (%d per SM x %d SMs)", nblk, per_sm, sms));
  a.HS = HS;
  if constexpr (kBwd) {
    // fp32 carry exchange [2, B, H]; stream-ordered so it is valid for this launch and freed after it.
    if ((e = cudaMallocAsync(reinterpret_cast<void**>(&a.xbuf), sizeof(float) * 2 * static_cast<size_t>(a.B) * a.H,
                             stream)) != cudaSuccess)
      return refuse(cuda_err("persistent: cudaMallocAsync", e));
  }
  void* args[] = {&a};
  // cudaLaunchCooperativeKernel refuses (launching nothing) a grid that cannot be co-resident right now.
  const cudaError_t err =
      cudaLaunchCooperativeKernel(reinterpret_cast<void*>(kern), dim3(nblk), dim3(kThreads), args, smem, stream);
  if constexpr (kBwd) (void)cudaFreeAsync(a.xbuf, stream);
  if (err != cudaSuccess) return refuse(cuda_err("persistent: cudaLaunchCooperativeKernel", err));
  if (dispatch_log::enabled())
    dispatch_log::note_detail(fmt("ctas=%d hs=%d bt=%d smem=%zu per_sm=%d sms=%d", nblk, HS, BT, smem, per_sm, sms));
  return true;
}

// Why the cluster kernels cannot run on the current device ("" when they can): clusters need compute capability
// 9.0+, and a binary with sm_90+ code for the kernels (an older arch's build holds the __trap() stubs of the
// FUSED_RNN_DEVICE_CLUSTERS guard; a build with no image for this device has nothing to run).
template <typename T, bool kBwd>
std::string cluster_refusal() {
  int dev = 0, major = 0, minor = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
  if (e != cudaSuccess) {
    refuse();
    return cuda_err("cluster: device query", e);
  }
  if (major < 9)
    return fmt("cluster: thread-block clusters need compute capability 9.0 or newer; this device is %d.%d", major,
               minor);
  cudaFuncAttributes fa{};
  if ((e = cudaFuncGetAttributes(&fa, elman_cluster_kernel<T, 1, kBwd>)) != cudaSuccess) {
    refuse();
    return fmt("cluster: no kernel image for this device (compute capability %d.%d; built for %s): %s", major, minor,
               arch::built_archs(), cudaGetErrorString(e));
  }
  if (fa.binaryVersion < 90)
    return fmt("cluster: this build has no sm_90+ code for the cluster kernels (the device runs sm_%d code; built "
               "for %s)",
               fa.binaryVersion, arch::built_archs());
  return "";
}

// Clusters of `cluster` CTAs of the <T, BT, kBwd> kernel with `smem` bytes each that the device holds at once, for a
// grid of `tiles` clusters (cudaOccupancyMaxActiveClusters; 0 when that size cannot be scheduled or the query
// fails). Cached per (device, cluster, smem): the answer is a property of the device and the kernel.
template <typename T, int BT, bool kBwd>
int cluster_occupancy(int cluster, int tiles, size_t smem) {
  static std::mutex mu;
  static std::map<std::tuple<int, int, size_t>, int> cache;
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    refuse();
    return 0;
  }
  const auto key = std::make_tuple(dev, cluster, smem);
  {
    std::lock_guard<std::mutex> lk(mu);
    const auto it = cache.find(key);
    if (it != cache.end()) return it->second;
  }
  auto kern = elman_cluster_kernel<T, BT, kBwd>;
  int n = 0;
  if (cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)) !=
          cudaSuccess ||
      (cluster > 8 && cudaFuncSetAttribute(kern, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) != cudaSuccess)) {
    refuse();
  } else {
    cudaLaunchConfig_t cfg{};
    cfg.gridDim = dim3(cluster, tiles, 1);
    cfg.blockDim = dim3(kThreads, 1, 1);
    cfg.dynamicSmemBytes = smem;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = cluster;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    if (cudaOccupancyMaxActiveClusters(&n, kern, &cfg) != cudaSuccess) {
      refuse();
      n = 0;
    }
  }
  std::lock_guard<std::mutex> lk(mu);
  cache[key] = n;
  return n;
}

// Launches exactly plan `p` (cluster_plan.h) of the <T, BT, kBwd> cluster kernel: grid (p.cluster, p.tiles), one
// cluster per batch tile. A cluster is co-scheduled as a unit by the hardware, so no inter-CTA wait can deadlock.
template <typename T, int BT, bool kBwd>
bool launch_cluster_plan(Args<T> a, cudaStream_t stream, const plan::ClusterPlan& p) {
  auto kern = elman_cluster_kernel<T, BT, kBwd>;
  cudaError_t e;
  if ((e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(p.smem))) !=
      cudaSuccess)
    return refuse(cuda_err("cluster: cudaFuncSetAttribute", e));
  if (p.cluster > 8 &&
      (e = cudaFuncSetAttribute(kern, cudaFuncAttributeNonPortableClusterSizeAllowed, 1)) != cudaSuccess)
    return refuse(cuda_err("cluster: non-portable cluster size", e));
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(p.cluster, p.tiles, 1);
  cfg.blockDim = dim3(kThreads, 1, 1);
  cfg.dynamicSmemBytes = p.smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = p.cluster;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  a.HS = p.hs;
  if ((e = cudaLaunchKernelEx(&cfg, kern, a)) != cudaSuccess) return refuse(cuda_err("cluster: cudaLaunchKernelEx", e));
  if (dispatch_log::enabled())
    dispatch_log::note_detail(fmt("cluster=%d hs=%d bt=%d tiles=%d active=%d waves=%d smem=%zu", p.cluster, p.hs,
                                  p.bt, p.tiles, p.active, p.waves, p.smem));
  return true;
}

// Why plan_cluster found nothing for B x H (after cluster_refusal passed).
inline std::string cluster_no_plan(int B, int H, int elem, size_t optin) {
  const int c = H < plan::kMaxCluster * kRows ? ceil_div(H, kRows) : plan::kMaxCluster;
  const int hs = ceil_div(ceil_div(H, c), kRows) * kRows;
  const size_t least = plan::smem_bytes(hs, H, 1, 2, elem);
  if (least > optin)
    return fmt("cluster: H=%d needs %zu B of shared memory per CTA even split over %d CTAs with a 1-row batch tile "
               "(opt-in limit %zu B)",
               H, least, c, optin);
  return fmt("cluster: the occupancy query admits no cluster size for B=%d, H=%d on this device", B, H);
}

// Hopper cluster with a fixed batch tile BT (the standalone harness calls this): the cluster size from the plan
// (largest that can be scheduled), or exactly force_blocks > 0 (tests only).
template <typename T, int BT, bool kBwd>
bool launch_cluster(Args<T> a, cudaStream_t stream, int force_blocks = 0) {
  const std::string why = cluster_refusal<T, kBwd>();
  if (!why.empty()) return refuse_arch(why);
  int dev = 0, optin = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess)
    return refuse("cluster: device query failed");
  const auto p = plan::plan_cluster(a.B, a.H, static_cast<int>(sizeof(T)), static_cast<size_t>(optin), BT,
                                    force_blocks, [&](int c, int bt, size_t smem) {
                                      return cluster_occupancy<T, BT, kBwd>(c, ceil_div(a.B, bt), smem);
                                    });
  if (p.cluster == 0) return refuse(cluster_no_plan(a.B, a.H, static_cast<int>(sizeof(T)), optin));
  return launch_cluster_plan<T, BT, kBwd>(a, stream, p);
}

}  // namespace persistent_detail
}  // namespace cuda
}  // namespace fused_rnn
