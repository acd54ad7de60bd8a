// Cluster-tier instantiations (Hopper thread-block clusters + DSMEM; kernels in persistent_kernel.cuh). A separate
// translation unit from persistent.cu so the two compile in parallel. On a pre-sm_90 build the kernel bodies are
// __trap() stubs and the launcher refuses (it checks the device and the binary's architecture).
#include "persistent_kernel.cuh"

namespace fused_rnn {
namespace cuda {
namespace persistent_detail {

#define FUSED_RNN_CLUSTER_INSTANTIATE(T, BT)                              \
  template bool launch_cluster<T, BT, false>(Args<T>, cudaStream_t, int); \
  template bool launch_cluster<T, BT, true>(Args<T>, cudaStream_t, int);
FUSED_RNN_CLUSTER_INSTANTIATE(float, 1)
FUSED_RNN_CLUSTER_INSTANTIATE(float, 4)
FUSED_RNN_CLUSTER_INSTANTIATE(float, 8)
FUSED_RNN_CLUSTER_INSTANTIATE(__half, 1)
FUSED_RNN_CLUSTER_INSTANTIATE(__half, 4)
FUSED_RNN_CLUSTER_INSTANTIATE(__half, 8)
FUSED_RNN_CLUSTER_INSTANTIATE(__nv_bfloat16, 1)
FUSED_RNN_CLUSTER_INSTANTIATE(__nv_bfloat16, 4)
FUSED_RNN_CLUSTER_INSTANTIATE(__nv_bfloat16, 8)
#undef FUSED_RNN_CLUSTER_INSTANTIATE

}  // namespace persistent_detail
}  // namespace cuda
}  // namespace fused_rnn
