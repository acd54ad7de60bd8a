// The bf16 kernels on AMX tiles (tdpbf16ps: Intel Sapphire Rapids and later; issue 19): the avx512bf16 set with the
// per-step matvec on tiles (elman_cpu_kernels.inc, "The same matvec on AMX tiles"). Compiled with a target pragma,
// so the rest of the extension stays baseline x86-64. elman_cpu.cpp hands this set out only where cpuid reports
// AMX-TILE and AMX-BF16 on top of avx512bf16's flags and the kernel has granted the process the tile data state
// (arch_prctl(ARCH_REQ_XCOMP_PERM)); without that grant the first tile instruction kills the process (SIGILL).
// Not hardware-verified yet (no AMX machine has run it): the automatic choice never picks it; the tests run it where
// the CPU has AMX, and its emulated twin (elman_cpu_avx512amx_emu.cpp) everywhere AVX512-BF16 runs.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <utility>

#include <immintrin.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "elman_cpu.h"

#if defined(FUSED_RNN_CPU_AMX)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,amx-tile,amx-bf16")

#pragma GCC optimize("fp-contract=off")
#define FUSED_RNN_ISA avx512amx
#define FUSED_RNN_VBYTES 64
#define FUSED_RNN_VREGS 32
#define FUSED_RNN_FMA 1
#define FUSED_RNN_BF16 1
#define FUSED_RNN_AMX 1
#include "elman_cpu_kernels.inc"

#pragma GCC pop_options

namespace fused_rnn {
namespace cpu {
const KernelTable& avx512amx_kernels() {
  static const KernelTable table = [] {
    KernelTable t = avx512_kernels();
    t.name = "avx512amx";
    t.pack_bf16 = avx512amx::pack_bf16;
    t.fwd_bf16 = avx512amx::fwd_bf16;
    t.pack_bf16_bwd = avx512amx::pack_bf16_bwd;
    t.bwd_bf16 = avx512amx::bwd_bf16;
    return t;
  }();
  return table;
}
}  // namespace cpu
}  // namespace fused_rnn
#endif  // FUSED_RNN_CPU_AMX
