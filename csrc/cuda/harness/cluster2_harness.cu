// Standalone device harness of the `cluster2` tier (no torch), the GPU half of issue 22's proof: it calls the entry
// points directly, so it sees whether the tier itself ran (the op falls back silently), and checks it against fp64
// and in-dtype CPU references (tolerance rule of docs/design.md), bitwise determinism, NaN-poisoned outputs, exact
// zeros at padded steps, refusals, a run beside a kernel that fills every SM, then times it against `cluster` (v1)
// interleaved in one process. Not part of the extension build. Build and run: csrc/cuda/harness/cluster2_device.sh.
//   ./cluster2_harness [mode]   mode 0: checks + timing; 1: checks only; 2: one tiny case (for compute-sanitizer);
//                               3: timing only (gpu-check part 4, after part 3 ran the checks)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cluster2.h"
#include "dispatch_log.h"
#include "persistent.h"

using namespace fused_rnn::cuda;

#define CK(x)                                                                                    \
  do {                                                                                           \
    cudaError_t e_ = (x);                                                                        \
    if (e_ != cudaSuccess) {                                                                     \
      printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__);            \
      exit(2);                                                                                   \
    }                                                                                            \
  } while (0)

static int g_fail = 0;

template <typename T> float tof(T x);
template <> float tof<float>(float x) { return x; }
template <> float tof<__half>(__half x) { return __half2float(x); }
template <> float tof<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> T fromf(float x);
template <> float fromf<float>(float x) { return x; }
template <> __half fromf<__half>(float x) { return __float2half_rn(x); }
template <> __nv_bfloat16 fromf<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <typename T> at::ScalarType st();
template <> at::ScalarType st<float>() { return at::ScalarType::Float; }
template <> at::ScalarType st<__half>() { return at::ScalarType::Half; }
template <> at::ScalarType st<__nv_bfloat16>() { return at::ScalarType::BFloat16; }
template <typename T> const char* nm();
template <> const char* nm<float>() { return "tf32"; }  // fp32 storage is run with allow_tf32 only
template <> const char* nm<__half>() { return "fp16"; }

// fp32 -> tf32, round to nearest, ties away from zero (cvt.rna.tf32.f32); identity unless `on`.
static float tf32r(float x, bool on) {
  if (!on || !std::isfinite(x)) return x;
  uint32_t u;
  memcpy(&u, &x, 4);
  u = (u + 0x1000u) & ~0x1FFFu;
  memcpy(&x, &u, 4);
  return x;
}
template <> const char* nm<__nv_bfloat16>() { return "bf16"; }

// References. R = double: the oracle (no rounding); R = float with round: the in-dtype reference (state rounded to
// T every step, fp32 carry, dA rounded when stored) -- the contract's reference in dtype T; for T = float that is
// the TF32 reference (matmul operands rounded to tf32, products exact).
template <typename R, typename T>
void ref_fwd(const std::vector<float>& P, const std::vector<float>& h0, const std::vector<float>& w,
             const std::vector<int>& L, int Tn, int B, int H, bool rev, int act, bool round, std::vector<double>& Y,
             std::vector<double>& hn) {
  Y.assign((size_t)Tn * B * H, 0.0);
  hn.assign((size_t)B * H, 0.0);
  std::vector<R> h(h0.begin(), h0.end()), a(H);
  for (int s = 0; s < Tn; ++s) {
    const int t = rev ? Tn - 1 - s : s;
    for (int b = 0; b < B; ++b) {
      if (t >= L[b]) continue;
      for (int j = 0; j < H; ++j) {
        R acc = 0;
        const bool t32 = round && std::is_same<T, float>::value;
        for (int k = 0; k < H; ++k)
          acc += (R)tf32r(w[(size_t)j * H + k], t32) * (double)tf32r((float)h[(size_t)b * H + k], t32);
        acc += (R)P[((size_t)t * B + b) * H + j];
        R v = act == 0 ? std::tanh(acc) : (acc <= 0 ? (R)0 : acc);
        if (round) v = (R)tof<T>(fromf<T>((float)v));
        a[j] = v;
      }
      for (int j = 0; j < H; ++j) h[(size_t)b * H + j] = a[j], Y[((size_t)t * B + b) * H + j] = a[j];
    }
  }
  for (size_t i = 0; i < hn.size(); ++i) hn[i] = h[i];
}

template <typename R, typename T>
void ref_bwd(const std::vector<float>& dY, const std::vector<float>& dhn, const std::vector<float>& Yv,
             const std::vector<float>& w, const std::vector<int>& L, int Tn, int B, int H, bool rev, int act,
             bool round, std::vector<double>& dA, std::vector<double>& dh0) {
  dA.assign((size_t)Tn * B * H, 0.0);
  dh0.assign((size_t)B * H, 0.0);
  std::vector<R> carry(dhn.begin(), dhn.end()), da(H);
  std::vector<bool> started(B, false);
  for (int s = 0; s < Tn; ++s) {
    const int t = rev ? s : Tn - 1 - s;
    for (int b = 0; b < B; ++b) {
      if (t >= L[b]) continue;
      for (int j = 0; j < H; ++j) {
        const size_t o = ((size_t)t * B + b) * H + j;
        const R g = (R)dY[o] + carry[(size_t)b * H + j];
        const R h = Yv[o];
        const R d = (act == 0 ? (R)1 - h * h : (h > 0 ? (R)1 : (R)0)) * g;
        da[j] = d;
        dA[o] = round ? tof<T>(fromf<T>((float)d)) : (double)d;
      }
      const bool t32 = round && std::is_same<T, float>::value;
      for (int k = 0; k < H; ++k) {
        R c = 0;
        for (int j = 0; j < H; ++j) c += (double)tf32r((float)da[j], t32) * (R)tf32r(w[(size_t)j * H + k], t32);
        carry[(size_t)b * H + k] = c;
      }
    }
  }
  for (size_t i = 0; i < dh0.size(); ++i) dh0[i] = round ? tof<T>(fromf<T>((float)carry[i])) : (double)carry[i];
}

template <typename T>
std::vector<float> up(const std::vector<T>& v) {
  std::vector<float> o(v.size());
  for (size_t i = 0; i < v.size(); ++i) o[i] = tof<T>(v[i]);
  return o;
}
// max |a - ref| / max(1, max |ref|); non-finite a sets nan.
static double relerr(const std::vector<float>& a, const std::vector<double>& ref, bool& nan) {
  double m = 0, s = 1;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) nan = true;
    m = std::max(m, std::fabs(a[i] - ref[i]));
    s = std::max(s, std::fabs(ref[i]));
  }
  return m / s;
}
static double relerr_d(const std::vector<double>& a, const std::vector<double>& ref) {
  double m = 0, s = 1;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - ref[i])), s = std::max(s, std::fabs(ref[i]));
  return m / s;
}

template <typename T>
struct Dev {
  T* p = nullptr;
  size_t n = 0;
  void alloc(size_t k) { n = k; CK(cudaMalloc(&p, std::max<size_t>(k, 1) * sizeof(T))); }
  void put(const std::vector<T>& v) { CK(cudaMemcpy(p, v.data(), n * sizeof(T), cudaMemcpyHostToDevice)); }
  std::vector<T> get() {
    std::vector<T> v(n);
    CK(cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
    return v;
  }
  void poison() { CK(cudaMemset(p, 0xFF, n * sizeof(T))); }  // NaN in fp16 and bf16
  ~Dev() { if (p) cudaFree(p); }
};

// One correctness case (forward, then backward on the kernel's own Y); returns whether the tier ran.
template <typename T>
bool run_case(int Tn, int B, int H, bool rev, int act, bool lens, bool expect_run, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> U(-1.f, 1.f);
  const float ws = 1.f / std::sqrt((float)H);
  const size_t TBH = (size_t)Tn * B * H, BH = (size_t)B * H;
  std::vector<T> P(TBH), h0(BH), w((size_t)H * H), dY(TBH), dhn(BH);
  for (auto& x : P) x = fromf<T>(U(rng));
  for (auto& x : h0) x = fromf<T>(U(rng));
  for (auto& x : w) x = fromf<T>(U(rng) * ws);
  for (auto& x : dY) x = fromf<T>(U(rng));
  for (auto& x : dhn) x = fromf<T>(U(rng));
  std::vector<int> L(B, Tn);
  std::vector<int64_t> L64(B, Tn);
  if (lens) {
    for (int b = 1; b < B; ++b) L[b] = 1 + (int)(rng() % Tn), L64[b] = L[b];
  }
  Dev<T> dP, dh0, dw, dYo, dhno, ddY, ddhn, ddA, ddh0;
  Dev<int64_t> dL;
  dP.alloc(TBH), dh0.alloc(BH), dw.alloc((size_t)H * H), dYo.alloc(TBH), dhno.alloc(BH), ddY.alloc(TBH);
  ddhn.alloc(BH), ddA.alloc(TBH), ddh0.alloc(BH), dL.alloc(B);
  dP.put(P), dh0.put(h0), dw.put(w), ddY.put(dY), ddhn.put(dhn), dL.put(L64);
  const bool tf32 = std::is_same<T, float>::value;
  ElmanFwdParams fp{dP.p, dh0.p, dw.p, lens ? dL.p : nullptr, dYo.p, dhno.p, Tn, B, H, rev, act, tf32};
  ElmanBwdParams bp{ddY.p, ddhn.p, dYo.p, dw.p, lens ? dL.p : nullptr, ddA.p, ddh0.p, Tn, B, H, rev, act, tf32};
  char tag[160];
  snprintf(tag, sizeof tag, "%s T=%d B=%d H=%d rev=%d act=%d lens=%d", nm<T>(), Tn, B, H, rev, act, lens);
  std::vector<T> Yk[2], hnk[2], dAk[2], dh0k[2];
  std::string plan;
  for (int rep = 0; rep < 2; ++rep) {
    dYo.poison(), dhno.poison(), ddA.poison(), ddh0.poison();
    dispatch_log::begin_call();  // the tier record's notes: the plan launched, or why the tier refused
    const bool f = elman_fwd_cluster2(fp, st<T>(), 0);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    if (f) plan = dispatch_log::detail(), dispatch_log::begin_call();
    const bool b = f && elman_bwd_cluster2(bp, st<T>(), 0);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    if (!f || !b) {
      // A refusal must say why (the op's tier record carries it): an empty reason fails too.
      const std::string why = dispatch_log::refusal();
      const bool ok = !expect_run && !f && !why.empty();
      printf("%s %s: %s refused (%s): %s\n", ok ? "ok  " : "FAIL", tag, f ? "backward" : "forward",
             expect_run ? "expected to run" : "expected", why.empty() ? "NO REASON NOTED" : why.c_str());
      if (!ok) ++g_fail;
      return false;
    }
    Yk[rep] = dYo.get(), hnk[rep] = dhno.get(), dAk[rep] = ddA.get(), dh0k[rep] = ddh0.get();
  }
  if (!expect_run) printf("FAIL %s: ran but a refusal was expected\n", tag), ++g_fail;
  auto same = [](const std::vector<T>& a, const std::vector<T>& b) {
    return memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
  };
  const bool deterministic =
      same(Yk[0], Yk[1]) && same(hnk[0], hnk[1]) && same(dAk[0], dAk[1]) && same(dh0k[0], dh0k[1]);
  const auto Pf = up(P), h0f = up(h0), wf = up(w), dYf = up(dY), dhnf = up(dhn), Ykf = up(Yk[0]);
  std::vector<double> Yo, hno, Yx, hnx, dAo, dh0o, dAx, dh0x;
  ref_fwd<double, T>(Pf, h0f, wf, L, Tn, B, H, rev, act, false, Yo, hno);
  ref_fwd<float, T>(Pf, h0f, wf, L, Tn, B, H, rev, act, true, Yx, hnx);
  ref_bwd<double, T>(dYf, dhnf, Ykf, wf, L, Tn, B, H, rev, act, false, dAo, dh0o);
  ref_bwd<float, T>(dYf, dhnf, Ykf, wf, L, Tn, B, H, rev, act, true, dAx, dh0x);
  bool nan = false;
  const double floor_ = tf32 ? 2e-6 : std::is_same<T, __half>::value ? 1e-3 : 8e-3;  // tests/cuda_common.py FLOOR
  const double eY = relerr(Ykf, Yo, nan), eYr = relerr_d(Yx, Yo);
  const double eh = relerr(up(hnk[0]), hno, nan), ehr = relerr_d(hnx, hno);
  const double edA = relerr(up(dAk[0]), dAo, nan), edAr = relerr_d(dAx, dAo);
  const double ed0 = relerr(up(dh0k[0]), dh0o, nan), ed0r = relerr_d(dh0x, dh0o);
  bool pad0 = true;
  for (int t = 0; t < Tn; ++t)
    for (int b = 0; b < B; ++b)
      if (t >= L[b])
        for (int j = 0; j < H; ++j) {
          const size_t o = ((size_t)t * B + b) * H + j;
          if (tof<T>(Yk[0][o]) != 0.f || tof<T>(dAk[0][o]) != 0.f) pad0 = false;
        }
  const bool pass = !nan && deterministic && pad0 && eY <= 2 * eYr + floor_ && eh <= 2 * ehr + floor_ &&
                    edA <= 2 * edAr + floor_ && ed0 <= 2 * ed0r + floor_;
  printf("%s %s: Y %.2e (ref %.2e) h_n %.2e (%.2e) dA %.2e (%.2e) dh0 %.2e (%.2e) det=%d pad0=%d nan=%d [%s]\n",
         pass ? "ok  " : "FAIL", tag, eY, eYr, eh, ehr, edA, edAr, ed0, ed0r, deterministic, pad0, nan,
         plan.c_str());
  if (!pass) ++g_fail;
  return true;
}

__global__ void spin_kernel(long long cycles) {
  const long long s = clock64();
  while (clock64() - s < cycles) {
  }
}

// Median µs per step of forward and backward, cluster2 vs cluster (v1), interleaved round by round.
template <typename T>
void timing(int Tn, int B, int H) {
  const size_t TBH = (size_t)Tn * B * H, BH = (size_t)B * H;
  Dev<T> dP, dh0, dw, dY, dhn, dA, dh0o;
  dP.alloc(TBH), dh0.alloc(BH), dw.alloc((size_t)H * H), dY.alloc(TBH), dhn.alloc(BH), dA.alloc(TBH), dh0o.alloc(BH);
  std::vector<T> v(std::max(TBH, (size_t)H * H));
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> U(-1.f, 1.f);
  for (auto& x : v) x = fromf<T>(U(rng) / std::sqrt((float)H));
  CK(cudaMemcpy(dP.p, v.data(), TBH * sizeof(T), cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dw.p, v.data(), (size_t)H * H * sizeof(T), cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dh0.p, v.data(), BH * sizeof(T), cudaMemcpyHostToDevice));
  const bool tf32 = std::is_same<T, float>::value;  // v1 computes IEEE fp32 either way
  ElmanFwdParams fp{dP.p, dh0.p, dw.p, nullptr, dY.p, dhn.p, Tn, B, H, false, 0, tf32};
  ElmanBwdParams bp{dP.p, dh0.p, dY.p, dw.p, nullptr, dA.p, dh0o.p, Tn, B, H, false, 0, tf32};
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  // tier 0 = cluster2, 1 = cluster (v1); dir 0 forward, 1 backward
  auto go = [&](int tier, int dir) {
    if (tier == 0) return dir == 0 ? elman_fwd_cluster2(fp, st<T>(), 0) : elman_bwd_cluster2(bp, st<T>(), 0);
    return dir == 0 ? elman_fwd_persistent(fp, st<T>(), true, 0) : elman_bwd_persistent(bp, st<T>(), true, 0);
  };
  std::vector<float> s[2][2];
  bool ran[2][2] = {{true, true}, {true, true}};
  for (int tier = 0; tier < 2; ++tier)
    for (int dir = 0; dir < 2; ++dir) {
      ran[tier][dir] = go(tier, dir);
      CK(cudaGetLastError());
    }
  CK(cudaDeviceSynchronize());
  for (int r = 0; r < 7; ++r)
    for (int tier = 0; tier < 2; ++tier)
      for (int dir = 0; dir < 2; ++dir) {
        if (!ran[tier][dir]) continue;
        CK(cudaEventRecord(e0));
        go(tier, dir);
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        float m;
        CK(cudaEventElapsedTime(&m, e0, e1));
        s[tier][dir].push_back(m * 1000.f / Tn);
      }
  auto med = [&](int tier, int dir) {
    auto x = s[tier][dir];
    if (x.empty()) return -1.f;
    std::sort(x.begin(), x.end());
    return x[x.size() / 2];
  };
  printf("TIME %s T=%d B=%3d H=%4d  cluster2 fwd %6.2f bwd %6.2f | cluster fwd %6.2f bwd %6.2f us/step\n", nm<T>(),
         Tn, B, H, med(0, 0), med(0, 1), med(1, 0), med(1, 1));
}

// The checks of modes 0 and 1 (g_fail counts the failures).
void checks(const cudaDeviceProp& prop) {
  unsigned seed = 10;
  using bf = __nv_bfloat16;
  run_case<bf>(1, 1, 1, false, 0, false, true, seed++);
  run_case<bf>(7, 3, 17, true, 0, true, true, seed++);
  run_case<__half>(7, 3, 17, false, 1, true, true, seed++);
  run_case<__half>(9, 16, 256, false, 0, true, true, seed++);
  run_case<bf>(9, 64, 256, true, 0, true, true, seed++);
  run_case<bf>(63, 5, 500, true, 0, true, true, seed++);
  run_case<__half>(33, 20, 530, false, 1, true, true, seed++);
  run_case<bf>(1025, 3, 256, false, 0, true, true, seed++);
  run_case<bf>(9, 16, 1024, false, 0, true, true, seed++);
  run_case<__half>(9, 3, 1024, true, 1, true, true, seed++);
  run_case<bf>(5, 300, 1000, true, 0, true, true, seed++);
  run_case<bf>(3, 2, 1025, false, 0, false, false, seed++);  // beyond 16 CTAs x 64 units: refused
  run_case<float>(7, 3, 17, true, 0, true, true, seed++);     // fp32 under allow_tf32: m16n8k8 TF32
  run_case<float>(33, 20, 600, false, 1, true, true, seed++);
  run_case<float>(9, 5, 768, true, 0, true, true, seed++);
  run_case<float>(3, 2, 769, false, 0, false, false, seed++);  // TF32 beyond 16 CTAs x 48 units: refused
  {  // IEEE fp32 (no allow_tf32) is refused (the dispatcher runs fallback), leaving no CUDA error behind
    ElmanFwdParams fp{nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 4, 2, 64, false, 0, false};
    dispatch_log::begin_call();
    const bool r = elman_fwd_cluster2(fp, at::ScalarType::Float, 0);
    const cudaError_t e = cudaGetLastError();
    const std::string why = dispatch_log::refusal();
    const bool ok = !r && e == cudaSuccess && why.find("TF32") != std::string::npos;
    printf("%s IEEE fp32 refused=%d err=%d: %s\n", ok ? "ok  " : "FAIL", !r, (int)e, why.c_str());
    if (!ok) ++g_fail;
  }
  {  // beside a kernel that keeps every SM busy: the cluster waits for room and finishes (no deadlock)
    cudaStream_t s2;
    CK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
    int khz = 0;
    CK(cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, 0));
    spin_kernel<<<prop.multiProcessorCount * 8, 256, 0, s2>>>((long long)khz * 300);  // ~300 ms
    CK(cudaGetLastError());
    const auto t0 = std::chrono::steady_clock::now();
    run_case<bf>(33, 3, 700, true, 0, true, true, 999);
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    CK(cudaStreamSynchronize(s2));
    printf("busy-stream run finished in %.2f s\n", sec);
  }
  printf("FAILURES %d\n", g_fail);
}

int main(int argc, char** argv) {
  const int mode = argc > 1 ? atoi(argv[1]) : 0;
  setvbuf(stdout, nullptr, _IOLBF, 0);  // every line reaches the file even if a timeout ends the timing part
  dispatch_log::set_enabled(true);      // the launchers note the plan they launched (off again for the timing)
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  printf("device %s, sm_%d%d, %d SMs, smem optin %zu\n", prop.name, prop.major, prop.minor, prop.multiProcessorCount,
         prop.sharedMemPerBlockOptin);
  if (mode == 2) {
    run_case<__nv_bfloat16>(5, 3, 40, true, 0, true, true, 1);
    run_case<__half>(4, 9, 300, false, 1, true, true, 2);
    printf("FAILURES %d\n", g_fail);
    return g_fail ? 1 : 0;
  }
  using bf = __nv_bfloat16;
  if (mode != 3) checks(prop);
  if (mode == 1 || g_fail) return g_fail ? 1 : 0;
  dispatch_log::set_enabled(false);
  for (int B : {1, 16})
    for (int H : {256, 512, 1024}) timing<bf>(1024, B, H);
  timing<__half>(1024, 16, 1024);
  timing<float>(1024, 16, 512);  // TF32 vs v1's IEEE fp32
  for (int B : {64, 256}) timing<bf>(256, B, 1024);
  return 0;
}
