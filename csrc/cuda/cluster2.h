// Entry points of the `cluster2` tier (Hopper cluster, mma.sync step, DSMEM bulk-copy exchange; issue 22).
// Implemented in cluster2_fwd.cu / cluster2_bwd.cu, kernels in cluster2_kernel.cuh, notes in NOTES_cluster2.md.
//
// Each returns false -- having launched nothing and leaving no CUDA error pending -- when the tier cannot run this
// call: fp64, fp32 without allow_tf32, H > 1024 (fp16 / bf16) or > 768 (TF32), shared memory, no cluster of the
// needed size fits, a pre-sm_90 device or a build without sm_90 code -- after noting why in the tier record
// (dispatch_log.h; the GPU / build refusals as `arch` ones). The dispatcher then runs `fallback`.
// Forced only (FUSED_RNN_CUDA_TIER=cluster2) until a GPU report shows it correct and faster.
#pragma once

#include <cuda_runtime.h>

#include "elman_params.h"

namespace fused_rnn {
namespace cuda {

bool elman_fwd_cluster2(const ElmanFwdParams& p, at::ScalarType dtype, cudaStream_t stream);
bool elman_bwd_cluster2(const ElmanBwdParams& p, at::ScalarType dtype, cudaStream_t stream);

}  // namespace cuda
}  // namespace fused_rnn
