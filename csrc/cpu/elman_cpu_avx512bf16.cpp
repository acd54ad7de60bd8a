// The bf16 forward for AVX512-BF16 CPUs (vdpbf16ps: Cooper Lake, Sapphire Rapids and later Intel, Zen 4 and later
// AMD): W_hh packed in bf16 pairs, fp32 accumulation, h_t rounded to bf16 as it is stored (elman_cpu_kernels.inc,
// "bf16 forward"). Compiled with a target pragma, so the rest of the extension stays baseline x86-64;
// elman_cpu.cpp selects this set only when cpuid reports AVX512-BF16 on top of avx512's F/BW/VL/DQ and the OS saves
// the AVX-512 state (GCC's __builtin_cpu_supports checks XCR0). Its fp32/fp64 entries are avx512's.
#include <cmath>
#include <cstdint>
#include <utility>

#include <immintrin.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "elman_cpu.h"

#if defined(FUSED_RNN_CPU_AVX512BF16)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")

#pragma GCC optimize("fp-contract=off")
#define FUSED_RNN_ISA avx512bf16
#define FUSED_RNN_VBYTES 64
#define FUSED_RNN_VREGS 32
#define FUSED_RNN_FMA 1
#define FUSED_RNN_BF16 1
#include "elman_cpu_kernels.inc"

#pragma GCC pop_options

namespace fused_rnn {
namespace cpu {
const KernelTable& avx512bf16_kernels() {
  static const KernelTable table = [] {
    KernelTable t = avx512_kernels();
    t.name = "avx512bf16";
    t.pack_bf16 = avx512bf16::pack_bf16;
    t.fwd_bf16 = avx512bf16::fwd_bf16;
    t.pack_bf16_bwd = avx512bf16::pack_bf16_bwd;
    t.bwd_bf16 = avx512bf16::bwd_bf16;
    return t;
  }();
  return table;
}
}  // namespace cpu
}  // namespace fused_rnn
#endif  // FUSED_RNN_CPU_AVX512BF16
