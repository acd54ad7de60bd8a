// Launchers of the `batch_tiled` and `fallback` CUDA tiers, shared by the host dispatcher (elman_cuda.cpp, built by
// the host compiler) and the per-dtype kernel files (elman_fp32.cu: fp32 + fp64, elman_half.cu: fp16 + bf16).
// Shapes: T time, B batch, H hidden; the contract is docs/design.md. Every launcher enqueues on `stream` and never
// synchronizes the host.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "elman_params.h"

namespace fused_rnn {
namespace cuda {

// Storage dtypes the kernels are instantiated for (the host maps at::ScalarType onto these).
enum class DType { F32 = 0, F64 = 1, F16 = 2, BF16 = 3 };

// batch_tiled: one CTA per batch tile keeps all of w_hh [H, H] in shared memory for the whole sequence.
// Returns false, having launched nothing, when w_hh does not fit in this device's opt-in shared memory.
template <DType D>
bool batch_tiled_fwd(const ElmanFwdParams& p, cudaStream_t stream);
template <DType D>
bool batch_tiled_bwd(const ElmanBwdParams& p, cudaStream_t stream);

// fallback, one time step s (0 <= s < T) after the host ran the step's GEMM (cuBLAS):
//   forward:  G [B, H] = S @ w_hhᵀ (acc dtype: fp32, fp64 for fp64; from a 16-bit GEMM with fp32 accumulation and
//             output for fp16/bf16);  this kernel: h = f(P_t + G) rounded, Y_t = h, S <- h (valid rows), Y_s = 0 at
//             padded rows. S [B, H] holds the carried state in the STORAGE dtype: the rounded state is what the
//             next step consumes (docs/design.md), so it is exact there and is the 16-bit GEMM's input.
//   backward: G [B, H] = D @ w_hh from step s+1 (unused when s == T-1); this kernel: carry = G or dh_n, g = dY_t +
//             carry, D <- f'(Y_t) * g (0 at padded rows), dA_t = D rounded, dA_s = 0 at padded rows. D [B, H] is
//             the fp32 (fp64) carry: the carried gradient stays fp32 (docs/design.md).
template <DType D>
void fallback_fwd_step(const ElmanFwdParams& p, int s, void* S, const void* G, cudaStream_t stream);
template <DType D>
void fallback_bwd_step(const ElmanBwdParams& p, int s, const void* G, void* Dbuf, cudaStream_t stream);
// After the last step: forward h_n [B, H] = S; backward dh0 [B, H] = (L_b > 0 ? G : dh_n) rounded.
template <DType D>
void fallback_fwd_finish(const ElmanFwdParams& p, const void* S, cudaStream_t stream);
template <DType D>
void fallback_bwd_finish(const ElmanBwdParams& p, const void* G, cudaStream_t stream);

}  // namespace cuda
}  // namespace fused_rnn
