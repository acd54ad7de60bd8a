// Shared declarations and input checks for every fused_rnn kernel (CPU and CUDA).
#pragma once

#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <c10/util/Optional.h>

namespace fused_rnn {

enum class Activation { Tanh = 0, Relu = 1 };

inline Activation parse_nonlinearity(const std::string& s) {
  TORCH_CHECK(s == "tanh" || s == "relu", "fused_rnn: nonlinearity must be 'tanh' or 'relu', got '", s, "'");
  return s == "tanh" ? Activation::Tanh : Activation::Relu;
}

// Names of the CUDA tiers compiled into this build (empty without CUDA).
std::vector<std::string> cuda_tier_names();

// Checks shared by every backend's elman_fwd. P [T,B,H], h0 [B,H], w_hh [H,H], lengths [B] int64 or None.
inline void check_fwd_inputs(const at::Tensor& P, const at::Tensor& h0, const at::Tensor& w_hh,
                             const c10::optional<at::Tensor>& lengths) {
  TORCH_CHECK(P.dim() == 3, "fused_rnn.elman_fwd: P must be [T, B, H], got ", P.sizes());
  const auto T = P.size(0), B = P.size(1), H = P.size(2);
  TORCH_CHECK(T >= 1, "fused_rnn.elman_fwd: sequence length must be >= 1, got ", T);
  TORCH_CHECK(h0.dim() == 2 && h0.size(0) == B && h0.size(1) == H, "fused_rnn.elman_fwd: h0 must be [B, H] = [", B,
              ", ", H, "], got ", h0.sizes());
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == H && w_hh.size(1) == H, "fused_rnn.elman_fwd: w_hh must be [H, H] = [",
              H, ", ", H, "], got ", w_hh.sizes());
  TORCH_CHECK(h0.scalar_type() == P.scalar_type() && w_hh.scalar_type() == P.scalar_type(),
              "fused_rnn.elman_fwd: P, h0 and w_hh must share one dtype, got ", P.scalar_type(), ", ",
              h0.scalar_type(), ", ", w_hh.scalar_type());
  TORCH_CHECK(h0.device() == P.device() && w_hh.device() == P.device(),
              "fused_rnn.elman_fwd: P, h0 and w_hh must be on one device");
  auto st = P.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16,
              "fused_rnn.elman_fwd: dtype must be float32, float64, float16 or bfloat16, got ", st);
  if (lengths.has_value()) {
    const auto& L = *lengths;
    TORCH_CHECK(L.dim() == 1 && L.size(0) == B, "fused_rnn: lengths must be [B] = [", B, "], got ", L.sizes());
    TORCH_CHECK(L.scalar_type() == at::kLong, "fused_rnn: lengths must be int64, got ", L.scalar_type());
    TORCH_CHECK(L.device() == P.device(), "fused_rnn: lengths must be on P's device (", P.device(), "), got ",
                L.device());
  }
}

// Checks shared by every backend's elman_bwd. dY, Y [T,B,H], dh_n [B,H], w_hh [H,H].
inline void check_bwd_inputs(const at::Tensor& dY, const at::Tensor& dh_n, const at::Tensor& Y, const at::Tensor& w_hh,
                             const c10::optional<at::Tensor>& lengths) {
  TORCH_CHECK(Y.dim() == 3, "fused_rnn.elman_bwd: Y must be [T, B, H], got ", Y.sizes());
  TORCH_CHECK(dY.sizes() == Y.sizes(), "fused_rnn.elman_bwd: dY must match Y ", Y.sizes(), ", got ", dY.sizes());
  const auto B = Y.size(1), H = Y.size(2);
  TORCH_CHECK(Y.size(0) >= 1, "fused_rnn.elman_bwd: sequence length must be >= 1");
  TORCH_CHECK(dh_n.dim() == 2 && dh_n.size(0) == B && dh_n.size(1) == H, "fused_rnn.elman_bwd: dh_n must be [", B,
              ", ", H, "], got ", dh_n.sizes());
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == H && w_hh.size(1) == H, "fused_rnn.elman_bwd: w_hh must be [", H,
              ", ", H, "], got ", w_hh.sizes());
  auto st = Y.scalar_type();
  TORCH_CHECK(dY.scalar_type() == st && dh_n.scalar_type() == st && w_hh.scalar_type() == st,
              "fused_rnn.elman_bwd: dY, dh_n, Y and w_hh must share one dtype");
  TORCH_CHECK(dY.device() == Y.device() && dh_n.device() == Y.device() && w_hh.device() == Y.device(),
              "fused_rnn.elman_bwd: all tensors must be on one device");
  if (lengths.has_value()) {
    const auto& L = *lengths;
    TORCH_CHECK(L.dim() == 1 && L.size(0) == B, "fused_rnn: lengths must be [B] = [", B, "], got ", L.sizes());
    TORCH_CHECK(L.scalar_type() == at::kLong, "fused_rnn: lengths must be int64, got ", L.scalar_type());
    TORCH_CHECK(L.device() == Y.device(), "fused_rnn: lengths must be on Y's device");
  }
}

}  // namespace fused_rnn
