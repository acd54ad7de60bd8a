// fp16 and bf16 instantiations of the batch_tiled and fallback kernels (elman_kernels.cuh): storage in the 16-bit
// dtype, fp32 accumulation, h_t rounded to the storage dtype every step.
#include "elman_kernels.cuh"

namespace fused_rnn {
namespace cuda {

FUSED_RNN_INSTANTIATE_ELMAN(DType::F16)
FUSED_RNN_INSTANTIATE_ELMAN(DType::BF16)

}  // namespace cuda
}  // namespace fused_rnn
