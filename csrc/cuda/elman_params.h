// Parameters shared by every CUDA tier of fused_rnn::elman_fwd / elman_bwd (one struct per direction of work).
// Pointers are raw device pointers into contiguous tensors of the op's dtype (fp32 / fp64 / fp16 / bf16).
// Shapes: T time, B batch, H hidden. The contract is docs/design.md.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>
#include <ATen/ATen.h>

namespace fused_rnn {
namespace cuda {

struct ElmanFwdParams {
  const void* P;           // [T, B, H] pre-activations (both biases included)
  const void* h0;          // [B, H]
  const void* w_hh;        // [H, H], a_t = P_t + s_t @ w_hhᵀ
  const int64_t* lengths;  // [B] in [1, T] (kernels clamp to [0, T] so a bad value can never read out of bounds),
                           // or nullptr = every element runs all T steps
  void* Y;                 // [T, B, H] out: h_t at valid steps, 0 at padded steps
  void* h_n;               // [B, H] out
  int T, B, H;
  bool reverse;
  int act;                 // 0 = tanh, 1 = relu (fused_rnn::Activation)
  bool allow_tf32;         // fp32 only: tensor-core TF32 allowed (the user's matmul setting)
};

struct ElmanBwdParams {
  const void* dY;          // [T, B, H]
  const void* dh_n;        // [B, H]
  const void* Y;           // [T, B, H] saved forward output (f' is computed from it)
  const void* w_hh;        // [H, H]
  const int64_t* lengths;  // [B] or nullptr, as in forward
  void* dA;                // [T, B, H] out: 0 at padded steps
  void* dh0;               // [B, H] out
  int T, B, H;
  bool reverse;
  int act;
  bool allow_tf32;
};

}  // namespace cuda
}  // namespace fused_rnn
