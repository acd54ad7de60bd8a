// Cluster-tier instantiations (Hopper thread-block clusters + DSMEM; kernels and launchers in persistent_kernel.cuh).
// A separate translation unit from persistent.cu so the two compile in parallel. On a pre-sm_90 arch the kernel
// bodies are __trap() stubs (arch.h's FUSED_RNN_DEVICE_CLUSTERS guard) and cluster_refusal() refuses them with a
// message (it checks the device and the binary's architecture).
#include "persistent_kernel.cuh"

namespace fused_rnn {
namespace cuda {
namespace persistent_detail {

#define FUSED_RNN_CLUSTER_INSTANTIATE(T, BT)                                                           \
  template bool launch_cluster<T, BT, false>(Args<T>, cudaStream_t, int);                              \
  template bool launch_cluster<T, BT, true>(Args<T>, cudaStream_t, int);                               \
  template int cluster_occupancy<T, BT, false>(int, int, size_t);                                      \
  template int cluster_occupancy<T, BT, true>(int, int, size_t);                                       \
  template bool launch_cluster_plan<T, BT, false>(Args<T>, cudaStream_t, const plan::ClusterPlan&);    \
  template bool launch_cluster_plan<T, BT, true>(Args<T>, cudaStream_t, const plan::ClusterPlan&);
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
template std::string cluster_refusal<float, false>();
template std::string cluster_refusal<float, true>();
template std::string cluster_refusal<__half, false>();
template std::string cluster_refusal<__half, true>();
template std::string cluster_refusal<__nv_bfloat16, false>();
template std::string cluster_refusal<__nv_bfloat16, true>();

}  // namespace persistent_detail
}  // namespace cuda
}  // namespace fused_rnn
