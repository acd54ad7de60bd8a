// THE GPU-verified list: the one place it is written (issue #21). Read by the CUDA op when its tier argument is ""
// (csrc/cuda/elman_cuda.cpp: a direct torch.ops.fused_rnn.elman_fwd call with tier "" runs only tiers on this list)
// and, through torch.ops.fused_rnn.gpu_verified(), by the Python selector (fused_rnn/backends/verified.py ->
// select.GPU_VERIFIED). Plain C++ with no dependency, so csrc/ops.cpp registers the op in CPU-only builds too.
//
// A tier goes on the list only together with a committed report under bench/results/ that shows it ran -- ran, not
// "its fallback passed": the report's tier record (fused_rnn.backends.tier_log, `make gpu-check`) says which tier
// executed -- and only for the compute capabilities it ran on. Entries:
//   "<backend>:<tier>"    a tier that passed on a real GPU
//   "capability:<M>.<m>"  a compute capability the tiers passed on (all of them, on that card)
//   "report:<path>"       the report that shows it
// Not on the list (forced only, until a GPU run passes them): cuda batch_tiled, every triton tier, the two-stream
// bidirectional mode, and these changes of issue #21: the bf16/fp16 GEMM of `fallback`'s forward and the
// occupancy-based plan of `cluster` (both run inside listed tiers; the gpu-check runs their tests in its last part).
#pragma once

#include <string>
#include <vector>

namespace fused_rnn {

inline const std::vector<std::string>& gpu_verified_entries() {
  static const std::vector<std::string> v = {
      "cuda:cluster",
      "cuda:persistent",
      "cuda:fallback",
      "capability:9.0",
      "report:bench/results/H200-2026-11-27.md",
  };
  return v;
}

// Whether "<backend>:<tier>" is on the list for a device of compute capability major.minor.
inline bool gpu_verified(const std::vector<std::string>& entries, const std::string& backend_tier, int major,
                         int minor) {
  bool tier_ok = false, cap_ok = false;
  const std::string cap = "capability:" + std::to_string(major) + "." + std::to_string(minor);
  for (const auto& e : entries) {
    tier_ok = tier_ok || e == backend_tier;
    cap_ok = cap_ok || e == cap;
  }
  return tier_ok && cap_ok;
}

}  // namespace fused_rnn
