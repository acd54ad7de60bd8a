// Entry points of the persistent hidden-partitioned tiers (persistent.h) and the cooperative-grid instantiations.
// The kernels and launchers are in persistent_kernel.cuh; the cluster instantiations in persistent_cluster.cu (two
// translation units so the 2-core CI compiles them in parallel; nothing here may name a cluster kernel, or this unit
// would compile its device code a second time). ATen appears only through persistent.h's types.
#include "persistent.h"

#include "persistent_kernel.cuh"

namespace fused_rnn {
namespace cuda {
namespace persistent_detail {

#define FUSED_RNN_PERSISTENT_INSTANTIATE(T, BT)                                                  \
  template bool launch_coop<T, BT, false>(Args<T>, cudaStream_t, int);                           \
  template bool launch_coop<T, BT, true>(Args<T>, cudaStream_t, int);                            \
  extern template bool launch_cluster<T, BT, false>(Args<T>, cudaStream_t, int);                 \
  extern template bool launch_cluster<T, BT, true>(Args<T>, cudaStream_t, int);                  \
  extern template int cluster_occupancy<T, BT, false>(int, int, size_t);                         \
  extern template int cluster_occupancy<T, BT, true>(int, int, size_t);                          \
  extern template bool launch_cluster_plan<T, BT, false>(Args<T>, cudaStream_t, const plan::ClusterPlan&); \
  extern template bool launch_cluster_plan<T, BT, true>(Args<T>, cudaStream_t, const plan::ClusterPlan&);
FUSED_RNN_PERSISTENT_INSTANTIATE(float, 1)
FUSED_RNN_PERSISTENT_INSTANTIATE(float, 4)
FUSED_RNN_PERSISTENT_INSTANTIATE(float, 8)
FUSED_RNN_PERSISTENT_INSTANTIATE(__half, 1)
FUSED_RNN_PERSISTENT_INSTANTIATE(__half, 4)
FUSED_RNN_PERSISTENT_INSTANTIATE(__half, 8)
FUSED_RNN_PERSISTENT_INSTANTIATE(__nv_bfloat16, 1)
FUSED_RNN_PERSISTENT_INSTANTIATE(__nv_bfloat16, 4)
FUSED_RNN_PERSISTENT_INSTANTIATE(__nv_bfloat16, 8)
#undef FUSED_RNN_PERSISTENT_INSTANTIATE
extern template std::string cluster_refusal<float, false>();
extern template std::string cluster_refusal<float, true>();
extern template std::string cluster_refusal<__half, false>();
extern template std::string cluster_refusal<__half, true>();
extern template std::string cluster_refusal<__nv_bfloat16, false>();
extern template std::string cluster_refusal<__nv_bfloat16, true>();

namespace {

// Cluster tier: the plan (cluster size, batch tile) from the CUDA runtime's occupancy answer for each candidate
// (cluster_plan.h says why the SM count is the wrong input), then one launch of the chosen <T, BT> kernel.
template <typename T, bool kBwd>
bool launch_cluster_any(const Args<T>& a, cudaStream_t stream) {
  const std::string why = cluster_refusal<T, kBwd>();
  if (!why.empty()) return refuse_arch(why);
  int dev = 0, optin = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess)
    return refuse("cluster: device query failed");
  const auto occ = [&](int c, int bt, size_t smem) {
    const int tiles = ceil_div(a.B, bt);
    switch (bt) {
      case 1:
        return cluster_occupancy<T, 1, kBwd>(c, tiles, smem);
      case 4:
        return cluster_occupancy<T, 4, kBwd>(c, tiles, smem);
      default:
        return cluster_occupancy<T, 8, kBwd>(c, tiles, smem);
    }
  };
  const int elem = static_cast<int>(sizeof(T));
  const auto p = plan::plan_cluster(a.B, a.H, elem, static_cast<size_t>(optin), 0, 0, occ);
  if (p.cluster == 0) return refuse(cluster_no_plan(a.B, a.H, elem, optin));
  switch (p.bt) {
    case 1:
      return launch_cluster_plan<T, 1, kBwd>(a, stream, p);
    case 4:
      return launch_cluster_plan<T, 4, kBwd>(a, stream, p);
    default:
      return launch_cluster_plan<T, 8, kBwd>(a, stream, p);
  }
}

template <typename T, bool kBwd>
bool launch_any_bt(const Args<T>& a, bool use_cluster, cudaStream_t stream) {
  if (use_cluster) return launch_cluster_any<T, kBwd>(a, stream);
  switch (pick_bt(a.B)) {
    case 1:
      return launch_coop<T, 1, kBwd>(a, stream, 0);
    case 4:
      return launch_coop<T, 4, kBwd>(a, stream, 0);
    default:
      return launch_coop<T, 8, kBwd>(a, stream, 0);
  }
}

// Shapes every launcher needs; the op's own checks (csrc/fused_rnn.h) ran before the dispatcher called us.
bool shape_ok(int T, int B, int H) { return T >= 1 && B >= 1 && H >= 1; }

template <typename T>
bool fwd_typed(const ElmanFwdParams& p, bool use_cluster, cudaStream_t stream) {
  Args<T> a{};
  a.P = static_cast<const T*>(p.P);
  a.h0 = static_cast<const T*>(p.h0);
  a.Y = static_cast<T*>(p.Y);
  a.h_n = static_cast<T*>(p.h_n);
  a.w = static_cast<const T*>(p.w_hh);
  a.lengths = p.lengths;
  a.T_ = p.T;
  a.B = p.B;
  a.H = p.H;
  a.reverse = p.reverse;
  a.act = p.act;
  return launch_any_bt<T, false>(a, use_cluster, stream);
}

template <typename T>
bool bwd_typed(const ElmanBwdParams& p, bool use_cluster, cudaStream_t stream) {
  Args<T> a{};
  a.dY = static_cast<const T*>(p.dY);
  a.dh_n = static_cast<const T*>(p.dh_n);
  a.Ysaved = static_cast<const T*>(p.Y);
  a.dA = static_cast<T*>(p.dA);
  a.dh0 = static_cast<T*>(p.dh0);
  a.w = static_cast<const T*>(p.w_hh);
  a.lengths = p.lengths;
  a.T_ = p.T;
  a.B = p.B;
  a.H = p.H;
  a.reverse = p.reverse;
  a.act = p.act;
  return launch_any_bt<T, true>(a, use_cluster, stream);
}

// Whether the tier may try this call at all (else refused, with the reason noted).
bool admissible(const char* tier, int T, int B, int H, int act, at::ScalarType dtype) {
  if (!shape_ok(T, B, H)) return refuse(fmt("%s: empty shape T=%d B=%d H=%d", tier, T, B, H));
  if (act != 0 && act != 1) return refuse(fmt("%s: unknown activation %d", tier, act));
  if (dtype == at::ScalarType::Double) return refuse(fmt("%s: fp64 is not implemented in this tier", tier));
  return true;
}

}  // namespace
}  // namespace persistent_detail

// allow_tf32 is ignored: these tiers always compute IEEE fp32 FMAs (allowed by the contract). fp64 is not
// implemented here (returns false: the dispatcher's fallback handles it).
bool elman_fwd_persistent(const ElmanFwdParams& p, at::ScalarType dtype, bool use_cluster, cudaStream_t stream) {
  using namespace persistent_detail;
  if (!admissible(use_cluster ? "cluster" : "persistent", p.T, p.B, p.H, p.act, dtype)) return false;
  switch (dtype) {
    case at::ScalarType::Float:
      return fwd_typed<float>(p, use_cluster, stream);
    case at::ScalarType::Half:
      return fwd_typed<__half>(p, use_cluster, stream);
    case at::ScalarType::BFloat16:
      return fwd_typed<__nv_bfloat16>(p, use_cluster, stream);
    default:
      return refuse("persistent tiers: unsupported dtype");
  }
}

bool elman_bwd_persistent(const ElmanBwdParams& p, at::ScalarType dtype, bool use_cluster, cudaStream_t stream) {
  using namespace persistent_detail;
  if (!admissible(use_cluster ? "cluster" : "persistent", p.T, p.B, p.H, p.act, dtype)) return false;
  switch (dtype) {
    case at::ScalarType::Float:
      return bwd_typed<float>(p, use_cluster, stream);
    case at::ScalarType::Half:
      return bwd_typed<__half>(p, use_cluster, stream);
    case at::ScalarType::BFloat16:
      return bwd_typed<__nv_bfloat16>(p, use_cluster, stream);
    default:
      return refuse("persistent tiers: unsupported dtype");
  }
}

}  // namespace cuda
}  // namespace fused_rnn
