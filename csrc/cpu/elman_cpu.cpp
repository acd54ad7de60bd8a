// fused_rnn::elman_fwd / elman_bwd for the CPU dispatch key: input checks, dtype handling, threads, and the choice
// of instruction set; the time loops themselves are in elman_cpu_kernels.inc (compiled per ISA).
//
// Contract (docs/design.md, fused_rnn/backends/reference.py is the oracle). Shapes: T time, B batch, H hidden.
//   elman_fwd(P [T,B,H], h0 [B,H], w_hh [H,H], lengths [B] int64 | None, reverse, nonlinearity, tier, allow_tf32)
//     -> (Y [T,B,H], h_n [B,H])
//   elman_bwd(dY [T,B,H], dh_n [B,H], Y [T,B,H], w_hh [H,H], lengths, reverse, nonlinearity, tier, allow_tf32)
//     -> (dA [T,B,H], dh0 [B,H])
// fp32 and fp64 run natively; fp16 and bf16 are upcast to fp32 inside the op, h_t is rounded to the storage dtype
// at every step (as the reference does), the backward carries its gradient in fp32 and rounds dA only when storing.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include "../fused_rnn.h"
#include "elman_cpu.h"

namespace fused_rnn {
namespace cpu {
namespace {

// ---- instruction-set choice (run time: the binary runs on any x86-64 CPU) -------------------------------------
const KernelTable* best_kernels() {
#if defined(FUSED_RNN_CPU_AVX2)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return &avx2_kernels();
#endif
  return &generic_kernels();
}

std::atomic<const KernelTable*>& active_kernels() {
  static std::atomic<const KernelTable*> k{best_kernels()};
  return k;
}

// Test hook: "" -> the active kernel set's name; "auto" | "generic" | "avx2" -> switch (error if this CPU or build
// cannot run it) and return the new name. Lets the tests run the generic kernels on an AVX2 machine too.
std::string cpu_isa_op(const std::string& request) {
  if (request.empty()) return active_kernels().load()->name;
  const KernelTable* k = nullptr;
  if (request == "auto") {
    k = best_kernels();
  } else if (request == "generic") {
    k = &generic_kernels();
  } else if (request == "avx2") {
#if defined(FUSED_RNN_CPU_AVX2)
    TORCH_CHECK(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"),
                "fused_rnn.cpu_isa: this CPU has no AVX2+FMA");
    k = &avx2_kernels();
#else
    TORCH_CHECK(false, "fused_rnn.cpu_isa: this build has no AVX2 kernels");
#endif
  } else {
    TORCH_CHECK(false, "fused_rnn.cpu_isa: unknown instruction set '", request, "' (auto, generic, avx2)");
  }
  active_kernels().store(k);
  return k->name;
}

// ---- own loops vs per-step BLAS --------------------------------------------------------------------------------
// Large B·H: each step is one BLAS GEMM into a [B,H] slice (MKL blocks W for the cache and splits the GEMM over the
// threads). Otherwise our own register-blocked loops run each batch row through all T with no per-step dispatcher
// call and no per-step thread synchronisation. Measured 2026-11-27 on this 2-core AMD EPYC (AVX2), fp32 op alone,
// best of 15, 2 threads, load average ~4 -- own vs BLAS, forward / backward ms:
//   T=128 B=64 H=512: 45.7 / 82.7 vs 32.6 / 29.6   (W_hh = 1 MB: streamed per 4-row block, BLAS blocks it)
//   T=128 B=32 H=256:  4.4 /  3.6 vs  6.0 /  5.4
//   T=256 B=16 H=256:  6.9 /  6.4 vs  8.2 /  6.9
//   T=256 B=8  H=256:  3.5 /  1.7 vs  4.5 /  3.9
// Under heavy load (load average > 100) the per-step barriers made BLAS 2-6x slower at every size, so ties go to
// the own loops.
constexpr int64_t kBlasMinBatch = 32;
constexpr int64_t kBlasMinHidden = 384;

// 0 = the rule above; n > 0 = forced: BLAS iff B >= n (tests and benchmarks).
std::atomic<int64_t>& forced_blas_min_batch() {
  static std::atomic<int64_t> v{0};
  return v;
}

bool use_blas(int64_t B, int64_t H) {
  const int64_t forced = forced_blas_min_batch().load();
  if (forced > 0) return B >= forced;
  return B >= kBlasMinBatch && H >= kBlasMinHidden;
}

// Test/benchmark hook: n > 0 forces the per-step BLAS path for every B >= n, whatever H (1 = always, a huge value
// = never); n = 0 restores the default rule; n < 0 only reads. Returns the forced value in force (0 = default rule).
int64_t cpu_blas_min_batch_op(int64_t n) {
  if (n >= 0) forced_blas_min_batch().store(n);
  return forced_blas_min_batch().load();
}

// ---- shared helpers --------------------------------------------------------------------------------------------
at::ScalarType compute_type(at::ScalarType st) { return st == at::kDouble ? at::kDouble : at::kFloat; }

Round round_mode(at::ScalarType st) {
  if (st == at::kHalf) return Round::Half;
  if (st == at::kBFloat16) return Round::BFloat16;
  return Round::None;
}

void check_cpu_common(const char* op, const at::Tensor& a, const std::string& tier) {
  TORCH_CHECK(a.device().is_cpu(), "fused_rnn.", op, " (cpu): tensors must be on the CPU, got ", a.device());
  TORCH_CHECK(tier.empty(), "fused_rnn.", op, " (cpu): the CPU backend has no tiers, got tier '", tier, "'");
  auto st = a.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16, "fused_rnn.", op,
              ": dtype must be float32, float64, float16 or bfloat16, got ", st);
}

// lengths [B] int64 -> a contiguous copy whose every value has been checked to lie in [1, T] (reading them costs
// nothing on the CPU, and a bad value must never index out of bounds).
c10::optional<at::Tensor> checked_lengths(const char* op, const c10::optional<at::Tensor>& lengths, int64_t T) {
  if (!lengths.has_value()) return c10::nullopt;
  at::Tensor L = lengths->contiguous();
  const int64_t* p = L.const_data_ptr<int64_t>();
  for (int64_t b = 0; b < L.numel(); ++b) {
    TORCH_CHECK(p[b] >= 1 && p[b] <= T, "fused_rnn.", op, ": lengths must lie in [1, T] = [1, ", T, "], got lengths[",
                b, "] = ", p[b]);
  }
  return L;
}

// Run fn(b0, b1, scratch) over batch rows in blocks of kRowBlock, on torch's intra-op threads when the work pays
// for them. Each task owns its scratch; rows are independent, so there is no synchronisation inside the time loop.
template <typename T, typename Fn>
void for_row_blocks(int64_t T_, int64_t B, int64_t H, const Fn& fn) {
  const int64_t nblocks = (B + kRowBlock - 1) / kRowBlock;
  // Below ~2e5 multiply-adds per block a thread hand-off (~10-20 µs) costs more than it saves.
  const int64_t work = T_ * H * H * std::min<int64_t>(B, kRowBlock);
  if (nblocks == 1 || work < 200000) {  // inline: not even a one-thread parallel region
    std::vector<T> scratch(scratch_elems(H));
    fn(0, B, scratch.data());
    return;
  }
  at::parallel_for(0, nblocks, 1, [&](int64_t s, int64_t e) {
    std::vector<T> scratch(scratch_elems(H));
    fn(s * kRowBlock, std::min(e * kRowBlock, B), scratch.data());
  });
}

// ---- per-step BLAS path (large B) ------------------------------------------------------------------------------
// Row masks per step come from lengths exactly as in the own loops: row b is valid at t iff t < L_b.
template <typename T>
void act_rows_parallel(const KernelTable& K, T* a, int64_t B, int64_t H, int act) {
  // tanh over B·H values per step: two threads from ~16k values on (a hand-off costs ~10 µs).
  at::parallel_for(0, B, std::max<int64_t>(1, 16384 / H), [&](int64_t b0, int64_t b1) {
    if constexpr (std::is_same_v<T, float>) {
      K.act_f32(a + b0 * H, (b1 - b0) * H, act);
    } else {
      K.act_f64(a + b0 * H, (b1 - b0) * H, act);
    }
  });
}

// Forward: S [B,H] state (starts at h0), A [B,H] pre-activation scratch; per step A = P_t + S @ Wt (one GEMM),
// A = f(A) (rounded for fp16/bf16), valid rows copied to Y_t and S.
template <typename T>
void fwd_blas(const KernelTable& K, const at::Tensor& Pc, const at::Tensor& h0c, const at::Tensor& Wt, const int64_t* lp,
              at::Tensor& Y, at::Tensor& h_n, bool reverse, int act, Round rm) {
  const int64_t T_ = Pc.size(0), B = Pc.size(1), H = Pc.size(2);
  at::Tensor S = h0c.clone();
  at::Tensor A = at::empty({B, H}, Pc.options());
  T* Sp = S.mutable_data_ptr<T>();
  T* Ap = A.mutable_data_ptr<T>();
  T* Yp = Y.mutable_data_ptr<T>();
  for (int64_t s = 0; s < T_; ++s) {
    const int64_t t = reverse ? T_ - 1 - s : s;
    at::addmm_out(A, Pc[t], S, Wt);
    act_rows_parallel<T>(K, Ap, B, H, act);
    for (int64_t b = 0; b < B; ++b) {
      if (lp != nullptr && t >= lp[b]) continue;
      T* ab = Ap + b * H;
      if constexpr (std::is_same_v<T, float>) {
        if (rm == Round::Half) {
          for (int64_t j = 0; j < H; ++j) ab[j] = static_cast<float>(c10::Half(ab[j]));
        } else if (rm == Round::BFloat16) {
          for (int64_t j = 0; j < H; ++j) ab[j] = static_cast<float>(c10::BFloat16(ab[j]));
        }
      }
      std::memcpy(Yp + (t * B + b) * H, ab, H * sizeof(T));
      std::memcpy(Sp + b * H, ab, H * sizeof(T));
    }
  }
  h_n.copy_(S);
}

// Backward: Cr [B,H] carry (starts at dh_n), D [B,H] this step's dA (0 in rows not valid), Tm [B,H] = D @ W.
template <typename T>
void bwd_blas(const at::Tensor& dYc, const at::Tensor& dhc, const at::Tensor& Yc, const at::Tensor& W,
              const int64_t* lp, at::Tensor& dA, at::Tensor& dh0, bool reverse, int act) {
  const int64_t T_ = Yc.size(0), B = Yc.size(1), H = Yc.size(2);
  at::Tensor Cr = dhc.clone();
  at::Tensor D = at::empty({B, H}, Yc.options());
  at::Tensor Tm = at::empty({B, H}, Yc.options());
  T* Cp = Cr.mutable_data_ptr<T>();
  T* Dp = D.mutable_data_ptr<T>();
  const T* Tp = Tm.const_data_ptr<T>();
  const T* dYp = dYc.const_data_ptr<T>();
  const T* Yp = Yc.const_data_ptr<T>();
  T* dAp = dA.mutable_data_ptr<T>();
  for (int64_t s = 0; s < T_; ++s) {
    const int64_t t = reverse ? s : T_ - 1 - s;
    at::parallel_for(0, B, std::max<int64_t>(1, 16384 / H), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        T* db = Dp + b * H;
        if (lp != nullptr && t >= lp[b]) {
          std::fill(db, db + H, T(0));
          continue;
        }
        const int64_t off = (t * B + b) * H;
        const T* cb = Cp + b * H;
        const T* yb = Yp + off;
        const T* gb = dYp + off;
        if (act == 0) {
          for (int64_t j = 0; j < H; ++j) db[j] = (T(1) - yb[j] * yb[j]) * (gb[j] + cb[j]);
        } else {
          for (int64_t j = 0; j < H; ++j) db[j] = (yb[j] <= T(0) ? T(0) : T(1)) * (gb[j] + cb[j]);
        }
        std::memcpy(dAp + off, db, H * sizeof(T));
      }
    });
    at::mm_out(Tm, D, W);
    for (int64_t b = 0; b < B; ++b) {
      if (lp != nullptr && t >= lp[b]) continue;
      std::memcpy(Cp + b * H, Tp + b * H, H * sizeof(T));
    }
  }
  dh0.copy_(Cr);
}

// ---- forward ---------------------------------------------------------------------------------------------------
std::tuple<at::Tensor, at::Tensor> elman_fwd_cpu(const at::Tensor& P, const at::Tensor& h0, const at::Tensor& w_hh,
                                                 const c10::optional<at::Tensor>& lengths, bool reverse,
                                                 c10::string_view nonlinearity_sv, c10::string_view tier_sv,
                                                 bool allow_tf32) {
  (void)allow_tf32;  // TF32 is a CUDA setting; the CPU computes IEEE fp32
  check_fwd_inputs(P, h0, w_hh, lengths);
  // `str` arguments arrive as string_view: the CPU and CUDA kernels of one op must share a C++ signature.
  const std::string nonlinearity(nonlinearity_sv), tier(tier_sv);
  check_cpu_common("elman_fwd", P, tier);
  const int act = static_cast<int>(parse_nonlinearity(nonlinearity));
  const int64_t T_ = P.size(0), B = P.size(1), H = P.size(2);
  const auto L = checked_lengths("elman_fwd", lengths, T_);
  const auto st = P.scalar_type();
  if (B == 0 || H == 0) {
    return {at::zeros({T_, B, H}, P.options()), at::zeros({B, H}, P.options())};
  }
  const auto ct = compute_type(st);
  const at::Tensor Pc = P.to(ct).contiguous();
  const at::Tensor h0c = h0.to(ct).contiguous();
  const at::Tensor Wt = w_hh.to(ct).t().contiguous();  // stored once per call: the matvec's inner loop is contiguous
  at::Tensor Y = L.has_value() ? at::zeros({T_, B, H}, Pc.options()) : at::empty({T_, B, H}, Pc.options());
  at::Tensor h_n = at::empty({B, H}, Pc.options());
  const KernelTable& K = *active_kernels().load();
  const int64_t* lp = L.has_value() ? L->const_data_ptr<int64_t>() : nullptr;
  const Round rm = round_mode(st);
  const bool blas = use_blas(B, H);

  if (blas && ct == at::kFloat) {
    fwd_blas<float>(K, Pc, h0c, Wt, lp, Y, h_n, reverse, act, rm);
  } else if (blas) {
    fwd_blas<double>(K, Pc, h0c, Wt, lp, Y, h_n, reverse, act, rm);
  } else if (ct == at::kFloat) {
    FwdArgs<float> A{Pc.const_data_ptr<float>(), h0c.const_data_ptr<float>(), Wt.const_data_ptr<float>(), lp,
                     Y.mutable_data_ptr<float>(), h_n.mutable_data_ptr<float>(), T_, B, H, reverse, act, rm};
    for_row_blocks<float>(T_, B, H, [&](int64_t b0, int64_t b1, float* s) { K.fwd_f32(A, b0, b1, s); });
  } else {
    FwdArgs<double> A{Pc.const_data_ptr<double>(), h0c.const_data_ptr<double>(), Wt.const_data_ptr<double>(), lp,
                      Y.mutable_data_ptr<double>(), h_n.mutable_data_ptr<double>(), T_, B, H, reverse, act, rm};
    for_row_blocks<double>(T_, B, H, [&](int64_t b0, int64_t b1, double* s) { K.fwd_f64(A, b0, b1, s); });
  }
  if (ct != st) return {Y.to(st), h_n.to(st)};  // exact: every value was already rounded to st
  return {Y, h_n};
}

// ---- backward --------------------------------------------------------------------------------------------------
std::tuple<at::Tensor, at::Tensor> elman_bwd_cpu(const at::Tensor& dY, const at::Tensor& dh_n, const at::Tensor& Y,
                                                 const at::Tensor& w_hh, const c10::optional<at::Tensor>& lengths,
                                                 bool reverse, c10::string_view nonlinearity_sv,
                                                 c10::string_view tier_sv, bool allow_tf32) {
  (void)allow_tf32;
  check_bwd_inputs(dY, dh_n, Y, w_hh, lengths);
  const std::string nonlinearity(nonlinearity_sv), tier(tier_sv);
  check_cpu_common("elman_bwd", Y, tier);
  const int act = static_cast<int>(parse_nonlinearity(nonlinearity));
  const int64_t T_ = Y.size(0), B = Y.size(1), H = Y.size(2);
  const auto L = checked_lengths("elman_bwd", lengths, T_);
  const auto st = Y.scalar_type();
  if (B == 0 || H == 0) {
    return {at::zeros({T_, B, H}, Y.options()), at::zeros({B, H}, Y.options())};
  }
  const auto ct = compute_type(st);
  const at::Tensor dYc = dY.to(ct).contiguous();
  const at::Tensor dhc = dh_n.to(ct).contiguous();
  const at::Tensor Yc = Y.to(ct).contiguous();
  const at::Tensor W = w_hh.to(ct).contiguous();
  // dA in the compute dtype (fp32 for fp16/bf16): the carried gradient uses the unrounded value, dA is rounded once
  // when converted to the storage dtype at the end -- the reference's order.
  at::Tensor dA = L.has_value() ? at::zeros({T_, B, H}, Yc.options()) : at::empty({T_, B, H}, Yc.options());
  at::Tensor dh0 = at::empty({B, H}, Yc.options());
  const KernelTable& K = *active_kernels().load();
  const int64_t* lp = L.has_value() ? L->const_data_ptr<int64_t>() : nullptr;
  const bool blas = use_blas(B, H);

  if (blas && ct == at::kFloat) {
    bwd_blas<float>(dYc, dhc, Yc, W, lp, dA, dh0, reverse, act);
  } else if (blas) {
    bwd_blas<double>(dYc, dhc, Yc, W, lp, dA, dh0, reverse, act);
  } else if (ct == at::kFloat) {
    BwdArgs<float> A{dYc.const_data_ptr<float>(), dhc.const_data_ptr<float>(), Yc.const_data_ptr<float>(),
                     W.const_data_ptr<float>(), lp, dA.mutable_data_ptr<float>(), dh0.mutable_data_ptr<float>(),
                     T_, B, H, reverse, act};
    for_row_blocks<float>(T_, B, H, [&](int64_t b0, int64_t b1, float* s) { K.bwd_f32(A, b0, b1, s); });
  } else {
    BwdArgs<double> A{dYc.const_data_ptr<double>(), dhc.const_data_ptr<double>(), Yc.const_data_ptr<double>(),
                      W.const_data_ptr<double>(), lp, dA.mutable_data_ptr<double>(), dh0.mutable_data_ptr<double>(),
                      T_, B, H, reverse, act};
    for_row_blocks<double>(T_, B, H, [&](int64_t b0, int64_t b1, double* s) { K.bwd_f64(A, b0, b1, s); });
  }
  if (ct != st) return {dA.to(st), dh0.to(st)};
  return {dA, dh0};
}

}  // namespace
}  // namespace cpu

TORCH_LIBRARY_FRAGMENT(fused_rnn, m) {
  m.def("cpu_isa(str request='') -> str", &cpu::cpu_isa_op);
  m.def("cpu_blas_min_batch(int n=-1) -> int", &cpu::cpu_blas_min_batch_op);
}

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) {
  m.impl("elman_fwd", &cpu::elman_fwd_cpu);
  m.impl("elman_bwd", &cpu::elman_bwd_cpu);
}

}  // namespace fused_rnn
