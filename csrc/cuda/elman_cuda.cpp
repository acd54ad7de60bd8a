// CUDA implementations of fused_rnn::elman_fwd / elman_bwd (schemas in csrc/ops.cpp, contract in docs/design.md).
//
// Host code only (built by the host compiler, so it may use ATen freely): input checks, the device guard and
// current stream, the tier dispatch, and the `fallback` tier's per-step cuBLAS GEMMs. The kernels live in
// elman_kernels.cuh (batch_tiled, fallback pointwise) and persistent*.cu (persistent, cluster).
// Shapes: T time, B batch, H hidden.
#include <climits>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "elman_launch.h"
#include "fused_rnn.h"
#include "persistent.h"
#include "cluster2.h"

namespace fused_rnn {

std::vector<std::string> cuda_tier_names() { return {"batch_tiled", "persistent", "cluster", "cluster2", "fallback"}; }

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
              "'; choose one of '' (heuristic), 'batch_tiled', 'persistent', 'cluster', 'cluster2', 'fallback'");
  return Tier::Fallback;  // unreachable
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

// The C++ side's own choice for tier "": batch_tiled where w_hh fits in shared memory (the launcher itself returns
// false beyond that), else fallback. fused_rnn/backends/cuda_heuristic.py normally passes an explicit tier.
bool try_batch_tiled_first(int64_t H) { return H <= 352; }

at::ScalarType acc_type(at::ScalarType st) { return st == at::kDouble ? at::kDouble : at::kFloat; }

// fallback forward: per step G = S @ w_hhᵀ (cuBLAS, into a preallocated buffer), then one pointwise kernel.
// S [B, H] holds the carried state in the accumulation dtype (fp32 holds every fp16/bf16 value exactly).
void fallback_fwd(const ElmanFwdParams& p, DType dt, const at::Tensor& h0, const at::Tensor& w_hh, bool allow_tf32,
                  cudaStream_t stream) {
  const auto acc = acc_type(h0.scalar_type());
  const at::Tensor W = w_hh.to(acc);
  const at::Tensor Wt = W.t();
  at::Tensor S = h0.to(acc, /*non_blocking=*/false, /*copy=*/true);
  at::Tensor G = at::empty_like(S);
  std::optional<at::NoTF32Guard> ieee;
  if (!allow_tf32) ieee.emplace();  // cuBLAS would otherwise follow torch's global TF32 setting
  for (int s = 0; s < p.T; ++s) {
    at::mm_out(G, S, Wt);
    FUSED_RNN_DTYPE_SWITCH(dt, fallback_fwd_step, p, s, S.data_ptr(), G.data_ptr(), stream);
  }
  FUSED_RNN_DTYPE_SWITCH(dt, fallback_fwd_finish, p, S.data_ptr(), stream);
}

// fallback backward: per step s = T-1 .. 0, G = D_{s+1} @ w_hh (cuBLAS), then one pointwise kernel that forms
// dA_s and D_s (fp32; fp64 for fp64). After the loop, dh0 = D_0 @ w_hh.
void fallback_bwd(const ElmanBwdParams& p, DType dt, const at::Tensor& dh_n, const at::Tensor& w_hh,
                  bool allow_tf32, cudaStream_t stream) {
  const auto acc = acc_type(dh_n.scalar_type());
  const at::Tensor W = w_hh.to(acc);
  at::Tensor G = at::empty(dh_n.sizes(), dh_n.options().dtype(acc));
  at::Tensor D = at::empty_like(G);
  std::optional<at::NoTF32Guard> ieee;
  if (!allow_tf32) ieee.emplace();
  for (int s = p.T - 1; s >= 0; --s) {
    if (s < p.T - 1) at::mm_out(G, D, W);
    FUSED_RNN_DTYPE_SWITCH(dt, fallback_bwd_step, p, s, G.data_ptr(), D.data_ptr(), stream);
  }
  at::mm_out(G, D, W);
  FUSED_RNN_DTYPE_SWITCH(dt, fallback_bwd_finish, p, G.data_ptr(), stream);
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

  bool done = false;
  if (tr == Tier::Cluster2) {
    done = elman_fwd_cluster2(p, P.scalar_type(), stream);
  } else if (tr == Tier::Persistent || tr == Tier::Cluster) {
    done = elman_fwd_persistent(p, P.scalar_type(), tr == Tier::Cluster, stream);
  } else if (tr == Tier::BatchTiled || (tr == Tier::Auto && try_batch_tiled_first(H))) {
    done = FUSED_RNN_DTYPE_SWITCH(dt, batch_tiled_fwd, p, stream);
  }
  if (!done) fallback_fwd(p, dt, h0, w_hh, allow_tf32, stream);
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

  bool done = false;
  if (tr == Tier::Cluster2) {
    done = elman_bwd_cluster2(p, st, stream);
  } else if (tr == Tier::Persistent || tr == Tier::Cluster) {
    done = elman_bwd_persistent(p, st, tr == Tier::Cluster, stream);
  } else if (tr == Tier::BatchTiled || (tr == Tier::Auto && try_batch_tiled_first(H))) {
    done = FUSED_RNN_DTYPE_SWITCH(dt, batch_tiled_bwd, p, stream);
  }
  if (!done) fallback_bwd(p, dt, dh_n, w_hh, allow_tf32, stream);
  return {dA, dh0};
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CUDA, m) {
  m.impl("elman_fwd", &elman_fwd_cuda);
  m.impl("elman_bwd", &elman_bwd_cuda);
}

}  // namespace cuda
}  // namespace fused_rnn
