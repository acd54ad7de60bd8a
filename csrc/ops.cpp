// fused_rnn op schemas: declared once here, implemented per dispatch key in csrc/cpu/ (CPU) and csrc/cuda/ (CUDA).
//
// The schemas carry everything that changes the result or the kernel (direction, nonlinearity, tier, TF32), so
// torch.compile sees it and nothing is read from the environment inside C++. Shapes (T time, B batch, H hidden):
//   elman_fwd(P [T,B,H], h0 [B,H], w_hh [H,H], lengths [B] int64 | None, ...) -> (Y [T,B,H], h_n [B,H])
//   elman_bwd(dY [T,B,H], dh_n [B,H], Y [T,B,H], w_hh [H,H], lengths, ...)   -> (dA [T,B,H], dh0 [B,H])
// The exact contract is in docs/design.md.
#include <Python.h>

#include <string>
#include <vector>

#include <torch/library.h>

#include "cuda/gpu_verified.h"
#include "fused_rnn.h"

// The module `fused_rnn._C` holds no Python functions: importing it runs the static TORCH_LIBRARY registrations
// below and in the backend files. A bare PyInit avoids pybind11 (and its compile time) entirely.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

namespace fused_rnn {

#ifndef FUSED_RNN_WITH_CUDA
std::vector<std::string> cuda_tier_names() { return {}; }
#endif

namespace {
std::vector<std::string> cuda_tiers_op() { return cuda_tier_names(); }
std::vector<std::string> gpu_verified_op() { return gpu_verified_entries(); }
bool built_with_cuda_op() {
#ifdef FUSED_RNN_WITH_CUDA
  return true;
#else
  return false;
#endif
}
}  // namespace

TORCH_LIBRARY(fused_rnn, m) {
  m.def(
      "elman_fwd(Tensor P, Tensor h0, Tensor w_hh, Tensor? lengths, bool reverse, str nonlinearity, str tier, "
      "bool allow_tf32) -> (Tensor Y, Tensor h_n)");
  m.def(
      "elman_bwd(Tensor dY, Tensor dh_n, Tensor Y, Tensor w_hh, Tensor? lengths, bool reverse, str nonlinearity, "
      "str tier, bool allow_tf32) -> (Tensor dA, Tensor dh0)");
  // Introspection: which CUDA tiers this build compiled (empty without CUDA), and whether CUDA was built at all.
  m.def("cuda_tiers() -> str[]", &cuda_tiers_op);
  m.def("built_with_cuda() -> bool", &built_with_cuda_op);
  // The GPU-verified list (csrc/cuda/gpu_verified.h): the one copy the CUDA op and the Python selector both read.
  m.def("gpu_verified() -> str[]", &gpu_verified_op);
}

}  // namespace fused_rnn
