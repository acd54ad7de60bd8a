// CPU emulation of the `cluster2` tier (csrc/cuda/cluster2_kernel.cuh), for tests without a GPU
// (tests/test_cluster2.py builds it with the host compiler and drives it through ctypes; setup.py never builds it).
//
// The kernel source is compiled unchanged as host C++. Every instruction it issues through cluster2_ptx.cuh gets a
// host twin here, written from the PTX ISA independently of the kernel: the m16n8k16 fragment layouts of A, B and
// C/D, ldmatrix's row-address / register map, mbarrier phases with arrival and transaction counts, the bulk copy that
// completes on the destination's mbarrier, mapa, and the split cluster barrier. So a kernel whose lane maps disagree
// with the PTX layouts computes wrong numbers here, and one whose ring protocol is wrong reads data still in flight,
// deadlocks, or computes wrong numbers -- and each of those is reported, never hangs:
//
//   * Every CUDA thread of the cluster is a fiber (ucontext) on ONE host thread; a fiber runs until it reaches a
//     synchronization point (warp collective, __syncthreads, mbarrier wait, cluster barrier) and the scheduler then
//     picks the next runnable fiber by a seeded policy. No runnable fiber and no copy in flight = deadlock: the run
//     stops with a report of who waits where. A switch budget stops a livelock.
//   * A bulk copy is a task of the "copy engine": executed at issue (eager), only when no fiber can run (lazy: a
//     reader that skips its wait reads stale bytes), or at random points. While it is in flight its destination
//     bytes are marked; an ldmatrix of marked bytes is reported ("missing mbarrier wait"), as is a copy whose
//     destination is already being written, whose mbarrier is not initialized (peer not ready), or whose source is
//     being written by another copy.
//   * Shared memory is poisoned with 0xFF (NaN) before each cluster runs.
// It checks indexing, fragment maps, the reduction order, lengths/reverse, rounding and the exchange protocol's
// ordering -- not timing, the memory model of real hardware (fences, proxies), or the host launcher.
// Shapes as in elman_params.h: P, Y, dY, dA [T, B, H]; h0, h_n, dh_n, dh0 [B, H]; w_hh [H, H]; lengths [B].
#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#undef __global__
#undef __device__
#undef __forceinline__
#undef __launch_bounds__
#undef __shared__
#undef __align__
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__
#define __align__(n) __attribute__((aligned(n)))

namespace emu {

struct Dim3 {
  unsigned x = 0, y = 0, z = 0;
};
struct Cta;

struct Fiber {
  ucontext_t ctx{};
  unsigned char* map = nullptr;  // stack mapping (guard page first)
  size_t map_size = 0;
  Cta* cta = nullptr;
  int tid = 0;
  Dim3 tidx;
  enum State { Runnable, Blocked, Done } state = Runnable;
  const char* wait_what = "";
  uint64_t cl_gen = 0;
  bool cl_arrived = false;
};

enum Kind { kLdm2 = 1, kLdm4, kMmaBf16, kMmaF16, kMmaTf32 };

struct Warp {  // rendezvous of the 32 lanes for one warp-collective instruction
  int arrived = 0;
  int kind = 0;
  uint64_t gen = 0;
  uintptr_t addr[32];
  uint32_t a[32][4], b[32][2];
  float c[32][4];
  uint32_t res[32][4];
  float dres[32][4];
  std::vector<Fiber*> waiting;
};

struct MBar {
  uint32_t count = 0, pending = 0;
  int64_t tx = 0;
  uint32_t phase = 0;
  std::vector<Fiber*> waiting;
};

struct Cta {
  int rank = 0;
  Dim3 bidx;
  unsigned char* smem = nullptr;
  size_t size = 0;
  std::vector<uint16_t> pending;  // per 16-byte granule: bulk copies in flight into it
  int bar_arrived = 0;
  uint64_t bar_gen = 0;
  std::vector<Fiber*> bar_waiting;
  Warp warps[8];
  std::unordered_map<uintptr_t, MBar> mbars;
  std::vector<Fiber*> runq;
  bool contains(uintptr_t a, size_t n) const {
    return a >= reinterpret_cast<uintptr_t>(smem) && a + n <= reinterpret_cast<uintptr_t>(smem) + size;
  }
};

struct Copy {
  uintptr_t dst, src, bar;
  uint32_t bytes;
  Cta* from;
  Cta* to;
};

// Scheduling policy: copy engine x fiber pick.
enum CopyMode { kCopyRandom = 0, kCopyLazy = 1, kCopyEager = 2 };
enum PickMode { kPickRandom = 0, kPickPriority = 1 };

struct Sched {
  std::vector<std::unique_ptr<Cta>> ctas;
  std::vector<std::unique_ptr<Fiber>> fibers;
  std::deque<Copy> copies;
  std::vector<int> prio;  // kPickPriority: CTA order (a seeded permutation; the first runs ahead as far as it can)
  int nthreads = 0, ndone = 0;
  int cl_arrived = 0;
  uint64_t cl_gen = 0;
  std::vector<Fiber*> cl_waiting;
  ucontext_t main{};
  Fiber* cur = nullptr;
  std::mt19937_64 rng;
  CopyMode copy_mode = kCopyRandom;
  PickMode pick_mode = kPickRandom;
  std::string err;
  uint64_t switches = 0, limit = 0;
  std::function<void()> body;
  uint64_t copies_done = 0, waits_blocked = 0;
};
Sched* S = nullptr;

void block(const char* what) {
  Fiber* f = S->cur;
  f->state = Fiber::Blocked;
  f->wait_what = what;
  swapcontext(&f->ctx, &S->main);
}
// Records the first error and parks the fiber for good (the scheduler stops at once).
[[noreturn]] void fail(const std::string& msg) {
  if (S->err.empty()) S->err = msg;
  for (;;) block("failed");
}
void wake(Fiber* f) {
  f->state = Fiber::Runnable;
  f->cta->runq.push_back(f);
}
void yield_now() {
  wake(S->cur);
  block("yield");
}
void maybe_yield() {
  if (S->pick_mode == kPickRandom && (S->rng() & 7) == 0) yield_now();
}

Cta* cta_of(uintptr_t a, size_t n) {
  for (auto& c : S->ctas)
    if (c->contains(a, n)) return c.get();
  return nullptr;
}
MBar* mbar_at(uintptr_t a, const char* op) {
  Cta* c = cta_of(a, 8);
  if (c == nullptr || (a & 7) != 0)
    fail(std::string(op) + ": address is not an 8-byte aligned mbarrier in the cluster");
  auto it = c->mbars.find(a);
  if (it == c->mbars.end())
    fail(std::string(op) + ": mbarrier at offset " + std::to_string(a - reinterpret_cast<uintptr_t>(c->smem)) +
         " of CTA " + std::to_string(c->rank) + " is not initialized (peer not ready, or a wrong address)");
  return &it->second;
}
void mbar_check_complete(MBar* m) {
  if (m->pending == 0 && m->tx == 0) {
    m->phase++;
    m->pending = m->count;
    for (Fiber* f : m->waiting) wake(f);
    m->waiting.clear();
  }
}

void execute_copy(size_t idx) {
  Copy c = S->copies[idx];
  S->copies.erase(S->copies.begin() + static_cast<long>(idx));
  const uintptr_t fb = reinterpret_cast<uintptr_t>(c.from->smem);
  for (uint32_t o = 0; o < c.bytes; o += 16)
    if (c.from->pending[(c.src + o - fb) / 16] != 0)
      fail("bulk copy: its source bytes are the destination of another copy still in flight");
  std::memcpy(reinterpret_cast<void*>(c.dst), reinterpret_cast<const void*>(c.src), c.bytes);
  const uintptr_t tb = reinterpret_cast<uintptr_t>(c.to->smem);
  for (uint32_t o = 0; o < c.bytes; o += 16) c.to->pending[(c.dst + o - tb) / 16]--;
  MBar* m = mbar_at(c.bar, "bulk copy completion");
  m->tx -= c.bytes;
  S->copies_done++;
  mbar_check_complete(m);
}

std::string deadlock_report() {
  std::string r = "deadlock: no thread can run and no copy is in flight;";
  for (auto& c : S->ctas) {
    std::unordered_map<std::string, int> n;
    for (auto& f : S->fibers)
      if (f->cta == c.get() && f->state == Fiber::Blocked) n[f->wait_what]++;
    r += " CTA " + std::to_string(c->rank) + ":";
    for (auto& kv : n) r += " " + std::to_string(kv.second) + " in " + kv.first;
    for (auto& kv : c->mbars)
      r += " [mbarrier +" + std::to_string(kv.first - reinterpret_cast<uintptr_t>(c->smem)) + " phase " +
           std::to_string(kv.second.phase) + " pending " + std::to_string(kv.second.pending) + " tx " +
           std::to_string(kv.second.tx) + "]";
    r += ";";
  }
  return r;
}

void fiber_main() {
  Fiber* f = S->cur;
  S->body();
  // The last thread of a CTA to exit frees its shared memory on a GPU: no copy may still read or write it.
  bool cta_done = true;
  for (auto& o : S->fibers) cta_done = cta_done && (o.get() == f || o->cta != f->cta || o->state == Fiber::Done);
  if (cta_done)
    for (const Copy& c : S->copies)
      if (c.from == f->cta || c.to == f->cta)
        fail("CTA " + std::to_string(f->cta->rank) +
             " exited while a bulk copy still reads or writes its shared memory");
  f->state = Fiber::Done;
  S->ndone++;
  swapcontext(&f->ctx, &S->main);
}

Fiber* pick() {
  if (S->pick_mode == kPickPriority) {
    for (int r : S->prio) {
      auto& q = S->ctas[r]->runq;
      if (!q.empty()) {
        Fiber* f = q.front();
        q.erase(q.begin());
        return f;
      }
    }
    return nullptr;
  }
  int nonempty = 0;
  for (auto& c : S->ctas) nonempty += !c->runq.empty();
  if (nonempty == 0) return nullptr;
  int k = static_cast<int>(S->rng() % nonempty);
  for (auto& c : S->ctas) {
    if (c->runq.empty()) continue;
    if (k-- == 0) {
      const size_t i = S->rng() % c->runq.size();
      Fiber* f = c->runq[i];
      c->runq[i] = c->runq.back();
      c->runq.pop_back();
      return f;
    }
  }
  return nullptr;
}

// Runs every fiber to completion (or to the first error / deadlock). Returns false with S->err set on failure.
bool run_all() {
  for (;;) {
    if (!S->err.empty()) return false;
    if (++S->switches > S->limit) {
      S->err = "switch budget exhausted (livelock?)";
      return false;
    }
    if (!S->copies.empty() && S->copy_mode == kCopyRandom && (S->rng() & 3) == 0)
      execute_copy(S->rng() % S->copies.size());
    if (!S->err.empty()) return false;
    Fiber* f = pick();
    if (f == nullptr) {
      if (!S->copies.empty()) {
        execute_copy(S->copy_mode == kCopyRandom ? S->rng() % S->copies.size() : 0);
        continue;
      }
      if (S->ndone == S->nthreads) return true;
      S->err = deadlock_report();
      return false;
    }
    S->cur = f;
    swapcontext(&S->main, &f->ctx);
    S->cur = nullptr;
  }
}

}  // namespace emu

// ---- the CUDA built-ins and PTX twins the kernel uses -----------------------------------------------------------
#define threadIdx (::emu::S->cur->tidx)
#define blockIdx (::emu::S->cur->cta->bidx)

inline void __syncthreads() {
  using namespace emu;
  Cta* c = S->cur->cta;
  const uint64_t g = c->bar_gen;
  if (++c->bar_arrived == 256) {
    c->bar_arrived = 0;
    c->bar_gen++;
    for (Fiber* f : c->bar_waiting) wake(f);
    c->bar_waiting.clear();
    maybe_yield();
  } else {
    c->bar_waiting.push_back(S->cur);
    while (c->bar_gen == g) block("__syncthreads");
  }
}

namespace fused_rnn {
namespace cuda {
namespace c2 {

using saddr_t = uintptr_t;

inline unsigned char* dyn_smem() { return emu::S->cur->cta->smem; }
inline saddr_t smem_addr(const void* p) { return reinterpret_cast<saddr_t>(p); }
inline int cluster_rank() { return emu::S->cur->cta->rank; }
inline saddr_t map_peer(saddr_t a, int rank) {
  using namespace emu;
  Cta* me = S->cur->cta;
  if (!me->contains(a, 1)) fail("mapa: address outside this CTA's shared memory");
  if (rank < 0 || rank >= static_cast<int>(S->ctas.size())) fail("mapa: rank outside the cluster");
  return reinterpret_cast<saddr_t>(S->ctas[rank]->smem) + (a - reinterpret_cast<saddr_t>(me->smem));
}

// A warp-collective instruction: every lane deposits its operands, the last to arrive computes all 32 results.
template <class Fill, class Compute>
void collective(int kind, Fill&& fill, Compute&& compute) {
  using namespace emu;
  Fiber* f = S->cur;
  Warp& w = f->cta->warps[f->tid / 32];
  const int lane = f->tid & 31;
  if (w.arrived == 0) w.kind = kind;
  else if (w.kind != kind) fail("divergent warp: lanes of one warp issued different collective instructions");
  fill(w, lane);
  if (++w.arrived == 32) {
    compute(w);
    w.arrived = 0;
    w.gen++;
    for (Fiber* o : w.waiting) wake(o);
    w.waiting.clear();
    maybe_yield();
  } else {
    const uint64_t g = w.gen;
    w.waiting.push_back(f);
    while (w.gen == g) block("warp collective");
  }
}

// ldmatrix .m8n8 .x{nm} .b16 (PTX ISA): lanes 8q..8q+7 hold the row addresses of matrix q; lane l receives the
// 32-bit word l%4 of row l/4 of each matrix.
inline void ldmatrix_n(int nm, uint32_t* r) {
  using namespace emu;
  Warp& w = S->cur->cta->warps[S->cur->tid / 32];
  for (int j = 0; j < nm; ++j) r[j] = w.res[S->cur->tid & 31][j];
}
inline void ldmatrix_impl(int nm, uint32_t* r, saddr_t a) {
  using namespace emu;
  collective(
      nm == 2 ? kLdm2 : kLdm4, [&](Warp& w, int lane) { w.addr[lane] = a; },
      [&](Warp& w) {
        Cta* c = S->cur->cta;
        for (int q = 0; q < nm; ++q)
          for (int row = 0; row < 8; ++row) {
            const uintptr_t ra = w.addr[q * 8 + row];
            if ((ra & 15) != 0 || !c->contains(ra, 16)) fail("ldmatrix: a row address is unaligned or outside smem");
            if (c->pending[(ra - reinterpret_cast<uintptr_t>(c->smem)) / 16] != 0)
              fail("ldmatrix read bytes that a bulk copy is still writing (a missing or wrong mbarrier wait)");
          }
        for (int l = 0; l < 32; ++l)
          for (int q = 0; q < nm; ++q)
            std::memcpy(&w.res[l][q], reinterpret_cast<const void*>(w.addr[q * 8 + l / 4] + (l % 4) * 4), 4);
      });
  ldmatrix_n(nm, r);
}
inline void ldmatrix_x4(uint32_t (&r)[4], saddr_t a) { ldmatrix_impl(4, r, a); }
inline void ldmatrix_x2(uint32_t (&r)[2], saddr_t a) { ldmatrix_impl(2, r, a); }

inline float half_bits(uint32_t b, bool bf16) {
  if (bf16) {
    const uint32_t u = (b & 0xFFFFu) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  __half_raw hr;
  hr.x = static_cast<unsigned short>(b & 0xFFFFu);
  return __half2float(__half(hr));
}

// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}: fragment layouts from the PTX ISA ("Matrix Fragments for
// mma.m16n8k16 with floating point type"), groupID g = lane >> 2, threadID_in_group t = lane % 4:
//   A a0..a7 (4 regs, low half first): row g for a0,a1,a4,a5, g+8 for a2,a3,a6,a7; col 2t + (i&1) (+8 for i >= 4)
//   B b0..b3 (2 regs): row 2t + (i&1) (+8 for i >= 2), col g
//   C/D c0..c3: row g (c0,c1), g+8 (c2,c3); col 2t + (i&1)
// Products of 16-bit values are exact in double; the sum is rounded to fp32 once (the hardware's internal order
// differs by rounding only, inside the tolerance rule).
inline void mma_impl(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], bool bf16) {
  using namespace emu;
  collective(
      bf16 ? kMmaBf16 : kMmaF16,
      [&](Warp& w, int lane) {
        for (int i = 0; i < 4; ++i) w.a[lane][i] = a[i], w.c[lane][i] = d[i];
        for (int i = 0; i < 2; ++i) w.b[lane][i] = b[i];
      },
      [&](Warp& w) {
        double Am[16][16], Bm[16][8], Cm[16][8];
        int seenA[16][16] = {}, seenB[16][8] = {}, seenC[16][8] = {};
        for (int l = 0; l < 32; ++l) {
          const int g = l >> 2, t = l & 3;
          for (int i = 0; i < 8; ++i) {
            const int row = (i == 2 || i == 3 || i == 6 || i == 7) ? g + 8 : g;
            const int col = 2 * t + (i & 1) + (i >= 4 ? 8 : 0);
            Am[row][col] = half_bits(w.a[l][i / 2] >> (16 * (i & 1)), bf16);
            seenA[row][col]++;
          }
          for (int i = 0; i < 4; ++i) {
            const int row = 2 * t + (i & 1) + (i >= 2 ? 8 : 0);
            Bm[row][g] = half_bits(w.b[l][i / 2] >> (16 * (i & 1)), bf16);
            seenB[row][g]++;
          }
          for (int i = 0; i < 4; ++i) {
            const int row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
            Cm[row][col] = w.c[l][i];
            seenC[row][col]++;
          }
        }
        for (int r = 0; r < 16; ++r)
          for (int c = 0; c < 16; ++c)
            if (seenA[r][c] != 1 || (c < 8 && (seenB[r][c] != 1 || seenC[r][c] != 1)))
              fail("emulator: fragment layout tables do not cover each element once");
        for (int l = 0; l < 32; ++l) {
          const int g = l >> 2, t = l & 3;
          for (int i = 0; i < 4; ++i) {
            const int row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
            double s = 0.0;
            for (int k = 0; k < 16; ++k) s += Am[row][k] * Bm[k][col];
            w.dres[l][i] = static_cast<float>(Cm[row][col] + s);
          }
        }
      });
  Warp& w = S->cur->cta->warps[S->cur->tid / 32];
  for (int i = 0; i < 4; ++i) d[i] = w.dres[S->cur->tid & 31][i];
}
template <typename T>
void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  mma_impl(d, a, b, std::is_same<T, __nv_bfloat16>::value);
}

// cvt.rna.tf32.f32: round to 10 mantissa bits, ties away from zero; NaN stays NaN.
inline uint32_t cvt_tf32(uint32_t u) {
  if ((u & 0x7F800000u) == 0x7F800000u) return (u & 0x007FFFFFu) ? 0x7FFFFFFFu & ~0x1FFFu : u;  // NaN / inf
  return (u + 0x1000u) & ~0x1FFFu;  // adding half an ulp to the magnitude, then truncating: ties away from zero
}
// The tensor core reads a .tf32 operand's sign, exponent and top 10 mantissa bits (the low 13 are ignored).
inline double tf32_value(uint32_t u) {
  u &= ~0x1FFFu;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32, PTX ISA "Matrix Fragments for mma.m16n8k8" (.tf32):
//   A a0..a3: row g (a0, a2), g+8 (a1, a3); col t (a0, a1), t+4 (a2, a3)
//   B b0, b1: row t (b0), t+4 (b1); col g
//   C/D as for m16n8k16.
inline void mma_1688_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  using namespace emu;
  collective(
      kMmaTf32,
      [&](Warp& w, int lane) {
        for (int i = 0; i < 4; ++i) w.a[lane][i] = a[i], w.c[lane][i] = d[i];
        for (int i = 0; i < 2; ++i) w.b[lane][i] = b[i];
      },
      [&](Warp& w) {
        double Am[16][8], Bm[8][8], Cm[16][8];
        int seenA[16][8] = {}, seenB[8][8] = {}, seenC[16][8] = {};
        for (int l = 0; l < 32; ++l) {
          const int g = l >> 2, t = l & 3;
          for (int i = 0; i < 4; ++i) {
            const int row = (i & 1) ? g + 8 : g, col = (i & 2) ? t + 4 : t;
            Am[row][col] = tf32_value(w.a[l][i]);
            seenA[row][col]++;
          }
          for (int i = 0; i < 2; ++i) {
            Bm[i ? t + 4 : t][g] = tf32_value(w.b[l][i]);
            seenB[i ? t + 4 : t][g]++;
          }
          for (int i = 0; i < 4; ++i) {
            const int row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
            Cm[row][col] = w.c[l][i];
            seenC[row][col]++;
          }
        }
        for (int r = 0; r < 16; ++r)
          for (int c = 0; c < 8; ++c)
            if (seenA[r][c] != 1 || seenC[r][c] != 1 || (r < 8 && seenB[r][c] != 1))
              fail("emulator: tf32 fragment layout tables do not cover each element once");
        for (int l = 0; l < 32; ++l) {
          const int g = l >> 2, t = l & 3;
          for (int i = 0; i < 4; ++i) {
            const int row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
            double s = 0.0;
            for (int k = 0; k < 8; ++k) s += Am[row][k] * Bm[k][col];
            w.dres[l][i] = static_cast<float>(Cm[row][col] + s);
          }
        }
      });
  Warp& w = S->cur->cta->warps[S->cur->tid / 32];
  for (int i = 0; i < 4; ++i) d[i] = w.dres[S->cur->tid & 31][i];
}

inline void mbar_init(saddr_t bar, uint32_t count) {
  using namespace emu;
  Cta* c = S->cur->cta;
  if ((bar & 7) != 0 || !c->contains(bar, 8)) fail("mbarrier.init: not an 8-byte aligned address of this CTA");
  MBar m;
  m.count = m.pending = count;
  c->mbars[bar] = m;
}
inline void fence_mbar_init() {}
inline void mbar_arrive_expect_tx(saddr_t bar, uint32_t bytes) {
  using namespace emu;
  if (!S->cur->cta->contains(bar, 8)) fail("mbarrier.arrive.expect_tx: not this CTA's mbarrier");
  MBar* m = mbar_at(bar, "mbarrier.arrive.expect_tx");
  if (m->pending == 0) fail("mbarrier.arrive.expect_tx: more arrivals than the phase expects");
  m->tx += bytes;
  m->pending--;
  mbar_check_complete(m);
}
inline bool mbar_try_wait(saddr_t bar, uint32_t parity) {
  using namespace emu;
  if (!S->cur->cta->contains(bar, 8)) fail("mbarrier.try_wait: not this CTA's mbarrier");
  MBar* m = mbar_at(bar, "mbarrier.try_wait");
  if ((m->phase & 1u) != (parity & 1u)) {
    maybe_yield();
    return true;
  }
  S->waits_blocked++;
  m->waiting.push_back(S->cur);
  block("mbarrier wait");
  return (m->phase & 1u) != (parity & 1u);
}
inline void bulk_copy_to_peer(saddr_t dst, saddr_t src, uint32_t bytes, saddr_t bar) {
  using namespace emu;
  Cta* me = S->cur->cta;
  if (bytes == 0 || (bytes & 15) != 0 || (dst & 15) != 0 || (src & 15) != 0)
    fail("cp.async.bulk: size and addresses must be multiples of 16");
  if (!me->contains(src, bytes)) fail("cp.async.bulk: source outside this CTA's shared memory");
  Cta* to = cta_of(dst, bytes);
  if (to == nullptr) fail("cp.async.bulk: destination outside the cluster's shared memory");
  if (cta_of(bar, 8) != to) fail("cp.async.bulk: the mbarrier is not in the destination CTA");
  (void)mbar_at(bar, "cp.async.bulk");
  const uintptr_t tb = reinterpret_cast<uintptr_t>(to->smem);
  for (uint32_t o = 0; o < bytes; o += 16)
    if (to->pending[(dst + o - tb) / 16]++ != 0)
      fail("cp.async.bulk: the destination is already being written by a copy in flight (slot reused too early)");
  S->copies.push_back(Copy{dst, src, bar, bytes, me, to});
  if (S->copy_mode == kCopyEager) execute_copy(S->copies.size() - 1);
  maybe_yield();
}
inline void fence_proxy_async() {}
inline void cluster_arrive() {
  using namespace emu;
  Fiber* f = S->cur;
  if (f->cl_arrived) fail("barrier.cluster.arrive twice without a wait");
  f->cl_arrived = true;
  f->cl_gen = S->cl_gen;
  if (++S->cl_arrived == S->nthreads) {
    S->cl_arrived = 0;
    S->cl_gen++;
    for (Fiber* o : S->cl_waiting) wake(o);
    S->cl_waiting.clear();
  }
}
inline void cluster_wait() {
  using namespace emu;
  Fiber* f = S->cur;
  if (!f->cl_arrived) fail("barrier.cluster.wait without an arrive");
  while (S->cl_gen == f->cl_gen) {
    S->cl_waiting.push_back(f);
    block("cluster barrier");
  }
  f->cl_arrived = false;
}
inline long long wall_clock() { return 0; }
[[noreturn]] inline void watchdog_trap() { emu::fail("mbarrier watchdog fired"); }

}  // namespace c2
}  // namespace cuda
}  // namespace fused_rnn

#define FUSED_RNN_EMULATE 1
#include "cluster2_kernel.cuh"

using namespace fused_rnn::cuda::c2;

namespace {

constexpr size_t kStack = 128 * 1024;
constexpr int kSms = 132;                // H100/H200
constexpr int kSmemOptin = 227 * 1024;   // cudaDevAttrMaxSharedMemoryPerBlockOptin on H100/H200

// Runs one kernel launch: every cluster (batch tile) in turn, each with all its CTAs' threads as fibers.
template <typename T, bool kBwd>
int run_launch(Args<T> a, const Plan& pl, int policy, unsigned long long seed, std::string* err) {
  a.plan = pl;
#ifdef C2EMU_CLASS1_ONLY
  // The mutation tests' builds: only the (1, 2) tile class their cases run on (a third of the kernels to compile).
  if (class_mt(pl.mt_n, static_cast<int>(sizeof(T))) != 1) {
    *err = "emulator built with C2EMU_CLASS1_ONLY: tile class (1, 2) only";
    return -1;
  }
  const KernelFn<T> kern =
      pl.BT == 8 ? elman_cluster2_kernel<T, 1, 2, 1, kBwd> : elman_cluster2_kernel<T, 1, 2, 2, kBwd>;
#else
  const KernelFn<T> kern = pick_kernel<T, kBwd>(pl.mt_n, pl.BT / 8);
#endif
  for (int tile = 0; tile < pl.ntiles; ++tile) {
    emu::Sched s;
    emu::S = &s;
    s.rng.seed(seed * 1000003ull + static_cast<unsigned long long>(tile));
    s.copy_mode = static_cast<emu::CopyMode>(policy % 3);
    s.pick_mode = static_cast<emu::PickMode>((policy / 3) % 2);
    s.body = [&] { kern(a); };
    s.nthreads = kThreads * pl.C;
    s.limit = 4000000ull + 200000ull * static_cast<unsigned long long>(a.T_ + 2) * pl.C * (1 + pl.kt_n * pl.mt_n);
    for (int r = 0; r < pl.C; ++r) {
      auto c = std::make_unique<emu::Cta>();
      c->rank = r;
      c->bidx.x = static_cast<unsigned>(r);
      c->bidx.y = static_cast<unsigned>(tile);
      c->size = static_cast<size_t>(pl.smem + 127) / 128 * 128;
      c->smem = static_cast<unsigned char*>(std::aligned_alloc(128, c->size));
      std::memset(c->smem, 0xFF, c->size);
      c->pending.assign(c->size / 16, 0);
      s.ctas.push_back(std::move(c));
      s.prio.push_back(r);
    }
    std::shuffle(s.prio.begin(), s.prio.end(), s.rng);
    for (int r = 0; r < pl.C; ++r)
      for (int t = 0; t < kThreads; ++t) {
        auto f = std::make_unique<emu::Fiber>();
        f->cta = s.ctas[r].get();
        f->tid = t;
        f->tidx.x = static_cast<unsigned>(t);
        f->map_size = kStack + 4096;
        void* m =
            mmap(nullptr, f->map_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) {
          *err = "emulator: cannot map a fiber stack";
          return -1;
        }
        f->map = static_cast<unsigned char*>(m);
        mprotect(f->map, 4096, PROT_NONE);  // guard page: a stack overflow faults instead of corrupting memory
        getcontext(&f->ctx);
        f->ctx.uc_stack.ss_sp = f->map + 4096;
        f->ctx.uc_stack.ss_size = kStack;
        f->ctx.uc_link = nullptr;
        makecontext(&f->ctx, emu::fiber_main, 0);
        f->cta->runq.push_back(f.get());
        s.fibers.push_back(std::move(f));
      }
    const bool ok = emu::run_all();
    if (!ok) *err = "cluster (batch tile " + std::to_string(tile) + "): " + s.err;
    for (auto& f : s.fibers) munmap(f->map, f->map_size);
    for (auto& c : s.ctas) std::free(c->smem);
    emu::S = nullptr;
    if (!ok) return -1;
  }
  return 1;
}

bool plan_for(int H, int B, bool bwd, int elem, int force_mt, int force_nt, Plan* pl) {
  Plan cand[4];
  if (plan_candidates(H, B, bwd, elem, kSms, kSmemOptin, force_mt, force_nt, cand) == 0) return false;
  *pl = cand[0];
  return true;
}

void put_msg(const std::string& e, char* msg, int msglen) {
  if (msg != nullptr && msglen > 0) std::snprintf(msg, static_cast<size_t>(msglen), "%s", e.c_str());
}

template <typename T>
int fwd_typed(const void* P, const void* h0, const void* w, const int64_t* L, void* Y, void* hn, int Tn, int B, int H,
              int rev, int act, int force_mt, int force_nt, int policy, unsigned long long seed, char* msg,
              int msglen) {
  Plan pl;
  if (!plan_for(H, B, false, static_cast<int>(sizeof(T)), force_mt, force_nt, &pl)) return 0;
  Args<T> a{};
  a.P = static_cast<const T*>(P);
  a.h0 = static_cast<const T*>(h0);
  a.Y = static_cast<T*>(Y);
  a.h_n = static_cast<T*>(hn);
  a.w = static_cast<const T*>(w);
  a.lengths = L;
  a.T_ = Tn;
  a.B = B;
  a.H = H;
  a.reverse = rev != 0;
  a.act = act;
  std::string err;
  const int r = run_launch<T, false>(a, pl, policy, seed, &err);
  put_msg(err, msg, msglen);
  return r;
}

template <typename T>
int bwd_typed(const void* dY, const void* dhn, const void* Ys, const void* w, const int64_t* L, void* dA, void* dh0,
              int Tn, int B, int H, int rev, int act, int force_mt, int force_nt, int policy, unsigned long long seed,
              char* msg, int msglen) {
  Plan pl;
  if (!plan_for(H, B, true, static_cast<int>(sizeof(T)), force_mt, force_nt, &pl)) return 0;
  Args<T> a{};
  a.dY = static_cast<const T*>(dY);
  a.dh_n = static_cast<const T*>(dhn);
  a.Ysaved = static_cast<const T*>(Ys);
  a.dA = static_cast<T*>(dA);
  a.dh0 = static_cast<T*>(dh0);
  a.w = static_cast<const T*>(w);
  a.lengths = L;
  a.T_ = Tn;
  a.B = B;
  a.H = H;
  a.reverse = rev != 0;
  a.act = act;
  std::string err;
  const int r = run_launch<T, true>(a, pl, policy, seed, &err);
  put_msg(err, msg, msglen);
  return r;
}

}  // namespace

// dt: 2 fp16, 3 bf16 (the codes of emulate.cpp), 4 fp32 with allow_tf32; anything else (0 = fp32 IEEE) is refused
// like the launcher refuses it.
// policy = copy mode (0 random, 1 lazy, 2 eager) + 3 * pick mode (0 random fibers, 1 CTAs in a seeded priority).
// Returns 1 when it ran, 0 when the tier refuses the shape (the dispatcher would run fallback), -1 on an emulation
// error (protocol violation, deadlock, bad address), described in msg.
// C2EMU_ONLY_DT=3 or 4 (the mutation tests' builds): that dtype only, a third of the kernel instantiations to compile.
#if defined(C2EMU_ONLY_DT)
#define C2EMU_DT(code) (C2EMU_ONLY_DT == (code))
#else
#define C2EMU_DT(code) 1
#endif
extern "C" int c2emu_fwd(int dt, const void* P, const void* h0, const void* w, const int64_t* L, void* Y, void* hn,
                         int T, int B, int H, int rev, int act, int force_mt, int force_nt, int policy,
                         unsigned long long seed, char* msg, int msglen) {
#if C2EMU_DT(2)
  if (dt == 2)
    return fwd_typed<__half>(P, h0, w, L, Y, hn, T, B, H, rev, act, force_mt, force_nt, policy, seed, msg, msglen);
#endif
#if C2EMU_DT(3)
  if (dt == 3)
    return fwd_typed<__nv_bfloat16>(P, h0, w, L, Y, hn, T, B, H, rev, act, force_mt, force_nt, policy, seed, msg,
                                    msglen);
#endif
#if C2EMU_DT(4)
  if (dt == 4)
    return fwd_typed<float>(P, h0, w, L, Y, hn, T, B, H, rev, act, force_mt, force_nt, policy, seed, msg, msglen);
#endif
  return 0;
}
extern "C" int c2emu_bwd(int dt, const void* dY, const void* dhn, const void* Ys, const void* w, const int64_t* L,
                         void* dA, void* dh0, int T, int B, int H, int rev, int act, int force_mt, int force_nt,
                         int policy, unsigned long long seed, char* msg, int msglen) {
#if C2EMU_DT(2)
  if (dt == 2)
    return bwd_typed<__half>(dY, dhn, Ys, w, L, dA, dh0, T, B, H, rev, act, force_mt, force_nt, policy, seed, msg,
                             msglen);
#endif
#if C2EMU_DT(3)
  if (dt == 3)
    return bwd_typed<__nv_bfloat16>(dY, dhn, Ys, w, L, dA, dh0, T, B, H, rev, act, force_mt, force_nt, policy, seed,
                                    msg, msglen);
#endif
#if C2EMU_DT(4)
  if (dt == 4)
    return bwd_typed<float>(dY, dhn, Ys, w, L, dA, dh0, T, B, H, rev, act, force_mt, force_nt, policy, seed, msg,
                            msglen);
#endif
  return 0;
}
// The plan the launcher would try first (elem 2: fp16 / bf16, 4: TF32): out = {C, mt_n, kt_n, BT, smem, ntiles,
// mma_warps}. Returns 0 if none.
extern "C" int c2emu_plan(int H, int B, int bwd, int elem, int force_mt, int force_nt, int* out) {
  Plan p;
  if (!plan_for(H, B, bwd != 0, elem, force_mt, force_nt, &p)) return 0;
  const int v[7] = {p.C, p.mt_n, p.kt_n, p.BT, p.smem, p.ntiles, p.mma_warps};
  for (int i = 0; i < 7; ++i) out[i] = v[i];
  return 1;
}
