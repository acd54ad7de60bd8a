// The CPU recurrence kernels for AVX2 + FMA CPUs (32-byte vectors, 16 registers), compiled with a target pragma so
// the rest of the extension stays baseline x86-64; elman_cpu.cpp calls these only when cpuid reports AVX2 and FMA.
// The matvec uses explicit FMA; nothing else is contracted (elman_cpu_kernels.inc, "Numerics").
#include <cmath>
#include <cstdint>
#include <utility>

#include <immintrin.h>  // the FMA intrinsics (target-attributed: usable in the pragma region below)

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "elman_cpu.h"

#if defined(FUSED_RNN_CPU_AVX2)
// Every header is included above: only the kernels below are compiled for AVX2 + FMA.
#pragma GCC push_options
#pragma GCC target("avx2,fma")

// No FMA contraction by the compiler (g++ contracts by default in C++ even in ISO mode): elman_cpu_kernels.inc.
#pragma GCC optimize("fp-contract=off")
#define FUSED_RNN_ISA avx2
#define FUSED_RNN_VBYTES 32
#define FUSED_RNN_VREGS 16
#define FUSED_RNN_FMA 1
#include "elman_cpu_kernels.inc"

#pragma GCC pop_options

namespace fused_rnn {
namespace cpu {
const KernelTable& avx2_kernels() {
  static const KernelTable table = avx2::make_table("avx2");
  return table;
}
}  // namespace cpu
}  // namespace fused_rnn
#endif  // FUSED_RNN_CPU_AVX2
