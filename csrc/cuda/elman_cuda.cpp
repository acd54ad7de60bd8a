// CUDA implementations of fused_rnn::elman_fwd / elman_bwd (schemas in csrc/ops.cpp, contract in docs/design.md).
//
// Host code only (built by the host compiler, so it may use ATen freely): input checks, the device guard and
// current stream, the tier dispatch, the tier record (dispatch_log.h), and the `fallback` tier's per-step cuBLAS
// GEMMs. The kernels live in elman_kernels.cuh (batch_tiled, fallback pointwise), persistent*.cu (persistent,
// cluster) and cluster2*.cu (cluster2, forced only). Also the debug ops that show the dispatch decisions on a
// machine without a GPU (registered below).
// Shapes: T time, B batch, H hidden.
#include <climits>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/Exceptions.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "arch.h"
#include "cluster2.h"
#include "cluster_plan.h"
#include "dispatch_log.h"
#include "elman_launch.h"
#include "fused_rnn.h"
#include "gpu_verified.h"
#include "persistent.h"

namespace fused_rnn {

// cluster2 is forced only (never the empty tier's choice, never on the GPU-verified list before a GPU report).
std::vector<std::string> cuda_tier_names() {
  return {"batch_tiled", "persistent", "cluster", "cluster2", "fallback"};
}

namespace cuda {
namespace {

enum class Tier { Auto, BatchTiled, Persistent, Cluster, Cluster2, Fallback };

Tier parse_tier(const std::string& s) {
  if (s.empty()) return Tier::Auto;
  if (s == "batch_tiled") return Tier::BatchTiled;
  if (s == "persistent") return Tier::Persistent;
  if (s == "cluster") return Tier::Cluster;
  if (s == "cluster2") return Tier::Cluster2;  // forced only: csrc/cuda/NOTES_cluster2.md
  if (s == "fallback") return Tier::Fallback;
  TORCH_CHECK(false, "fused_rnn (cuda): unknown tier '", s,
              "'; choose one of '' (the GPU-verified choice), 'batch_tiled', 'persistent', 'cluster', 'cluster2', ",
              "'fallback'");
  return Tier::Fallback;  // unreachable
}

const char* tier_name(Tier t) {
  switch (t) {
    case Tier::BatchTiled:
      return "batch_tiled";
    case Tier::Persistent:
      return "persistent";
    case Tier::Cluster:
      return "cluster";
    case Tier::Cluster2:
      return "cluster2";
    case Tier::Fallback:
      return "fallback";
    default:
      return "";
  }
}

// The tier a call tries first (a pure function of its inputs; torch.ops.fused_rnn.cuda_resolve_tier exposes it to
// CPU tests). A named tier is tried as asked (tests and benchmarks force tiers; a refusal still falls back). The
// empty tier -- what a direct torch.ops.fused_rnn.elman_fwd(..., tier="") call gets -- runs only GPU-verified tiers
// (issue #21): the C++ side's own preference, batch_tiled where w_hh can fit in shared memory (H <= 352 at any dtype;
// the launcher refuses beyond the device's limit), is taken only when `verified` lists it for this compute
// capability; otherwise `fallback`, the tier that runs any shape on any GPU. (fused_rnn's Python selector passes
// an explicit tier from its own heuristic; "" matters to direct callers of the op.)
Tier resolve_tier(Tier requested, int64_t H, int cc_major, int cc_minor, const std::vector<std::string>& verified,
                  std::string* why) {
  if (requested != Tier::Auto) return requested;
  if (H <= 352) {
    if (gpu_verified(verified, "cuda:batch_tiled", cc_major, cc_minor)) return Tier::BatchTiled;
    if (why != nullptr)
      *why = "tier '': batch_tiled is not on the GPU-verified list for compute capability " +
             std::to_string(cc_major) + "." + std::to_string(cc_minor) + " (csrc/cuda/gpu_verified.h)";
  }
  return Tier::Fallback;
}

DType dtype_of(at::ScalarType st) {
  switch (st) {
    case at::kFloat:
      return DType::F32;
    case at::kDouble:
      return DType::F64;
    case at::kHalf:
      return DType::F16;
    case at::kBFloat16:
      return DType::BF16;
    default:
      TORCH_CHECK(false, "fused_rnn (cuda): unsupported dtype ", st);
  }
  return DType::F32;  // unreachable
}

// Calls F<D>(args...) for the runtime dtype.
#define FUSED_RNN_DTYPE_SWITCH(dt, FN, ...)       \
  [&] {                                           \
    switch (dt) {                                 \
      case DType::F32:                            \
        return FN<DType::F32>(__VA_ARGS__);       \
      case DType::F64:                            \
        return FN<DType::F64>(__VA_ARGS__);       \
      case DType::F16:                            \
        return FN<DType::F16>(__VA_ARGS__);       \
      default:                                    \
        return FN<DType::BF16>(__VA_ARGS__);      \
    }                                             \
  }()

void check_sizes(int64_t T, int64_t B, int64_t H) {
  // Kernel indices are int per dimension and int64 for offsets into [T, B, H].
  TORCH_CHECK(T <= INT_MAX && B <= INT_MAX && H <= INT_MAX,
              "fused_rnn (cuda): T, B and H must each be < 2^31, got T=", T, " B=", B, " H=", H);
}

at::ScalarType acc_type(at::ScalarType st) { return st == at::kDouble ? at::kDouble : at::kFloat; }

// The per-step GEMM of `fallback` (issue #21). Forward: fp16/bf16 run a 16-bit GEMM with fp32 accumulation and fp32
// output on the tensor cores (cublasGemmEx, CUBLAS_COMPUTE_32F): the state it multiplies is the stored output,
// rounded to the storage dtype by the contract, so the inputs are exact and only the fp32 summation order differs
// from an SGEMM on upcast copies -- at half the bytes of w_hh per step. Backward: the carried gradient is fp32 by the
// contract and cuBLAS has no fp32 x bf16 GEMM, so it multiplies by an fp32 copy of w_hh (made once per call);
// rounding the carry to 16 bits would break the precision policy. fp32 (IEEE unless allow_tf32) and fp64 as before.
enum class FallbackGemm { F64, F32, Half };

FallbackGemm fallback_gemm(at::ScalarType st, bool backward) {
  if (st == at::kDouble) return FallbackGemm::F64;
  if (st == at::kFloat) return FallbackGemm::F32;
  return backward ? FallbackGemm::F32 : FallbackGemm::Half;
}

std::string fallback_gemm_name(at::ScalarType st, bool backward, bool allow_tf32) {
  switch (fallback_gemm(st, backward)) {
    case FallbackGemm::F64:
      return "gemm=dgemm";
    case FallbackGemm::Half:
    {
      const std::string t = st == at::kHalf ? "fp16" : "bf16";
      return "gemm=" + t + "x" + t + "->fp32 cublasGemmEx CUBLAS_COMPUTE_32F";
    }
    default:
      return std::string(st == at::kFloat ? "gemm=sgemm" : "gemm=sgemm on an fp32 copy of w_hh (fp32 carry)") +
             (allow_tf32 && st == at::kFloat ? " tf32" : " ieee");
  }
}

// G [B, H] fp32 = S [B, H] @ w_hhᵀ with S and w_hh in fp16/bf16: cublasGemmEx on the current stream's handle, fp32
// accumulation and output. Row-major X [m, n] is column-major Xᵀ, so in cuBLAS terms Gᵀ (H x B) = w_hh (opT on the
// column-major w_hhᵀ) · Sᵀ. No allocation: torch's handle carries its workspace, so this is CUDA-graph capturable.
void gemm_half_f32out(const at::Tensor& S, const at::Tensor& w_hh, at::Tensor& G) {
  const int B = static_cast<int>(S.size(0)), H = static_cast<int>(S.size(1));
  const cudaDataType_t ty = S.scalar_type() == at::kHalf ? CUDA_R_16F : CUDA_R_16BF;
  const float alpha = 1.f, beta = 0.f;
  cublasHandle_t handle = at::cuda::getCurrentCUDABlasHandle();
  TORCH_CUDABLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, H, B, H, &alpha, w_hh.data_ptr(), ty, H,
                                    S.data_ptr(), ty, H, &beta, G.data_ptr(), CUDA_R_32F, H, CUBLAS_COMPUTE_32F,
                                    CUBLAS_GEMM_DEFAULT));
}

// fallback forward: per step G = S @ w_hhᵀ (cuBLAS, into a preallocated buffer), then one pointwise kernel. S [B, H]
// holds the carried state in the storage dtype (the rounded state the contract feeds to the next step).
void fallback_fwd(const ElmanFwdParams& p, DType dt, const at::Tensor& h0, const at::Tensor& w_hh, bool allow_tf32,
                  cudaStream_t stream) {
  const auto st = h0.scalar_type();
  at::Tensor S = h0.clone(at::MemoryFormat::Contiguous);
  at::Tensor G = at::empty(h0.sizes(), h0.options().dtype(acc_type(st)));
  if (dispatch_log::enabled()) dispatch_log::note_detail(fallback_gemm_name(st, false, allow_tf32));
  if (fallback_gemm(st, false) == FallbackGemm::Half) {
    for (int s = 0; s < p.T; ++s) {
      gemm_half_f32out(S, w_hh, G);
      FUSED_RNN_DTYPE_SWITCH(dt, fallback_fwd_step, p, s, S.data_ptr(), G.data_ptr(), stream);
    }
  } else {
    const at::Tensor Wt = w_hh.t();
    std::optional<at::NoTF32Guard> ieee;
    if (!allow_tf32) ieee.emplace();  // cuBLAS would otherwise follow torch's global TF32 setting
    for (int s = 0; s < p.T; ++s) {
      at::mm_out(G, S, Wt);
      FUSED_RNN_DTYPE_SWITCH(dt, fallback_fwd_step, p, s, S.data_ptr(), G.data_ptr(), stream);
    }
  }
  FUSED_RNN_DTYPE_SWITCH(dt, fallback_fwd_finish, p, S.data_ptr(), stream);
}

// fallback backward: per step s = T-1 .. 0, G = D_{s+1} @ w_hh (cuBLAS), then one pointwise kernel that forms
// dA_s and D_s (fp32; fp64 for fp64). After the loop, dh0 = D_0 @ w_hh.
void fallback_bwd(const ElmanBwdParams& p, DType dt, const at::Tensor& dh_n, const at::Tensor& w_hh,
                  bool allow_tf32, cudaStream_t stream) {
  const auto acc = acc_type(dh_n.scalar_type());
  const at::Tensor W = w_hh.to(acc);  // a copy for fp16/bf16 (once per call), w_hh itself otherwise
  at::Tensor G = at::empty(dh_n.sizes(), dh_n.options().dtype(acc));
  at::Tensor D = at::empty_like(G);
  if (dispatch_log::enabled()) dispatch_log::note_detail(fallback_gemm_name(dh_n.scalar_type(), true, allow_tf32));
  std::optional<at::NoTF32Guard> ieee;
  if (!allow_tf32) ieee.emplace();
  for (int s = p.T - 1; s >= 0; --s) {
    if (s < p.T - 1) at::mm_out(G, D, W);
    FUSED_RNN_DTYPE_SWITCH(dt, fallback_bwd_step, p, s, G.data_ptr(), D.data_ptr(), stream);
  }
  at::mm_out(G, D, W);
  FUSED_RNN_DTYPE_SWITCH(dt, fallback_bwd_finish, p, G.data_ptr(), stream);
}

std::string shape_str(int64_t T, int64_t B, int64_t H, at::ScalarType st) {
  return "T=" + std::to_string(T) + " B=" + std::to_string(B) + " H=" + std::to_string(H) + " " +
         std::string(c10::toString(st));
}

// After a dispatch: the record entry (while the log is on). `why` says why the tier that ran differs from the one
// asked for ("" when it ran as asked).
void record(const char* op, c10::string_view requested, Tier ran, const std::string& why, int64_t T, int64_t B,
            int64_t H, at::ScalarType st) {
  // A tier this GPU or build cannot run at all (clusters before sm_90, no kernel image): say so once, clearly; the
  // results are still right (fallback ran). Resource refusals (shared memory, co-residency) stay silent: they are
  // per shape, and the record has them.
  if (ran == Tier::Fallback && dispatch_log::refusal_is_arch()) {
    TORCH_WARN_ONCE("fused_rnn: ", why, ". Running the 'fallback' tier instead (shown once; ",
                    "fused_rnn.backends.tier_log.record() shows every call).");
  }
  if (!dispatch_log::enabled()) return;
  dispatch_log::append(op, std::string(requested), tier_name(ran), why, dispatch_log::detail(), shape_str(T, B, H, st));
}

std::pair<int, int> device_cc(const at::Tensor& t) {
  const cudaDeviceProp* prop = at::cuda::getDeviceProperties(t.get_device());
  return {prop->major, prop->minor};
}

std::tuple<at::Tensor, at::Tensor> elman_fwd_cuda(const at::Tensor& P_in, const at::Tensor& h0_in,
                                                  const at::Tensor& w_in, const c10::optional<at::Tensor>& lengths_in,
                                                  bool reverse, c10::string_view nonlinearity, c10::string_view tier,
                                                  bool allow_tf32) {
  check_fwd_inputs(P_in, h0_in, w_in, lengths_in);
  TORCH_CHECK(P_in.is_cuda(), "fused_rnn (cuda): elman_fwd expects CUDA tensors, got ", P_in.device());
  const Activation act = parse_nonlinearity(std::string(nonlinearity));
  const Tier tr = parse_tier(std::string(tier));
  const c10::cuda::CUDAGuard guard(P_in.device());
  const at::Tensor P = P_in.contiguous(), h0 = h0_in.contiguous(), w_hh = w_in.contiguous();
  c10::optional<at::Tensor> lengths;
  if (lengths_in.has_value()) lengths = lengths_in->contiguous();
  const int64_t T = P.size(0), B = P.size(1), H = P.size(2);
  check_sizes(T, B, H);
  at::Tensor Y = at::empty_like(P);
  at::Tensor h_n = at::empty_like(h0);
  if (B == 0 || H == 0) return {Y.zero_(), h0.clone()};  // a zero-size grid is an invalid launch

  ElmanFwdParams p{};
  p.P = P.data_ptr();
  p.h0 = h0.data_ptr();
  p.w_hh = w_hh.data_ptr();
  p.lengths = lengths.has_value() ? lengths->data_ptr<int64_t>() : nullptr;
  p.Y = Y.data_ptr();
  p.h_n = h_n.data_ptr();
  p.T = static_cast<int>(T);
  p.B = static_cast<int>(B);
  p.H = static_cast<int>(H);
  p.reverse = reverse;
  p.act = static_cast<int>(act);
  p.allow_tf32 = allow_tf32;
  const DType dt = dtype_of(P.scalar_type());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  dispatch_log::begin_call();
  std::string why;
  const auto cc = device_cc(P);
  const Tier want = resolve_tier(tr, H, cc.first, cc.second, gpu_verified_entries(), &why);
  bool done = false;
  if (want == Tier::Cluster2) {
    done = elman_fwd_cluster2(p, P.scalar_type(), stream);
  } else if (want == Tier::Persistent || want == Tier::Cluster) {
    done = elman_fwd_persistent(p, P.scalar_type(), want == Tier::Cluster, stream);
  } else if (want == Tier::BatchTiled) {
    done = FUSED_RNN_DTYPE_SWITCH(dt, batch_tiled_fwd, p, stream);
  }
  if (!done) {
    if (want != Tier::Fallback) why = dispatch_log::refusal();
    fallback_fwd(p, dt, h0, w_hh, allow_tf32, stream);
  }
  record("fwd", tier, done ? want : Tier::Fallback, why, T, B, H, P.scalar_type());
  return {Y, h_n};
}

std::tuple<at::Tensor, at::Tensor> elman_bwd_cuda(const at::Tensor& dY_in, const at::Tensor& dh_n_in,
                                                  const at::Tensor& Y_in, const at::Tensor& w_in,
                                                  const c10::optional<at::Tensor>& lengths_in, bool reverse,
                                                  c10::string_view nonlinearity, c10::string_view tier,
                                                  bool allow_tf32) {
  check_bwd_inputs(dY_in, dh_n_in, Y_in, w_in, lengths_in);
  TORCH_CHECK(Y_in.is_cuda(), "fused_rnn (cuda): elman_bwd expects CUDA tensors, got ", Y_in.device());
  auto st = Y_in.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16,
              "fused_rnn.elman_bwd: dtype must be float32, float64, float16 or bfloat16, got ", st);
  const Activation act = parse_nonlinearity(std::string(nonlinearity));
  const Tier tr = parse_tier(std::string(tier));
  const c10::cuda::CUDAGuard guard(Y_in.device());
  const at::Tensor dY = dY_in.contiguous(), dh_n = dh_n_in.contiguous(), Y = Y_in.contiguous(),
                   w_hh = w_in.contiguous();
  c10::optional<at::Tensor> lengths;
  if (lengths_in.has_value()) lengths = lengths_in->contiguous();
  const int64_t T = Y.size(0), B = Y.size(1), H = Y.size(2);
  check_sizes(T, B, H);
  at::Tensor dA = at::empty_like(Y);
  at::Tensor dh0 = at::empty_like(dh_n);
  if (B == 0 || H == 0) return {dA.zero_(), dh_n.clone()};

  ElmanBwdParams p{};
  p.dY = dY.data_ptr();
  p.dh_n = dh_n.data_ptr();
  p.Y = Y.data_ptr();
  p.w_hh = w_hh.data_ptr();
  p.lengths = lengths.has_value() ? lengths->data_ptr<int64_t>() : nullptr;
  p.dA = dA.data_ptr();
  p.dh0 = dh0.data_ptr();
  p.T = static_cast<int>(T);
  p.B = static_cast<int>(B);
  p.H = static_cast<int>(H);
  p.reverse = reverse;
  p.act = static_cast<int>(act);
  p.allow_tf32 = allow_tf32;
  const DType dt = dtype_of(st);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  dispatch_log::begin_call();
  std::string why;
  const auto cc = device_cc(Y);
  const Tier want = resolve_tier(tr, H, cc.first, cc.second, gpu_verified_entries(), &why);
  bool done = false;
  if (want == Tier::Cluster2) {
    done = elman_bwd_cluster2(p, st, stream);
  } else if (want == Tier::Persistent || want == Tier::Cluster) {
    done = elman_bwd_persistent(p, st, want == Tier::Cluster, stream);
  } else if (want == Tier::BatchTiled) {
    done = FUSED_RNN_DTYPE_SWITCH(dt, batch_tiled_bwd, p, stream);
  }
  if (!done) {
    if (want != Tier::Fallback) why = dispatch_log::refusal();
    fallback_bwd(p, dt, dh_n, w_hh, allow_tf32, stream);
  }
  record("bwd", tier, done ? want : Tier::Fallback, why, T, B, H, st);
  return {dA, dh0};
}


// ---------------------------------------------------------------------------------------------------------------
// Debug ops: the dispatch decisions as pure functions (callable on a machine without a GPU), the tier record, and
// the build's arch list. Not part of the backend contract; tests, `make gpu-check` and show_config use them.

std::string resolve_tier_op(c10::string_view tier, int64_t H, int64_t cc_major, int64_t cc_minor,
                            const c10::optional<std::vector<std::string>>& verified) {
  const std::vector<std::string>& v = verified.has_value() ? *verified : gpu_verified_entries();
  return tier_name(resolve_tier(parse_tier(std::string(tier)), H, static_cast<int>(cc_major),
                                static_cast<int>(cc_minor), v, nullptr));
}

std::string fallback_gemm_op(at::ScalarType dtype, bool backward, bool allow_tf32) {
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
              "fused_rnn.cuda_fallback_gemm: unsupported dtype ", dtype);
  return fallback_gemm_name(dtype, backward, allow_tf32);
}

// occupancy: 48 answers, [(cluster - 1) * 3 + {bt 1: 0, 4: 1, 8: 2}] = clusters of that size co-resident at once
// (what cudaOccupancyMaxActiveClusters says for that kernel). Returns [cluster, bt, hs, tiles, active, waves, smem];
// cluster 0 = no plan.
std::vector<int64_t> cluster_plan_op(int64_t B, int64_t H, int64_t elem_bytes, int64_t smem_optin,
                                     c10::IntArrayRef occupancy, int64_t only_bt, int64_t force_cluster) {
  TORCH_CHECK(occupancy.size() == 3 * plan::kMaxCluster, "fused_rnn.cuda_cluster_plan: occupancy needs ",
              3 * plan::kMaxCluster, " entries, got ", occupancy.size());
  TORCH_CHECK(B >= 0 && B <= INT_MAX && H >= 0 && H <= INT_MAX, "fused_rnn.cuda_cluster_plan: bad B or H");
  const auto p = plan::plan_cluster(static_cast<int>(B), static_cast<int>(H), static_cast<int>(elem_bytes),
                                    static_cast<size_t>(smem_optin), static_cast<int>(only_bt),
                                    static_cast<int>(force_cluster), [&](int c, int bt, size_t) {
                                      TORCH_CHECK(c >= 1 && c <= plan::kMaxCluster, "cluster size out of range");
                                      return static_cast<int>(occupancy[(c - 1) * 3 + (bt == 1 ? 0 : bt == 4 ? 1 : 2)]);
                                    });
  return {p.cluster, p.bt, p.hs, p.tiles, p.active, p.waves, static_cast<int64_t>(p.smem)};
}

bool tier_log_enable_op(bool on) { return dispatch_log::set_enabled(on); }
int64_t tier_log_size_op() { return dispatch_log::size(); }
std::vector<std::string> tier_log_op(int64_t start) { return dispatch_log::entries(start); }
void tier_log_clear_op() { dispatch_log::clear(); }
std::string cuda_archs_op() { return arch::built_archs(); }

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CUDA, m) {
  m.impl("elman_fwd", &elman_fwd_cuda);
  m.impl("elman_bwd", &elman_bwd_cuda);
}

TORCH_LIBRARY_FRAGMENT(fused_rnn, m) {
  // The tier an elman_fwd/elman_bwd call tries first for `tier` at hidden size H on a device of compute capability
  // cc_major.cc_minor, given the GPU-verified list (None = this build's, csrc/cuda/gpu_verified.h).
  m.def("cuda_resolve_tier(str tier, int H, int cc_major, int cc_minor, str[]? verified=None) -> str",
        &resolve_tier_op);
  // The per-step GEMM `fallback` runs for a dtype and direction.
  m.def("cuda_fallback_gemm(ScalarType dtype, bool backward, bool allow_tf32=False) -> str", &fallback_gemm_op);
  // The cluster tier's launch plan for an occupancy answer (cluster_plan.h).
  m.def("cuda_cluster_plan(int B, int H, int elem_bytes, int smem_optin, int[] occupancy, int only_bt=0, "
        "int force_cluster=0) -> int[]",
        &cluster_plan_op);
  // The tier record (dispatch_log.h): entries "op\trequested\tran\twhy\tdetail\tshape" while enabled.
  m.def("cuda_tier_log_enable(bool on) -> bool", &tier_log_enable_op);
  m.def("cuda_tier_log_size() -> int", &tier_log_size_op);
  m.def("cuda_tier_log(int start=0) -> str[]", &tier_log_op);
  m.def("cuda_tier_log_clear() -> ()", &tier_log_clear_op);
  // The arch list this build compiled (TORCH_CUDA_ARCH_LIST syntax; "unknown" when setup.py did not say).
  m.def("cuda_archs() -> str", &cuda_archs_op);
}

}  // namespace cuda
}  // namespace fused_rnn
