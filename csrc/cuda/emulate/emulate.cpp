// CPU emulation of the batch_tiled and fallback kernels of csrc/cuda/elman_kernels.cuh, for tests without a GPU
// (tests/test_cuda.py builds it with the host compiler and drives it through ctypes; setup.py never builds it).
//
// The kernel source is compiled unchanged as host C++: one std::thread per CUDA thread of a block, blocks one
// after another, std::barrier for __syncthreads and for the per-warp exchange behind __shfl_xor_sync, shared memory
// poisoned with 0xFF bytes (NaN) before every block. It checks the kernels' indexing, ownership, reductions,
// lengths/reverse handling and rounding against the reference -- not timing, the memory model, or the launches.
// Shapes as in elman_params.h: P, Y, dY, dA [T, B, H]; h0, h_n, dh_n, dh0 [B, H]; w_hh [H, H]; lengths [B].
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#undef __global__
#undef __device__
#undef __forceinline__
#undef __launch_bounds__
#undef __shared__
#undef __align__
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __shared__
#define __align__(n) __attribute__((aligned(n)))

struct EmuDim { unsigned x = 0, y = 0, z = 0; };
thread_local EmuDim emu_threadIdx;
EmuDim emu_blockIdx, emu_blockDim, emu_gridDim;
#define threadIdx emu_threadIdx
#define blockIdx emu_blockIdx
#define blockDim emu_blockDim
#define gridDim emu_gridDim

struct EmuBlock {
  std::unique_ptr<std::barrier<>> bar;
  std::vector<std::unique_ptr<std::barrier<>>> warp;
  alignas(8) unsigned char shfl[1024 * 8];
};
EmuBlock* g_blk = nullptr;

inline void __syncthreads() { g_blk->bar->arrive_and_wait(); }
template <class V>
V __shfl_xor_sync(unsigned, V v, int o) {
  const unsigned t = emu_threadIdx.x;
  auto& wb = *g_blk->warp[t / 32];
  std::memcpy(&g_blk->shfl[t * 8], &v, sizeof(V));
  wb.arrive_and_wait();
  V r;
  std::memcpy(&r, &g_blk->shfl[(t ^ o) * 8], sizeof(V));
  wb.arrive_and_wait();
  return r;
}

namespace fused_rnn { namespace cuda { namespace detail {
alignas(128) unsigned char smem[300 * 1024];  // the kernels' `extern __shared__` buffer
}}}

#define FUSED_RNN_EMULATE 1
#include "elman_kernels.cuh"

using namespace fused_rnn::cuda;
using namespace fused_rnn::cuda::detail;

template <typename K, typename Params>
void run_blocks(K kernel, const Params& p, const TileCfg& c, int grid, int nt) {
  emu_blockDim.x = nt;
  emu_gridDim.x = grid;
  for (int blk = 0; blk < grid; ++blk) {
    std::memset(smem, 0xFF, sizeof(smem));  // NaN-ish poison: reads of unwritten smem show
    EmuBlock b;
    b.bar = std::make_unique<std::barrier<>>(nt);
    for (int w = 0; w < nt / 32; ++w) b.warp.push_back(std::make_unique<std::barrier<>>(32));
    g_blk = &b;
    emu_blockIdx.x = blk;
    std::vector<std::thread> th;
    for (int t = 0; t < nt; ++t)
      th.emplace_back([&, t] {
        emu_threadIdx.x = t;
        kernel(p, c);
      });
    for (auto& x : th) x.join();
  }
}

template <DType D, int BT>
int tile(bool fwd, void* p_) {
  using T = typename Types<D>::T;
  using Acc = typename Types<D>::Acc;
  constexpr int JV = 16 / sizeof(T);
  TileCfg c;
  int sm = 0;
  const int H = fwd ? static_cast<ElmanFwdParams*>(p_)->H : static_cast<ElmanBwdParams*>(p_)->H;
  const int B = fwd ? static_cast<ElmanFwdParams*>(p_)->B : static_cast<ElmanBwdParams*>(p_)->B;
  if (!tile_config<T, Acc, JV>(H, BT, 232448, &c, &sm)) return 0;
  const int grid = (B + BT - 1) / BT;
  if (fwd) run_blocks(batch_tiled_fwd_kernel<T, Acc, JV, BT>, *static_cast<ElmanFwdParams*>(p_), c, grid, c.NJ * c.G);
  else run_blocks(batch_tiled_bwd_kernel<T, Acc, JV, BT>, *static_cast<ElmanBwdParams*>(p_), c, grid, c.NJ * c.G);
  return 1;
}

template <DType D>
int tile_bt(bool fwd, void* p, int BT) {
  if (BT == 4) { if constexpr (16 / sizeof(typename Types<D>::T) < 8) return tile<D, 4>(fwd, p); else return -1; }
  if (BT == 2) return tile<D, 2>(fwd, p);
  return tile<D, 1>(fwd, p);
}

// batch_tiled forward / backward with batch tile BT (1, 2, 4; 4 not for fp16/bf16). dt: 0 fp32, 1 fp64, 2 fp16,
// 3 bf16. Returns 1 when it ran, 0 when w_hh does not fit in 227 KB (the launcher would fall back), -1 for a bad BT.
extern "C" int emu_fwd(int dt, const void* P, const void* h0, const void* w, const int64_t* L, void* Y, void* hn, int T,
                       int B, int H, int rev, int act, int BT) {
  ElmanFwdParams p{P, h0, w, L, Y, hn, T, B, H, rev != 0, act, false};
  switch (dt) {
    case 0: return tile_bt<DType::F32>(true, &p, BT);
    case 1: return tile_bt<DType::F64>(true, &p, BT);
    case 2: return tile_bt<DType::F16>(true, &p, BT);
    default: return tile_bt<DType::BF16>(true, &p, BT);
  }
}
extern "C" int emu_bwd(int dt, const void* dY, const void* dhn, const void* Y, const void* w, const int64_t* L, void* dA,
                       void* dh0, int T, int B, int H, int rev, int act, int BT) {
  ElmanBwdParams p{dY, dhn, Y, w, L, dA, dh0, T, B, H, rev != 0, act, false};
  switch (dt) {
    case 0: return tile_bt<DType::F32>(false, &p, BT);
    case 1: return tile_bt<DType::F64>(false, &p, BT);
    case 2: return tile_bt<DType::F16>(false, &p, BT);
    default: return tile_bt<DType::BF16>(false, &p, BT);
  }
}

// fallback pointwise kernels: one emulated thread walks the whole grid-stride loop.
template <DType D>
void fb(int which, void* p_, int s, void* S, const void* G) {
  using T = typename Types<D>::T;
  using Acc = typename Types<D>::Acc;
  emu_blockDim.x = 1; emu_gridDim.x = 1; emu_blockIdx.x = 0; emu_threadIdx.x = 0;
  if (which == 0) fallback_fwd_step_kernel<T, Acc>(*static_cast<ElmanFwdParams*>(p_), s, static_cast<T*>(S), static_cast<const Acc*>(G));
  if (which == 1) fallback_bwd_step_kernel<T, Acc>(*static_cast<ElmanBwdParams*>(p_), s, static_cast<const Acc*>(G), static_cast<Acc*>(S));
  if (which == 2) fallback_fwd_finish_kernel<T>(*static_cast<ElmanFwdParams*>(p_), static_cast<const T*>(S));
  if (which == 3) fallback_bwd_finish_kernel<T, Acc>(*static_cast<ElmanBwdParams*>(p_), static_cast<const Acc*>(G));
}
// fallback pointwise kernels, one step s: which = 0 step, 2 finish (forward); 1 step, 3 finish (backward). The [B, H]
// buffers of elman_cuda.cpp's host loop: forward S in the storage dtype, backward D in fp32 (fp64); G = the step's
// cuBLAS GEMM result in fp32 (fp64).
extern "C" void emu_fb_fwd(int dt, int which, const void* P, const void* h0, const void* w, const int64_t* L, void* Y,
                           void* hn, int T, int B, int H, int rev, int act, int s, void* S, const void* G) {
  ElmanFwdParams p{P, h0, w, L, Y, hn, T, B, H, rev != 0, act, false};
  switch (dt) { case 0: fb<DType::F32>(which, &p, s, S, G); break; case 1: fb<DType::F64>(which, &p, s, S, G); break;
    case 2: fb<DType::F16>(which, &p, s, S, G); break; default: fb<DType::BF16>(which, &p, s, S, G); }
}
extern "C" void emu_fb_bwd(int dt, int which, const void* dY, const void* dhn, const void* Y, const void* w,
                           const int64_t* L, void* dA, void* dh0, int T, int B, int H, int rev, int act, int s, void* D,
                           const void* G) {
  ElmanBwdParams p{dY, dhn, Y, w, L, dA, dh0, T, B, H, rev != 0, act, false};
  switch (dt) { case 0: fb<DType::F32>(which, &p, s, D, G); break; case 1: fb<DType::F64>(which, &p, s, D, G); break;
    case 2: fb<DType::F16>(which, &p, s, D, G); break; default: fb<DType::BF16>(which, &p, s, D, G); }
}
