// `cluster2` forward entry point (cluster2.h) and its kernel instantiations; the backward is cluster2_bwd.cu (two
// translation units so the 2-core CI compiles them in parallel).
#include "cluster2.h"

#include "cluster2_kernel.cuh"

namespace fused_rnn {
namespace cuda {
namespace {

template <typename T>
bool fwd_typed(const ElmanFwdParams& p, cudaStream_t stream) {
  c2::Args<T> a{};
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
  return c2::launch_cluster2<T, false>(a, stream);
}

}  // namespace

// fp16 / bf16: the step on m16n8k16 tensor cores with fp32 accumulation. fp32 only under allow_tf32 (m16n8k8
// TF32 products, H <= 768); IEEE fp32 and fp64 return false (the dispatcher's fallback runs them).
bool elman_fwd_cluster2(const ElmanFwdParams& p, at::ScalarType dtype, cudaStream_t stream) {
  if (p.T < 1 || p.B < 1 || p.H < 1 || (p.act != 0 && p.act != 1))
    return c2::refuse(c2::fmt("cluster2: nothing to run (T=%d B=%d H=%d act=%d)", p.T, p.B, p.H, p.act));
  switch (dtype) {
    case at::ScalarType::Half:
      return fwd_typed<__half>(p, stream);
    case at::ScalarType::BFloat16:
      return fwd_typed<__nv_bfloat16>(p, stream);
    case at::ScalarType::Float:
      if (!p.allow_tf32)
        return c2::refuse("cluster2: fp32 runs only as TF32 (allow_tf32=True); IEEE fp32 is not a tensor-core "
                          "format");
      return fwd_typed<float>(p, stream);
    default:
      return c2::refuse("cluster2: float64 has no tensor-core path (fp16, bf16, fp32 as TF32 only)");
  }
}

}  // namespace cuda
}  // namespace fused_rnn
