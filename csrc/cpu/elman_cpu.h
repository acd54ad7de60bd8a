// The CPU recurrence kernels' interface: raw-pointer loops, no ATen, compiled once per instruction set
// (elman_cpu_generic.cpp: baseline x86-64 / any CPU; elman_cpu_avx2.cpp: AVX2 + FMA) and picked at run time by
// elman_cpu.cpp. Shapes: T time, B batch, H hidden; every array is contiguous, time-major.
#pragma once

#include <cstdint>

// AVX2 kernels are built where GCC's target pragma can compile them; any other build keeps the generic ones only.
#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__) && !defined(__clang__)
#define FUSED_RNN_CPU_AVX2 1
#endif

namespace fused_rnn {
namespace cpu {

// How the forward rounds h_t before storing it and feeding it to the next step (the storage dtype, when the
// kernel computes in fp32 for an fp16/bf16 op).
enum class Round : int { None = 0, Half = 1, BFloat16 = 2 };

template <typename T>
struct FwdArgs {
  const T* P;               // [T, B, H] pre-activations (both biases included)
  const T* h0;              // [B, H]
  const T* Wt;              // [H, H] = w_hhᵀ (Wt[k][j] = w_hh[j][k]) so the inner loop over outputs j is contiguous
  const int64_t* lengths;   // [B], already validated to lie in [1, T]; nullptr = all T
  T* Y;                     // [T, B, H] out; must be zero-filled when lengths != nullptr (padded steps stay 0)
  T* h_n;                   // [B, H] out
  int64_t T_, B, H;
  bool reverse;
  int act;                  // 0 tanh, 1 relu
  Round round;
};

template <typename T>
struct BwdArgs {
  const T* dY;              // [T, B, H]
  const T* dh_n;            // [B, H]
  const T* Y;               // [T, B, H] the forward's output
  const T* W;               // [H, H] = w_hh as given (carry[k] = Σ_j dA[j] w_hh[j][k])
  const int64_t* lengths;   // [B] in [1, T] or nullptr
  T* dA;                    // [T, B, H] out; must be zero-filled when lengths != nullptr
  T* dh0;                   // [B, H] out
  int64_t T_, B, H;
  bool reverse;
  int act;
};

// One instruction set's kernels. Each runs batch rows [b0, b1) through all T steps (rows are independent, so
// threads split the batch with no per-step synchronisation). `scratch` holds scratch_elems(H) elements.
struct KernelTable {
  const char* name;
  void (*fwd_f32)(const FwdArgs<float>&, int64_t b0, int64_t b1, float* scratch);
  void (*fwd_f64)(const FwdArgs<double>&, int64_t b0, int64_t b1, double* scratch);
  void (*bwd_f32)(const BwdArgs<float>&, int64_t b0, int64_t b1, float* scratch);
  void (*bwd_f64)(const BwdArgs<double>&, int64_t b0, int64_t b1, double* scratch);
  // Pointwise activation on n contiguous values (used by the per-step BLAS path): act 0 tanh, 1 relu.
  void (*act_f32)(float* x, int64_t n, int act);
  void (*act_f64)(double* x, int64_t n, int act);
};

// Rows handled together by one register-blocked matvec tile (the W load is reused this many times).
constexpr int64_t kRowBlock = 4;
inline int64_t scratch_elems(int64_t H) { return 3 * kRowBlock * H; }

const KernelTable& generic_kernels();
#if defined(FUSED_RNN_CPU_AVX2)
const KernelTable& avx2_kernels();
#endif

}  // namespace cpu
}  // namespace fused_rnn
