// A C++-only server for a fused_rnn model: loads an AOTInductor package (.pt2) with libtorch and runs it.
// No Python at run time. The package calls fused_rnn's ops (torch.ops.fused_rnn.elman_fwd), so the process must
// load the extension's shared library first: that registers the ops with the dispatcher. The library is a Python
// extension module (fused_rnn/_C*.so) whose only Python symbol, its module-init function, is never called here, so
// it loads with lazy binding (RTLD_LAZY; RTLD_NOW would need libpython). RTLD_GLOBAL is not required.
//
// usage: serve MODEL.pt2 FUSED_RNN_LIB INPUT.f32 B T I OUTPUT.f32 H_N.f32
//   INPUT.f32: raw float32 [B, T, I] (the model was exported with batch_first=True)
//   writes the model's outputs as raw float32: output [B, T, D*H] and h_n [L*D, B, H]
#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

static void write_f32(const std::string& path, const at::Tensor& t) {
  at::Tensor c = t.contiguous().to(at::kFloat);
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(c.data_ptr<float>()), static_cast<std::streamsize>(c.numel() * 4));
}

int main(int argc, char** argv) {
  if (argc != 9) {
    std::cerr << "usage: serve MODEL.pt2 FUSED_RNN_LIB INPUT.f32 B T I OUTPUT.f32 H_N.f32\n";
    return 2;
  }
  // 1. The op registrations: load fused_rnn's shared library before the package.
  if (dlopen(argv[2], RTLD_LAZY) == nullptr) {
    std::cerr << "cannot load " << argv[2] << ": " << dlerror() << "\n";
    return 1;
  }
  // 2. The model.
  torch::inductor::AOTIModelPackageLoader loader(argv[1]);
  // 3. An input batch [B, T, I].
  const int64_t B = std::atoll(argv[4]), T = std::atoll(argv[5]), I = std::atoll(argv[6]);
  at::Tensor x = at::empty({B, T, I}, at::kFloat);
  std::ifstream in(argv[3], std::ios::binary);
  in.read(reinterpret_cast<char*>(x.data_ptr<float>()), static_cast<std::streamsize>(x.numel() * 4));
  if (!in) {
    std::cerr << "cannot read " << B * T * I << " floats from " << argv[3] << "\n";
    return 1;
  }
  // 4. Run: the inputs in the order of the exported forward's (flattened) arguments; here just `input`.
  std::vector<at::Tensor> out = loader.run({x});
  std::cout << "output " << out[0].sizes() << " h_n " << out[1].sizes() << "\n";
  write_f32(argv[7], out[0]);
  write_f32(argv[8], out[1]);
  return 0;
}
