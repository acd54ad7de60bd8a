// The bf16 kernels for Intel cores with AVX512-BF16 (Cooper Lake, Sapphire/Emerald/Granite Rapids): the avx512bf16
// set's layout (W_hh packed per call in bf16 pairs, bf16 P / h0 / Y / dY / dA, h_t rounded to bf16 as it is stored,
// the backward's carry in fp32), but the matvec widens the pairs in registers and multiplies in fp32 with FMAs
// (elman_cpu_kernels.inc, FUSED_RNN_BF16_FMA) instead of vdpbf16ps: on the Emerald Rapids VM vdpbf16ps zmm issues at
// 1.3-1.6 G/s per core against 6.1-6.5 G/s for vfmadd231ps zmm (register-only, quiet, 2026-12-07: 84-103 against
// 194-209 GFLOP/s), so the dot product is the slower way to the same products there, while on a Zen 5 it is the
// faster (elman_cpu.cpp, best_kernels). Selected by elman_cpu.cpp on GenuineIntel CPUs with AVX512-BF16; its fp32/fp64
// entries are avx512's.
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
#define FUSED_RNN_ISA avx512bf16fma
#define FUSED_RNN_VBYTES 64
#define FUSED_RNN_VREGS 32
#define FUSED_RNN_FMA 1
#define FUSED_RNN_BF16 1
#define FUSED_RNN_BF16_FMA 1
#include "elman_cpu_kernels.inc"

#pragma GCC pop_options

namespace fused_rnn {
namespace cpu {
const KernelTable& avx512bf16fma_kernels() {
  static const KernelTable table = [] {
    KernelTable t = avx512_kernels();
    t.name = "avx512bf16fma";
    t.pack_bf16 = avx512bf16fma::pack_bf16;
    t.fwd_bf16 = avx512bf16fma::fwd_bf16;
    t.pack_bf16_bwd = avx512bf16fma::pack_bf16_bwd;
    t.bwd_bf16 = avx512bf16fma::bwd_bf16;
    return t;
  }();
  return table;
}
}  // namespace cpu
}  // namespace fused_rnn
#endif  // FUSED_RNN_CPU_AVX512BF16
