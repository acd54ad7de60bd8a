// fp32 and fp64 instantiations of the batch_tiled and fallback kernels (elman_kernels.cuh). No torch/extension.h
// or pybind11 here: they triple a .cu file's compile time (ENV.md).
#include "elman_kernels.cuh"

namespace fused_rnn {
namespace cuda {

FUSED_RNN_INSTANTIATE_ELMAN(DType::F32)
FUSED_RNN_INSTANTIATE_ELMAN(DType::F64)

}  // namespace cuda
}  // namespace fused_rnn
