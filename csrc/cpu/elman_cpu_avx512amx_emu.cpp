// The AMX bf16 kernels with the tile instructions emulated in software (elman_cpu_kernels.inc, FUSED_RNN_AMX 2): the
// same source as elman_cpu_avx512amx.cpp, runnable on any AVX512-BF16 CPU, so the tiles' indexing, configuration,
// K tails, scattered rows and per-thread tile state are tested where no AMX exists (tests/test_cpu_bf16.py, variant
// "avx512amx_emu"). A test hook only: far slower than either real set, never chosen automatically.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <utility>

#include <immintrin.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "elman_cpu.h"

#if defined(FUSED_RNN_CPU_AVX512BF16)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")

#pragma GCC optimize("fp-contract=off")
#define FUSED_RNN_ISA avx512amx_emu
#define FUSED_RNN_VBYTES 64
#define FUSED_RNN_VREGS 32
#define FUSED_RNN_FMA 1
#define FUSED_RNN_BF16 1
#define FUSED_RNN_AMX 2
#include "elman_cpu_kernels.inc"

#pragma GCC pop_options

namespace fused_rnn {
namespace cpu {
const KernelTable& avx512amx_emu_kernels() {
  static const KernelTable table = [] {
    KernelTable t = avx512_kernels();
    t.name = "avx512amx_emu";
    t.pack_bf16 = avx512amx_emu::pack_bf16;
    t.fwd_bf16 = avx512amx_emu::fwd_bf16;
    t.pack_bf16_bwd = avx512amx_emu::pack_bf16_bwd;
    t.bwd_bf16 = avx512amx_emu::bwd_bf16;
    return t;
  }();
  return table;
}
}  // namespace cpu
}  // namespace fused_rnn
#endif  // FUSED_RNN_CPU_AVX512BF16
