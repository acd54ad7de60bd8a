// Kernels of the `batch_tiled` and `fallback` CUDA tiers, templated over the storage type T and the accumulation
// type Acc (fp32; fp64 for fp64). Instantiated per dtype by elman_fp32.cu (fp32, fp64) and elman_half.cu (fp16,
// bf16). Shapes: T time, B batch, H hidden; the contract (orders, lengths, rounding) is docs/design.md, the floors
// and resource reports are csrc/cuda/NOTES.md.
//
// Element b of a batch runs L_b = clamp(lengths[b], 0, T) valid steps. At loop step s (0 <= s < T) it is at time
// t_b(s) = s (forward) or L_b - 1 - s (reverse) when s < L_b; for s >= L_b the time s is one of its padded steps
// (each padded time in [L_b, T) is met exactly once), which is where the zeros of Y / dA are written.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <c10/cuda/CUDAException.h>

#include "dispatch_log.h"
#include "elman_launch.h"

namespace fused_rnn {
namespace cuda {
namespace detail {

template <DType D>
struct Types;
template <>
struct Types<DType::F32> {
  using T = float;
  using Acc = float;
};
template <>
struct Types<DType::F64> {
  using T = double;
  using Acc = double;
};
template <>
struct Types<DType::F16> {
  using T = __half;
  using Acc = float;
};
template <>
struct Types<DType::BF16> {
  using T = __nv_bfloat16;
  using Acc = float;
};

template <typename Acc, typename T>
__device__ __forceinline__ Acc to_acc(T x) {
  return static_cast<Acc>(x);
}
// Round to the storage dtype (round to nearest even for fp16/bf16).
template <typename T, typename Acc>
__device__ __forceinline__ T to_store(Acc x) {
  return static_cast<T>(x);
}

__device__ __forceinline__ float act_tanh(float a) { return tanhf(a); }
__device__ __forceinline__ double act_tanh(double a) { return tanh(a); }

// f(a): act 0 = tanh, 1 = relu (NaN propagates: `a < 0 ? 0 : a` keeps a NaN, like torch.relu).
template <typename Acc>
__device__ __forceinline__ Acc activation(Acc a, int act) {
  return act == 0 ? act_tanh(a) : (a < Acc(0) ? Acc(0) : a);
}
// f'(a) * g from h = f(a): (1 - h^2) * g (tanh); relu the select h <= 0 ? 0 : g, torch's threshold_backward (and
// so nn.RNN's, and the reference's): a dead unit's gradient is 0 even where g is inf or NaN, and a NaN state passes g.
template <typename Acc>
__device__ __forceinline__ Acc activation_backward(Acc h, Acc g, int act) {
  return act == 0 ? (Acc(1) - h * h) * g : (h <= Acc(0) ? Acc(0) : g);
}

__device__ __forceinline__ int clamp_len(const int64_t* lengths, int b, int T) {
  if (lengths == nullptr) return T;
  const int64_t L = lengths[b];
  return L < 0 ? 0 : (L > T ? T : static_cast<int>(L));
}

// ------------------------------------------------------------------------------------------------------------------
// batch_tiled
//
// One CTA owns BT batch rows for the whole sequence. Shared memory holds the matrix M [H rows, Hs row stride] in
// the storage dtype and a ping-pong state buffer V [2][H][BT] in Acc (forward: h, backward: the fp32 dA of the
// previous step). Each step computes out[b][c] = sum_r M[r][c] * V[r][b]:
//   forward  M[r=k][c=j] = w_hh[j][k]  (a_t = P_t + h @ w_hhᵀ)
//   backward M[r=j][c=k] = w_hh[j][k]  (carry = dA @ w_hh, w_hh untransposed)
// Thread layout: a group of G consecutive lanes owns JV consecutive columns (one 16-byte vector of M per row) and
// splits the rows r = lane_r, lane_r + G, ...; a butterfly of G lanes sums the partial results (fixed order, so the
// result is bitwise reproducible). The step then needs exactly one __syncthreads: step s reads V[s%2] and writes
// V[(s+1)%2], so no thread overwrites state another thread is still reading.
// ------------------------------------------------------------------------------------------------------------------

struct TileCfg {
  int G;        // lanes per column group (power of two, <= 32)
  int NJ;       // column groups per pass (NJ * G = threads per CTA, a multiple of 32)
  int passes;   // passes over the columns per step (ceil(ceil(H / JV) / NJ))
  int Hs;       // row stride of M in elements (>= H rounded up to JV; padded so that the G row-groups of a warp
                // fall into different shared-memory banks)
  int v_offset; // byte offset of V in shared memory (16-byte aligned)
};

template <typename T, int JV>
struct alignas(16) MVec {
  T x[JV];
};
template <typename Acc, int BT>
struct alignas(sizeof(Acc) * BT >= 16 ? 16 : sizeof(Acc) * BT) VVec {
  Acc x[BT];
};

// Rows of M a lane keeps in registers for the whole sequence (its first RegRows rows r0, r0 + G, ...): at BT = 1 a
// step is bound by shared-memory bandwidth (H²·s / 128 B/clk, NOTES.md), and these rows skip it. Sized so that
// ptxas keeps every instantiation under the 128-register cap of 512 threads without spills (NOTES.md §3).
// The budget is counted in fp32 values (ptxas hoists the conversions of 16-bit rows out of the time loop): 64 in
// the forward, 32 in the backward (it holds three prefetch arrays). fp64 keeps none (correct first, fast later).
template <typename T, int JV, int BT, bool Fwd>
constexpr int reg_rows() {
  return (BT != 1 || sizeof(T) == 8) ? 0 : (Fwd ? 64 : 32) / JV;
}

template <typename T, int JV, int R>
struct RegRows {
  MVec<T, JV> w[R > 0 ? R : 1];
};

// Loads this lane's register rows of M (columns c0 .. c0 + JV - 1; zero past row H).
template <typename T, int JV, int R>
__device__ __forceinline__ void load_reg_rows(const T* __restrict__ M, int Hs, int H, int c0, int r0, int G,
                                              RegRows<T, JV, R>& rr) {
#pragma unroll
  for (int i = 0; i < R; ++i) {
    const int r = r0 + G * i;
    if (r < H) {
      rr.w[i] = *reinterpret_cast<const MVec<T, JV>*>(M + static_cast<int64_t>(r) * Hs + c0);
    } else {
#pragma unroll
      for (int jv = 0; jv < JV; ++jv) rr.w[i].x[jv] = to_store<T>(0.0f);
    }
  }
}

// out[e = b * JV + jv] (partial over this lane's rows) = sum_{r = lane_r (+G)} M[r][c0 + jv] * V[r][b]; the first R
// rows come from registers (rr), the rest from shared memory.
template <typename T, typename Acc, int JV, int BT, int R>
__device__ __forceinline__ void tile_matvec(const T* __restrict__ M, int Hs, const Acc* __restrict__ V, int H, int c0,
                                            int r0, int G, const RegRows<T, JV, R>& rr, Acc (&acc)[JV * BT]) {
#pragma unroll
  for (int e = 0; e < JV * BT; ++e) acc[e] = Acc(0);
#pragma unroll
  for (int i = 0; i < R; ++i) {
    const int r = r0 + G * i;
    if (r < H) {
      const VVec<Acc, BT> v = *reinterpret_cast<const VVec<Acc, BT>*>(V + r * BT);
#pragma unroll
      for (int b = 0; b < BT; ++b) {
#pragma unroll
        for (int jv = 0; jv < JV; ++jv) acc[b * JV + jv] += to_acc<Acc>(rr.w[i].x[jv]) * v.x[b];
      }
    }
  }
#pragma unroll 4
  for (int r = r0 + G * R; r < H; r += G) {
    const MVec<T, JV> w = *reinterpret_cast<const MVec<T, JV>*>(M + static_cast<int64_t>(r) * Hs + c0);
    const VVec<Acc, BT> v = *reinterpret_cast<const VVec<Acc, BT>*>(V + r * BT);
#pragma unroll
    for (int b = 0; b < BT; ++b) {
#pragma unroll
      for (int jv = 0; jv < JV; ++jv) acc[b * JV + jv] += to_acc<Acc>(w.x[jv]) * v.x[b];
    }
  }
  // Butterfly over the G lanes of the group: every lane ends with the same sum (same order on each lane).
  for (int o = G >> 1; o > 0; o >>= 1) {
#pragma unroll
    for (int e = 0; e < JV * BT; ++e) acc[e] += __shfl_xor_sync(0xffffffffu, acc[e], o);
  }
}

template <typename T, typename Acc, int JV, int BT>
__global__ void __launch_bounds__(512) batch_tiled_fwd_kernel(ElmanFwdParams p, TileCfg c) {
  extern __shared__ __align__(16) unsigned char smem[];
  T* M = reinterpret_cast<T*>(smem);
  Acc* V0 = reinterpret_cast<Acc*>(smem + c.v_offset);
  Acc* V1 = V0 + p.H * BT;
  const int H = p.H, Tn = p.T, B = p.B, Hs = c.Hs, G = c.G;
  const int tid = threadIdx.x, nt = blockDim.x;
  const int b0 = blockIdx.x * BT;
  const T* __restrict__ W = static_cast<const T*>(p.w_hh);
  const T* __restrict__ P = static_cast<const T*>(p.P);
  const T* __restrict__ h0 = static_cast<const T*>(p.h0);
  T* __restrict__ Y = static_cast<T*>(p.Y);
  T* __restrict__ hn = static_cast<T*>(p.h_n);

  // M[k][j] = w_hh[j][k]; k-major with j fastest: conflict-free smem stores, and the strided global reads of one k
  // hit the 32-byte sectors the previous k fetched (L1). Padding columns are zeroed: the 16-byte loads read them.
  for (int idx = tid; idx < H * Hs; idx += nt) {
    const int k = idx / Hs, j = idx - k * Hs;
    M[idx] = j < H ? W[static_cast<int64_t>(j) * H + k] : to_store<T>(Acc(0));
  }
  for (int idx = tid; idx < 2 * H * BT; idx += nt) {  // V1 zeroed too: rows past B are read, never written
    const int k = (idx % (H * BT)) / BT, b = idx % BT;
    V0[idx] = idx < H * BT && b0 + b < B ? to_acc<Acc>(h0[static_cast<int64_t>(b0 + b) * H + k]) : Acc(0);
  }
  int L[BT];
  int Lmax = 0;
#pragma unroll
  for (int b = 0; b < BT; ++b) {
    L[b] = b0 + b < B ? clamp_len(p.lengths, b0 + b, Tn) : 0;
    Lmax = L[b] > Lmax ? L[b] : Lmax;
  }
  __syncthreads();

  const int r0 = tid & (G - 1);
  const int grp = tid / G;
  // passes == 1 whenever w_hh fits (tile_config), so a lane's columns, and its register rows, are fixed.
  constexpr int R = reg_rows<T, JV, BT, true>();
  RegRows<T, JV, R> rr;
  load_reg_rows<T, JV, R>(M, Hs, H, grp * JV < H ? grp * JV : 0, r0, G, rr);
  int cur = 0;
  for (int s = 0; s < Lmax; ++s) {
    const Acc* V = cur ? V1 : V0;
    Acc* Vn = cur ? V0 : V1;
    for (int pass = 0; pass < c.passes; ++pass) {
      const int j0 = (grp + pass * c.NJ) * JV;
      const bool jok = j0 < H;
      // Prefetch this lane's P elements before the dot products, so their global latency overlaps them.
      Acc pre[JV * BT];
#pragma unroll
      for (int e = 0; e < JV * BT; ++e) {
        const int b = e / JV, j = j0 + e % JV;
        pre[e] = Acc(0);
        if ((e & (G - 1)) == r0 && jok && j < H && s < L[b]) {
          const int t = p.reverse ? L[b] - 1 - s : s;
          pre[e] = to_acc<Acc>(P[(static_cast<int64_t>(t) * B + b0 + b) * H + j]);
        }
      }
      Acc acc[JV * BT];
      // A group with no columns still runs (on column 0): every lane must reach the butterfly's shuffles.
      tile_matvec<T, Acc, JV, BT, R>(M, Hs, V, H, jok ? j0 : 0, r0, G, rr, acc);
#pragma unroll
      for (int e = 0; e < JV * BT; ++e) {
        const int b = e / JV, j = j0 + e % JV;
        if ((e & (G - 1)) != r0 || !jok || j >= H || b0 + b >= B) continue;
        if (s < L[b]) {
          const int t = p.reverse ? L[b] - 1 - s : s;
          const T hs = to_store<T>(activation(pre[e] + acc[e], p.act));
          Y[(static_cast<int64_t>(t) * B + b0 + b) * H + j] = hs;
          Vn[j * BT + b] = to_acc<Acc>(hs);  // the next step consumes the rounded state
        } else {
          Y[(static_cast<int64_t>(s) * B + b0 + b) * H + j] = to_store<T>(Acc(0));
          Vn[j * BT + b] = V[j * BT + b];  // a finished element keeps its last state (it becomes h_n)
        }
      }
    }
    __syncthreads();
    cur ^= 1;
  }
  const Acc* Vf = cur ? V1 : V0;
  for (int idx = tid; idx < BT * H; idx += nt) {
    const int b = idx / H, j = idx - b * H;
    if (b0 + b < B) hn[static_cast<int64_t>(b0 + b) * H + j] = to_store<T>(Vf[j * BT + b]);
  }
  for (int s = Lmax; s < Tn; ++s) {  // steps where every element of the tile is padded
    for (int idx = tid; idx < BT * H; idx += nt) {
      const int b = idx / H, j = idx - b * H;
      if (b0 + b < B) Y[(static_cast<int64_t>(s) * B + b0 + b) * H + j] = to_store<T>(Acc(0));
    }
  }
}

template <typename T, typename Acc, int JV, int BT>
__global__ void __launch_bounds__(512) batch_tiled_bwd_kernel(ElmanBwdParams p, TileCfg c) {
  extern __shared__ __align__(16) unsigned char smem[];
  T* M = reinterpret_cast<T*>(smem);
  Acc* V0 = reinterpret_cast<Acc*>(smem + c.v_offset);
  Acc* V1 = V0 + p.H * BT;
  const int H = p.H, Tn = p.T, B = p.B, Hs = c.Hs, G = c.G;
  const int tid = threadIdx.x, nt = blockDim.x;
  const int b0 = blockIdx.x * BT;
  const T* __restrict__ W = static_cast<const T*>(p.w_hh);
  const T* __restrict__ dY = static_cast<const T*>(p.dY);
  const T* __restrict__ Yv = static_cast<const T*>(p.Y);
  const T* __restrict__ dhn = static_cast<const T*>(p.dh_n);
  T* __restrict__ dA = static_cast<T*>(p.dA);
  T* __restrict__ dh0 = static_cast<T*>(p.dh0);

  for (int idx = tid; idx < H * Hs; idx += nt) {  // M[j][k] = w_hh[j][k], padding columns zeroed
    const int j = idx / Hs, k = idx - j * Hs;
    M[idx] = k < H ? W[static_cast<int64_t>(j) * H + k] : to_store<T>(Acc(0));
  }
  for (int idx = tid; idx < 2 * H * BT; idx += nt) V0[idx] = Acc(0);
  int L[BT];
  int Lmax = 0;
#pragma unroll
  for (int b = 0; b < BT; ++b) {
    L[b] = b0 + b < B ? clamp_len(p.lengths, b0 + b, Tn) : 0;
    Lmax = L[b] > Lmax ? L[b] : Lmax;
  }
  __syncthreads();

  const int r0 = tid & (G - 1);
  const int grp = tid / G;
  constexpr int R = reg_rows<T, JV, BT, false>();
  RegRows<T, JV, R> rr;
  load_reg_rows<T, JV, R>(M, Hs, H, grp * JV < H ? grp * JV : 0, r0, G, rr);
  for (int s = Tn - 1; s >= Lmax; --s) {  // steps where every element of the tile is padded: dA = 0
    for (int idx = tid; idx < BT * H; idx += nt) {
      const int b = idx / H, k = idx - b * H;
      if (b0 + b < B) dA[(static_cast<int64_t>(s) * B + b0 + b) * H + k] = to_store<T>(Acc(0));
    }
  }
  int cur = 0;
  for (int s = Lmax - 1; s >= 0; --s) {
    const Acc* V = cur ? V1 : V0;  // dA (fp32) of step s+1
    Acc* Vn = cur ? V0 : V1;
    const bool mv = s + 1 < Lmax;  // block-uniform: some element consumed a carry from step s+1
    for (int pass = 0; pass < c.passes; ++pass) {
      const int k0 = (grp + pass * c.NJ) * JV;
      const bool kok = k0 < H;
      Acc pdy[JV * BT], py[JV * BT], pdh[JV * BT];
#pragma unroll
      for (int e = 0; e < JV * BT; ++e) {
        const int b = e / JV, k = k0 + e % JV;
        pdy[e] = py[e] = pdh[e] = Acc(0);
        if ((e & (G - 1)) == r0 && kok && k < H && s < L[b]) {
          const int t = p.reverse ? L[b] - 1 - s : s;
          const int64_t off = (static_cast<int64_t>(t) * B + b0 + b) * H + k;
          pdy[e] = to_acc<Acc>(dY[off]);
          py[e] = to_acc<Acc>(Yv[off]);
          if (s + 1 >= L[b]) pdh[e] = to_acc<Acc>(dhn[static_cast<int64_t>(b0 + b) * H + k]);
        }
      }
      Acc acc[JV * BT];
      if (mv) {
        tile_matvec<T, Acc, JV, BT, R>(M, Hs, V, H, kok ? k0 : 0, r0, G, rr, acc);
      } else {
#pragma unroll
        for (int e = 0; e < JV * BT; ++e) acc[e] = Acc(0);
      }
#pragma unroll
      for (int e = 0; e < JV * BT; ++e) {
        const int b = e / JV, k = k0 + e % JV;
        if ((e & (G - 1)) != r0 || !kok || k >= H || b0 + b >= B) continue;
        if (s < L[b]) {
          const int t = p.reverse ? L[b] - 1 - s : s;
          const Acc carry = s + 1 < L[b] ? acc[e] : pdh[e];
          const Acc da = activation_backward(py[e], pdy[e] + carry, p.act);
          dA[(static_cast<int64_t>(t) * B + b0 + b) * H + k] = to_store<T>(da);
          Vn[k * BT + b] = da;  // carried in fp32: rounded only where stored
        } else {
          dA[(static_cast<int64_t>(s) * B + b0 + b) * H + k] = to_store<T>(Acc(0));
          Vn[k * BT + b] = Acc(0);
        }
      }
    }
    __syncthreads();
    cur ^= 1;
  }
  // dh0 = dA_first @ w_hh (elements with L_b = 0 pass dh_n through).
  const Acc* V = cur ? V1 : V0;
  for (int pass = 0; pass < c.passes; ++pass) {
    const int k0 = (grp + pass * c.NJ) * JV;
    const bool kok = k0 < H;
    Acc acc[JV * BT];
    if (Lmax > 0) {
      tile_matvec<T, Acc, JV, BT, R>(M, Hs, V, H, kok ? k0 : 0, r0, G, rr, acc);
    } else {
#pragma unroll
      for (int e = 0; e < JV * BT; ++e) acc[e] = Acc(0);
    }
#pragma unroll
    for (int e = 0; e < JV * BT; ++e) {
      const int b = e / JV, k = k0 + e % JV;
      if ((e & (G - 1)) != r0 || !kok || k >= H || b0 + b >= B) continue;
      const int64_t off = static_cast<int64_t>(b0 + b) * H + k;
      dh0[off] = L[b] > 0 ? to_store<T>(acc[e]) : dhn[off];
    }
  }
}

inline int device_attr(cudaDeviceAttr attr) {
  int dev = 0, v = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&v, attr, dev));
  return v;
}

// Thread layout and shared-memory size for H, BT; returns false when M and V do not fit in `smem_limit` bytes.
template <typename T, typename Acc, int JV>
bool tile_config(int H, int BT, int smem_limit, TileCfg* c, int* smem_bytes) {
  const int ncg = (H + JV - 1) / JV;  // column groups of JV columns
  int G = 1, NJ = ncg;
  for (int g = 32; g >= 1; g >>= 1) {
    if (g > 1 && g * 4 > H) continue;  // keep >= 4 rows per lane: the butterfly costs log2(G) shuffles per value
    const int per_warp = 32 / g;
    const int nj = (ncg + per_warp - 1) / per_warp * per_warp;
    if (nj * g <= 512) {
      G = g;
      NJ = nj;
      break;
    }
    if (g == 1) {  // more than 512 column groups: several passes per step
      G = 1;
      NJ = 512;
    }
  }
  c->G = G;
  c->NJ = NJ;
  c->passes = (ncg + NJ - 1) / NJ;
  if (c->passes != 1) return false;  // only when ncg > 512, i.e. H > 2048 fp32: w_hh could not fit anyway
  // Bank padding: the 8 lanes of a quarter-warp (one 128-byte wavefront of 16-byte loads) read 8 / G groups of G
  // rows (G <= 8) or 8 rows of one group; shifting each row by 128 / G bytes (16 for G >= 8) puts them in
  // distinct 16-byte bank slots.
  const int64_t cols = static_cast<int64_t>(ncg) * JV;
  const int64_t row_bytes_pad = (cols * sizeof(T) + 127) / 128 * 128 + (G == 1 ? 0 : (G >= 8 ? 16 : 128 / G));
  const int64_t v_bytes = 2LL * H * BT * sizeof(Acc);
  for (int padded = 1; padded >= 0; --padded) {
    const int64_t row_bytes = padded ? row_bytes_pad : cols * sizeof(T);
    const int64_t m_bytes = (row_bytes * H + 127) / 128 * 128;
    if (m_bytes + v_bytes <= smem_limit) {
      c->Hs = static_cast<int>(row_bytes / sizeof(T));
      c->v_offset = static_cast<int>(m_bytes);
      *smem_bytes = static_cast<int>(m_bytes + v_bytes);
      return true;
    }
  }
  return false;
}

#ifndef FUSED_RNN_EMULATE  // a CPU emulation of the kernels (thread per lane) compiles everything but the launches
template <typename T, typename Acc, int JV, int BT, bool Fwd, typename Params>
bool launch_tile(const Params& p, int smem_limit, cudaStream_t stream) {
  TileCfg c;
  int smem = 0;
  if (!tile_config<T, Acc, JV>(p.H, BT, smem_limit, &c, &smem)) return false;
  const auto kernel = [] {
    if constexpr (Fwd) {
      return batch_tiled_fwd_kernel<T, Acc, JV, BT>;
    } else {
      return batch_tiled_bwd_kernel<T, Acc, JV, BT>;
    }
  }();
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  const unsigned grid = static_cast<unsigned>((p.B + BT - 1) / BT);
  kernel<<<grid, c.NJ * c.G, smem, stream>>>(p, c);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (dispatch_log::enabled()) {
    char buf[160];
    std::snprintf(buf, sizeof(buf), "ctas=%u bt=%d threads=%d lanes_per_column=%d smem=%d", grid, BT, c.NJ * c.G, c.G,
                  smem);
    dispatch_log::note_detail(buf);
  }
  return true;
}

// Batch tile size: the smallest BT whose tiles fit on the SMs in one wave (at small B each CTA's per-step latency
// is the whole cost, and smaller tiles mean fewer FMAs per lane per step); larger B amortizes each shared-memory
// read of w_hh over BT rows. Falls back to a smaller BT when the larger one does not fit in shared memory.
template <DType D, bool Fwd, typename Params>
bool batch_tiled(const Params& p, cudaStream_t stream) {
  using T = typename Types<D>::T;
  using Acc = typename Types<D>::Acc;
  constexpr int JV = 16 / sizeof(T);  // one 16-byte vector of M per row and lane
  // At most 16 (column, row) pairs per lane: 3 prefetch arrays + accumulators stay in 128 registers.
  constexpr int MaxBT = JV >= 8 ? 2 : 4;
  const int smem_limit = device_attr(cudaDevAttrMaxSharedMemoryPerBlockOptin);
  const int sms = device_attr(cudaDevAttrMultiProcessorCount);
  int want = 1;
  while (want < MaxBT && (p.B + want - 1) / want > sms) want *= 2;
  if (want >= 4 && launch_tile<T, Acc, JV, (MaxBT >= 4 ? 4 : 1), Fwd>(p, smem_limit, stream)) return true;
  if (want >= 2 && launch_tile<T, Acc, JV, 2, Fwd>(p, smem_limit, stream)) return true;
  if (launch_tile<T, Acc, JV, 1, Fwd>(p, smem_limit, stream)) return true;
  char buf[160];
  std::snprintf(buf, sizeof(buf),
                "batch_tiled: w_hh [%d, %d] (%d-byte elements) and the state do not fit in the device's %d B of "
                "shared memory per block",
                p.H, p.H, static_cast<int>(sizeof(T)), smem_limit);
  dispatch_log::note_refusal(buf);
  return false;
}

#endif  // FUSED_RNN_EMULATE

// ------------------------------------------------------------------------------------------------------------------
// fallback: one pointwise kernel per step after the host's cuBLAS GEMM (any H, any B, any GPU).
// ------------------------------------------------------------------------------------------------------------------

template <typename T, typename Acc>
__global__ void fallback_fwd_step_kernel(ElmanFwdParams p, int s, T* __restrict__ S, const Acc* __restrict__ G) {
  const int64_t n = static_cast<int64_t>(p.B) * p.H;
  const T* __restrict__ P = static_cast<const T*>(p.P);
  T* __restrict__ Y = static_cast<T*>(p.Y);
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int b = static_cast<int>(idx / p.H);
    const int L = clamp_len(p.lengths, b, p.T);
    if (s < L) {
      const int t = p.reverse ? L - 1 - s : s;
      const int64_t off = static_cast<int64_t>(t) * n + idx;
      const T hs = to_store<T>(activation(to_acc<Acc>(P[off]) + G[idx], p.act));
      Y[off] = hs;
      S[idx] = hs;  // the next step's GEMM input: the stored (rounded) state, in the storage dtype
    } else {
      Y[static_cast<int64_t>(s) * n + idx] = to_store<T>(Acc(0));
    }
  }
}

template <typename T, typename Acc>
__global__ void fallback_bwd_step_kernel(ElmanBwdParams p, int s, const Acc* __restrict__ G, Acc* __restrict__ D) {
  const int64_t n = static_cast<int64_t>(p.B) * p.H;
  const T* __restrict__ dY = static_cast<const T*>(p.dY);
  const T* __restrict__ Yv = static_cast<const T*>(p.Y);
  const T* __restrict__ dhn = static_cast<const T*>(p.dh_n);
  T* __restrict__ dA = static_cast<T*>(p.dA);
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int b = static_cast<int>(idx / p.H);
    const int L = clamp_len(p.lengths, b, p.T);
    if (s < L) {
      const int t = p.reverse ? L - 1 - s : s;
      const int64_t off = static_cast<int64_t>(t) * n + idx;
      const Acc carry = s + 1 < L ? G[idx] : to_acc<Acc>(dhn[idx]);  // G = dA_{s+1} @ w_hh
      const Acc da = activation_backward(to_acc<Acc>(Yv[off]), to_acc<Acc>(dY[off]) + carry, p.act);
      dA[off] = to_store<T>(da);
      D[idx] = da;
    } else {
      dA[static_cast<int64_t>(s) * n + idx] = to_store<T>(Acc(0));
      D[idx] = Acc(0);
    }
  }
}

template <typename T>
__global__ void fallback_fwd_finish_kernel(ElmanFwdParams p, const T* __restrict__ S) {
  const int64_t n = static_cast<int64_t>(p.B) * p.H;
  T* __restrict__ hn = static_cast<T*>(p.h_n);
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x)
    hn[idx] = S[idx];
}

template <typename T, typename Acc>
__global__ void fallback_bwd_finish_kernel(ElmanBwdParams p, const Acc* __restrict__ G) {
  const int64_t n = static_cast<int64_t>(p.B) * p.H;
  const T* __restrict__ dhn = static_cast<const T*>(p.dh_n);
  T* __restrict__ dh0 = static_cast<T*>(p.dh0);
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int b = static_cast<int>(idx / p.H);
    dh0[idx] = clamp_len(p.lengths, b, p.T) > 0 ? to_store<T>(G[idx]) : dhn[idx];
  }
}

inline unsigned pointwise_grid(int64_t n) {
  const int64_t blocks = (n + 255) / 256;
  return static_cast<unsigned>(blocks < 65535 ? blocks : 65535);  // grid-stride beyond
}

}  // namespace detail

// Explicit specializations of the launchers in elman_launch.h, one line per dtype in the .cu files.
#define FUSED_RNN_INSTANTIATE_ELMAN(D)                                                                       \
  template <>                                                                                                \
  bool batch_tiled_fwd<D>(const ElmanFwdParams& p, cudaStream_t stream) {                                    \
    return detail::batch_tiled<D, true>(p, stream);                                                          \
  }                                                                                                          \
  template <>                                                                                                \
  bool batch_tiled_bwd<D>(const ElmanBwdParams& p, cudaStream_t stream) {                                    \
    return detail::batch_tiled<D, false>(p, stream);                                                         \
  }                                                                                                          \
  template <>                                                                                                \
  void fallback_fwd_step<D>(const ElmanFwdParams& p, int s, void* S, const void* G, cudaStream_t stream) {   \
    using T = detail::Types<D>::T;                                                                           \
    using Acc = detail::Types<D>::Acc;                                                                       \
    detail::fallback_fwd_step_kernel<T, Acc><<<detail::pointwise_grid(int64_t(p.B) * p.H), 256, 0, stream>>>( \
        p, s, static_cast<T*>(S), static_cast<const Acc*>(G));                                               \
    C10_CUDA_KERNEL_LAUNCH_CHECK();                                                                          \
  }                                                                                                          \
  template <>                                                                                                \
  void fallback_bwd_step<D>(const ElmanBwdParams& p, int s, const void* G, void* Dbuf, cudaStream_t stream) { \
    using T = detail::Types<D>::T;                                                                           \
    using Acc = detail::Types<D>::Acc;                                                                       \
    detail::fallback_bwd_step_kernel<T, Acc><<<detail::pointwise_grid(int64_t(p.B) * p.H), 256, 0, stream>>>( \
        p, s, static_cast<const Acc*>(G), static_cast<Acc*>(Dbuf));                                          \
    C10_CUDA_KERNEL_LAUNCH_CHECK();                                                                          \
  }                                                                                                          \
  template <>                                                                                                \
  void fallback_fwd_finish<D>(const ElmanFwdParams& p, const void* S, cudaStream_t stream) {                \
    using T = detail::Types<D>::T;                                                                           \
    detail::fallback_fwd_finish_kernel<T><<<detail::pointwise_grid(int64_t(p.B) * p.H), 256, 0, stream>>>(   \
        p, static_cast<const T*>(S));                                                                        \
    C10_CUDA_KERNEL_LAUNCH_CHECK();                                                                          \
  }                                                                                                          \
  template <>                                                                                                \
  void fallback_bwd_finish<D>(const ElmanBwdParams& p, const void* G, cudaStream_t stream) {                \
    using T = detail::Types<D>::T;                                                                           \
    using Acc = detail::Types<D>::Acc;                                                                       \
    detail::fallback_bwd_finish_kernel<T, Acc><<<detail::pointwise_grid(int64_t(p.B) * p.H), 256, 0, stream>>>( \
        p, static_cast<const Acc*>(G));                                                                      \
    C10_CUDA_KERNEL_LAUNCH_CHECK();                                                                          \
  }

}  // namespace cuda
}  // namespace fused_rnn
