// Entry points of the persistent hidden-partitioned tiers (persistent.h) and the cooperative-grid instantiations.
// The kernels and launchers are in persistent_kernel.cuh; the cluster instantiations in persistent_cluster.cu (two
// translation units so the 2-core CI compiles them in parallel). ATen appears only through persistent.h's types.
#include "persistent.h"

#include "persistent_kernel.cuh"

namespace fused_rnn {
namespace cuda {
namespace persistent_detail {

#define FUSED_RNN_PERSISTENT_INSTANTIATE(T, BT)                                    \
  template bool launch_coop<T, BT, false>(Args<T>, cudaStream_t, int);             \
  template bool launch_coop<T, BT, true>(Args<T>, cudaStream_t, int);              \
  extern template bool launch_cluster<T, BT, false>(Args<T>, cudaStream_t, int);   \
  extern template bool launch_cluster<T, BT, true>(Args<T>, cudaStream_t, int);
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

namespace {

template <typename T, int BT, bool kBwd>
bool launch(const Args<T>& a, bool use_cluster, cudaStream_t stream) {
  return use_cluster ? launch_cluster<T, BT, kBwd>(a, stream, 0) : launch_coop<T, BT, kBwd>(a, stream, 0);
}

// Cluster tier: the smallest batch tile whose clusters (about min(16, H/kRows) CTAs each) all fit on the device
// at once, so that a small batch spreads over more SMs (B=16, H=1024 bf16: 4 clusters of 16 CTAs instead of 2,
// 10.0 -> 6.5 us/step forward, H200, 2026-11-27). Clusters are independent, so more of them than fit only run in
// waves -- correct, just slower.
int pick_bt_cluster(int B, int H) {
  int dev = 0, sms = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return pick_bt(B);
  }
  const int c = H < 16 * kRows ? ceil_div(H, kRows) : 16;
  const int bt_max = pick_bt(B);
  for (int bt : {1, 4, 8}) {
    if (bt > bt_max) break;
    if (static_cast<long long>(ceil_div(B, bt)) * c <= sms) return bt;
  }
  return bt_max;
}

template <typename T, bool kBwd>
bool launch_any_bt(const Args<T>& a, bool use_cluster, cudaStream_t stream) {
  switch (use_cluster ? pick_bt_cluster(a.B, a.H) : pick_bt(a.B)) {
    case 1:
      return launch<T, 1, kBwd>(a, use_cluster, stream);
    case 4:
      return launch<T, 4, kBwd>(a, use_cluster, stream);
    default:
      return launch<T, 8, kBwd>(a, use_cluster, stream);
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

}  // namespace
}  // namespace persistent_detail

// allow_tf32 is ignored: these tiers always compute IEEE fp32 FMAs (allowed by the contract). fp64 is not
// implemented here (returns false: the dispatcher's fallback handles it).
bool elman_fwd_persistent(const ElmanFwdParams& p, at::ScalarType dtype, bool use_cluster, cudaStream_t stream) {
  using namespace persistent_detail;
  if (!shape_ok(p.T, p.B, p.H) || (p.act != 0 && p.act != 1)) return false;
  switch (dtype) {
    case at::ScalarType::Float:
      return fwd_typed<float>(p, use_cluster, stream);
    case at::ScalarType::Half:
      return fwd_typed<__half>(p, use_cluster, stream);
    case at::ScalarType::BFloat16:
      return fwd_typed<__nv_bfloat16>(p, use_cluster, stream);
    default:
      return false;
  }
}

bool elman_bwd_persistent(const ElmanBwdParams& p, at::ScalarType dtype, bool use_cluster, cudaStream_t stream) {
  using namespace persistent_detail;
  if (!shape_ok(p.T, p.B, p.H) || (p.act != 0 && p.act != 1)) return false;
  switch (dtype) {
    case at::ScalarType::Float:
      return bwd_typed<float>(p, use_cluster, stream);
    case at::ScalarType::Half:
      return bwd_typed<__half>(p, use_cluster, stream);
    case at::ScalarType::BFloat16:
      return bwd_typed<__nv_bfloat16>(p, use_cluster, stream);
    default:
      return false;
  }
}

}  // namespace cuda
}  // namespace fused_rnn
