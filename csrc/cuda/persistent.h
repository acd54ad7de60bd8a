// Entry points of the persistent hidden-partitioned tiers (`persistent`: cooperative grid; `cluster`: Hopper
// thread-block cluster with distributed shared memory). Implemented in csrc/cuda/persistent*.cu; called by the
// dispatcher in csrc/cuda/elman_cuda.cu.
//
// Each returns false -- having launched nothing -- when the tier cannot run this shape on this device (shared
// memory, registers, co-residency of the whole grid / cluster, dtype, architecture); the dispatcher then runs the
// `fallback` tier. They never launch a grid whose co-residency is not guaranteed (no spin barrier under a plain
// launch: docs/design.md).
#pragma once

#include <cuda_runtime.h>
#include <ATen/ATen.h>

#include "elman_params.h"

namespace fused_rnn {
namespace cuda {

bool elman_fwd_persistent(const ElmanFwdParams& p, at::ScalarType dtype, bool use_cluster, cudaStream_t stream);
bool elman_bwd_persistent(const ElmanBwdParams& p, at::ScalarType dtype, bool use_cluster, cudaStream_t stream);

}  // namespace cuda
}  // namespace fused_rnn
