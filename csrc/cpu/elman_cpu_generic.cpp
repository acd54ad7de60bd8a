// The CPU recurrence kernels for any x86-64 (or other) CPU: the baseline instruction set, 16-byte vectors.
#include <cmath>
#include <cstdint>
#include <utility>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "elman_cpu.h"

// No FMA contraction (g++ contracts by default in C++ even in ISO mode): see elman_cpu_kernels.inc, "Numerics".
#pragma GCC optimize("fp-contract=off")
#define FUSED_RNN_ISA generic
#define FUSED_RNN_VBYTES 16
#define FUSED_RNN_VREGS 16
#define FUSED_RNN_FMA 0
#include "elman_cpu_kernels.inc"

namespace fused_rnn {
namespace cpu {
const KernelTable& generic_kernels() {
  static const KernelTable table = generic::make_table("generic");
  return table;
}
}  // namespace cpu
}  // namespace fused_rnn
