// Architecture guards of the CUDA kernels (issue #20): which device features a kernel body may use, and what the host
// knows about the build. A distributable build compiles every .cu for sm_80, 86, 89, 90a (+ 100, 120 and PTX where
// the toolkit has them, setup.py), so each Hopper-only feature must sit behind a guard in device code and be refused
// with a message on the host (the dispatcher then runs `fallback` and the tier record says why).
//
//   FUSED_RNN_DEVICE_CLUSTERS   device pass for sm_90 and newer: thread-block clusters, distributed shared memory,
//                               cluster barriers (persistent_kernel.cuh's cluster kernel).
//   FUSED_RNN_DEVICE_SM90A      device pass for sm_90a only (__CUDA_ARCH_FEAT_SM90_ALL): wgmma, setmaxnreg and the
//                               other arch-specific features; their code runs only on cc 9.0 parts from an sm_90a
//                               build. Host side: fused_rnn::cuda::arch::built_sm90a().
// Everything else (batch_tiled, persistent's cooperative grid, fallback) compiles for every arch in the list;
// `.ci/run` proves it by compiling every .cu for sm_80 (scripts/arch_compile_check.py).
#pragma once

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define FUSED_RNN_DEVICE_CLUSTERS 1
#endif
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define FUSED_RNN_DEVICE_SM90A 1
#endif

// setup.py passes the arch list it compiled as -DFUSED_RNN_BUILT_ARCHS=8.0:8.6:9.0a:12.0+PTX (':' because nvcc splits
// -D values at commas) and -DFUSED_RNN_BUILT_SM90A=1 when 9.0a is in it; builds that do not (the standalone
// harness) report "unknown".
#define FUSED_RNN_ARCH_STR2(...) #__VA_ARGS__
#define FUSED_RNN_ARCH_STR(...) FUSED_RNN_ARCH_STR2(__VA_ARGS__)

namespace fused_rnn {
namespace cuda {
namespace arch {

// The arch list this extension was compiled for, as TORCH_CUDA_ARCH_LIST spells it ("8.0;8.6;9.0a;12.0+PTX").
inline const char* built_archs() {
#ifdef FUSED_RNN_BUILT_ARCHS
  static const char* s = [] {
    static char buf[256];
    const char* src = FUSED_RNN_ARCH_STR(FUSED_RNN_BUILT_ARCHS);
    int i = 0;
    for (; src[i] != '\0' && i < 255; ++i) buf[i] = src[i] == ':' ? ';' : src[i];
    buf[i] = '\0';
    return buf;
  }();
  return s;
#else
  return "unknown";
#endif
}

// Whether the build holds sm_90a code (the only code in which FUSED_RNN_DEVICE_SM90A sections exist). A kernel that
// needs them runs only when this is true and the device is cc 9.0.
constexpr bool built_sm90a() {
#if defined(FUSED_RNN_BUILT_SM90A)
  return true;
#else
  return false;
#endif
}

}  // namespace arch
}  // namespace cuda
}  // namespace fused_rnn
