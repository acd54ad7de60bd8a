// The CPU recurrence kernels' interface: raw-pointer loops, no ATen, compiled once per instruction set
// (elman_cpu_generic.cpp: baseline x86-64 / any CPU; elman_cpu_avx2.cpp: AVX2 + FMA; elman_cpu_avx512.cpp: AVX-512
// F/BW/VL/DQ; elman_cpu_avx512bf16.cpp: the bf16 kernels for AVX512-BF16; elman_cpu_avx512amx.cpp: the same on
// AMX tiles, and elman_cpu_avx512amx_emu.cpp with the tiles emulated) and picked at run time by
// elman_cpu.cpp. Shapes: T time, B batch, H hidden; every array is contiguous,
// time-major.
#pragma once

#include <cstdint>

// The AVX2 and AVX-512 kernels are built where GCC's target pragma can compile them; any other build keeps the
// generic ones only. The AVX512-BF16 forward (elman_cpu_avx512bf16.cpp, vdpbf16ps) needs GCC >= 10.
#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__) && !defined(__clang__)
#define FUSED_RNN_CPU_AVX2 1
#define FUSED_RNN_CPU_AVX512 1
#if __GNUC__ >= 10
#define FUSED_RNN_CPU_AVX512BF16 1
#endif
#if __GNUC__ >= 11  // the AMX tile intrinsics (elman_cpu_avx512amx.cpp)
#define FUSED_RNN_CPU_AMX 1
#endif
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
  const T* W;               // [H, H] w_hh as given
  T* Wp;                    // npanels·H·NW values: w_hhᵀ in panels (packed by the workers when Work::pack)
  const int64_t* lengths;   // [B], already validated to lie in [1, T]; nullptr = all T
  T* Y;                     // [T, B, H] out; must be zero-filled when lengths != nullptr (padded steps stay 0)
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
  const T* W;               // [H, H] w_hh as given
  T* Wp;                    // npanels·H·NW values: w_hh in panels (packed by the workers when Work::pack)
  const int64_t* lengths;   // [B] in [1, T] or nullptr
  T* dA;                    // [T, B, H] out; must be zero-filled when lengths != nullptr
  T* dh0;                   // [B, H] out; also the carried gradient during the loop
  int64_t T_, B, H;
  bool reverse;
  int act;
};

// The bf16 backward (KernelTable::bwd_bf16): as BwdArgs, with the carry C in fp32 (its final value is dh0).
struct BwdArgsBf16 {
  const uint16_t* dY;       // [T, B, H] bf16 bits
  const uint16_t* dh_n;     // [B, H]
  const uint16_t* Y;        // [T, B, H]
  const uint16_t* W;        // [H, H]
  uint16_t* Wp;             // packed w_hh (KernelTable::pack_bf16_bwd)
  const int64_t* lengths;   // [B] in [1, T] or nullptr
  uint16_t* dA;             // [T, B, H] out; must be zero-filled when lengths != nullptr
  float* C;                 // [B, H] out: the carried gradient; dh0 at the end
  int64_t T_, B, H;
  bool reverse;
  int act;
};

// The workers of one hidden-split call (defined in elman_cpu.cpp, compiled for the baseline ISA). The work is done
// in rounds (packing, then one per step); a round is a set of panels (column blocks of the result) that every worker
// needs complete before the next round. team_next hands this worker its next panels [*a, *b) of `round` (up to
// `unit` of them): from its own range first (so its share of W_hh stays in its core's cache), then from the others'
// leftovers; `finished` = how many panels it completed since its last call. Returns false once the whole round is
// complete (all panels done by someone); while another worker holds the call (this one was descheduled too long),
// it claims nothing and returns false when the round is complete, until the holder's lease runs out and the call is
// handed back. Called a few times per step, out of line.
struct Team;
bool team_next(Team* team, int worker, int64_t round, int unit, int64_t finished, int64_t* a, int64_t* b);

// One worker's share of a call: batch rows [b0, b1) for all T steps, and the panels [p0, p1) -- the result columns
// [p0·NW, min(p1·NW, H)) -- it owns (alone: all it computes; in a team: where it starts, see team_next). pack: the
// workers pack W into Wp themselves (round 0) rather than finding it packed. scratch: work_scratch_bytes(B) bytes,
// 64-byte aligned.
struct Work {
  int64_t b0, b1, p0, p1;
  Team* team;  // nullptr: no other worker needs this one's results during the loop (serial, or a batch split)
  int worker;
  bool pack;
  void* scratch;
};

// bf16 arrays are passed as their bit patterns (uint16_t): the kernels never touch c10::BFloat16 (see
// elman_cpu_kernels.inc on what the ISA translation units may instantiate).
using bf16_bits = uint16_t;

inline int64_t work_scratch_bytes(int64_t B) { return 24 * B + 4096; }

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
  // bf16 forward on bf16 P, h0 and Y, W_hh packed in bf16 pairs for vdpbf16ps (fp32 accumulation, h_t rounded to
  // bf16 as it is stored). nullptr where the set has none: bf16 then runs fwd_f32 on data converted to fp32.
  // pack_bf16: panels [p0, p1) of w_hhᵀ, each [ceil(H/2)][panel_f32][2] bf16 (k pairs innermost, zero-padded).
  void (*pack_bf16)(const bf16_bits* W, int64_t H, int64_t p0, int64_t p1, bf16_bits* out);
  void (*fwd_bf16)(const FwdArgs<bf16_bits>&, const Work&);
  // bf16 backward on bf16 dY, Y, dA with w_hh (not transposed) packed in bf16 pairs along k; the carry stays fp32.
  void (*pack_bf16_bwd)(const bf16_bits* W, int64_t H, int64_t p0, int64_t p1, bf16_bits* out);
  void (*bwd_bf16)(const BwdArgsBf16&, const Work&);
};

// k pairs per packed bf16 panel: ceil(H/2) rounded up to 16, the rows beyond ceil(H/2) zero. The padding lets an AMX
// tile (16 k pairs) load the last pairs of a panel without reading into the next one; vdpbf16ps reads ceil(H/2).
inline int64_t bf16_panel_pairs(int64_t H) { return ((H + 1) / 2 + 15) / 16 * 16; }

// bf16 values in one packed panel set: npanels · NW · 2 · bf16_panel_pairs(H).
inline int64_t bf16_packed_values(int64_t npanels, int64_t NW, int64_t H) {
  return npanels * NW * 2 * bf16_panel_pairs(H);
}

const KernelTable& generic_kernels();
#if defined(FUSED_RNN_CPU_AVX2)
const KernelTable& avx2_kernels();
#endif
#if defined(FUSED_RNN_CPU_AVX512)
const KernelTable& avx512_kernels();
#endif
#if defined(FUSED_RNN_CPU_AVX512BF16)
// avx512_kernels() plus the AVX512-BF16 bf16 forward (the fp32/fp64 entries are avx512's).
const KernelTable& avx512bf16_kernels();
// The same layout with the matvec widened to fp32 FMAs (elman_cpu_avx512bf16fma.cpp): the choice on Intel cores.
const KernelTable& avx512bf16fma_kernels();
// The same with the bf16 matvec on tiles emulated in software: a test hook (any AVX512-BF16 CPU).
const KernelTable& avx512amx_emu_kernels();
#endif
#if defined(FUSED_RNN_CPU_AMX)
// avx512bf16_kernels() with the bf16 matvec on AMX tiles (tdpbf16ps).
const KernelTable& avx512amx_kernels();
#endif

}  // namespace cpu
}  // namespace fused_rnn
