// The CPU recurrence kernels for AVX-512 CPUs (F, BW, VL, DQ: Skylake-SP and later Intel, Zen 4 and later AMD):
// 64-byte vectors and 32 registers, so a register tile of 6 batch rows × 64 columns. Compiled with a target pragma
// so the rest of the extension stays baseline x86-64; elman_cpu.cpp calls these only when cpuid (and the OS's saved
// register state, which GCC's __builtin_cpu_supports checks) reports all four.
#include <cmath>
#include <cstdint>
#include <utility>

#include <immintrin.h>  // the FMA intrinsics (target-attributed: usable in the pragma region below)

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "elman_cpu.h"

#if defined(FUSED_RNN_CPU_AVX512)
// Every header is included above: only the kernels below are compiled for AVX-512.
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")

// No FMA contraction by the compiler (g++ contracts by default in C++ even in ISO mode); the matvec's explicit FMA:
// elman_cpu_kernels.inc, "Numerics".
#pragma GCC optimize("fp-contract=off")
#define FUSED_RNN_ISA avx512
#define FUSED_RNN_VBYTES 64
#define FUSED_RNN_VREGS 32
#define FUSED_RNN_FMA 1
#include "elman_cpu_kernels.inc"

#pragma GCC pop_options

namespace fused_rnn {
namespace cpu {
const KernelTable& avx512_kernels() {
  static const KernelTable table = avx512::make_table("avx512");
  return table;
}
}  // namespace cpu
}  // namespace fused_rnn
#endif  // FUSED_RNN_CPU_AVX512
