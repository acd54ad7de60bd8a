// The CPU recurrence kernels' interface: raw-pointer loops, no ATen, compiled once per instruction set
// (elman_cpu_generic.cpp: baseline x86-64 / any CPU; elman_cpu_avx2.cpp: AVX2 + FMA; elman_cpu_avx512.cpp: AVX-512
// F/BW/VL/DQ) and picked at run time by elman_cpu.cpp. Shapes: T time, B batch, H hidden; every array is contiguous,
// time-major.
#pragma once

#include <cstdint>

// The AVX2 and AVX-512 kernels are built where GCC's target pragma can compile them; any other build keeps the
// generic ones only.
#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__) && !defined(__clang__)
#define FUSED_RNN_CPU_AVX2 1
#define FUSED_RNN_CPU_AVX512 1
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
  const T* Wp;              // w_hhᵀ packed in panels by KernelTable::pack(transpose = true), npanels(H)·H·NW values
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
  const T* Wp;              // w_hh as given, packed by KernelTable::pack(transpose = false)
  const int64_t* lengths;   // [B] in [1, T] or nullptr
  T* dA;                    // [T, B, H] out; must be zero-filled when lengths != nullptr
  T* dh0;                   // [B, H] out; also the carried gradient during the loop
  int64_t T_, B, H;
  bool reverse;
  int act;
};

// The barrier the workers of one hidden-split call meet at once per step (defined in elman_cpu.cpp, compiled for the
// baseline ISA; called out of line, ~once per step).
struct StepBarrier;
void barrier_wait(StepBarrier* bar, int nparts);

// One worker's share of a call: batch rows [b0, b1) and panels [p0, p1) (the result columns
// [p0·NW, min(p1·NW, H))) for all T steps. bar == nullptr: no other worker needs this one's results during the loop
// (serial, or a batch split); otherwise every one of the nparts workers owns all rows and a disjoint panel range, and
// they all call barrier_wait the same number of times. scratch: work_scratch_bytes(B) bytes, 64-byte aligned.
struct Work {
  int64_t b0, b1, p0, p1;
  StepBarrier* bar;
  int nparts;
  void* scratch;
};

inline int64_t work_scratch_bytes(int64_t B) { return 16 * B + 4096; }

// One instruction set's kernels.
struct KernelTable {
  const char* name;
  int64_t panel_f32, panel_f64;  // NW: panel width in values (4 vectors)
  int max_rows;                  // batch rows per register tile
  // Pack panels [p0, p1) of w_hh [H, H] (transposed for the forward) into out (npanels·H·NW values).
  void (*pack_f32)(const float* W, int64_t H, bool transpose, int64_t p0, int64_t p1, float* out);
  void (*pack_f64)(const double* W, int64_t H, bool transpose, int64_t p0, int64_t p1, double* out);
  void (*fwd_f32)(const FwdArgs<float>&, const Work&);
  void (*fwd_f64)(const FwdArgs<double>&, const Work&);
  void (*bwd_f32)(const BwdArgs<float>&, const Work&);
  void (*bwd_f64)(const BwdArgs<double>&, const Work&);
  // Pointwise activation on n contiguous values (used by the per-step BLAS path): act 0 tanh, 1 relu.
  void (*act_f32)(float* x, int64_t n, int act);
  void (*act_f64)(double* x, int64_t n, int act);
};

const KernelTable& generic_kernels();
#if defined(FUSED_RNN_CPU_AVX2)
const KernelTable& avx2_kernels();
#endif
#if defined(FUSED_RNN_CPU_AVX512)
const KernelTable& avx512_kernels();
#endif

}  // namespace cpu
}  // namespace fused_rnn
