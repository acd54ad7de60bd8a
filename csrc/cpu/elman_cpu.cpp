// fused_rnn::elman_fwd / elman_bwd for the CPU dispatch key: input checks, dtype handling, threads, and the choice
// of instruction set; the time loops themselves are in elman_cpu_kernels.inc (compiled per ISA).
//
// Contract (docs/design.md, fused_rnn/backends/reference.py is the oracle). Shapes: T time, B batch, H hidden.
//   elman_fwd(P [T,B,H], h0 [B,H], w_hh [H,H], lengths [B] int64 | None, reverse, nonlinearity, tier, allow_tf32)
//     -> (Y [T,B,H], h_n [B,H])
//   elman_bwd(dY [T,B,H], dh_n [B,H], Y [T,B,H], w_hh [H,H], lengths, reverse, nonlinearity, tier, allow_tf32)
//     -> (dA [T,B,H], dh0 [B,H])
// fp32 and fp64 run natively; fp16 and bf16 are upcast to fp32 inside the op, h_t is rounded to the storage dtype
// at every step (as the reference does), the backward carries its gradient in fp32 and rounds dA only when storing.
//
// bf16 with AVX512-BF16 (kernel set "avx512bf16", issue 19): P, h0, Y, dY, dA stay bf16 and W_hh is packed per call
// in bf16 pairs for vdpbf16ps (elman_cpu_kernels.inc, "bf16 forward"); the products are exact and accumulate in
// fp32, h_t is rounded to bf16 as it is stored, the backward's carry is fp32. The one departure from the reference:
// the backward's matvec multiplies the *stored* bf16 dA_t by W_hh (vdpbf16ps takes bf16 operands; the forward
// likewise multiplies the stored state), where the reference multiplies the unrounded fp32 dA_t. Why that is
// acceptable under the precision policy: the carry still accumulates in fp32 and is never rounded between steps
// (nn.RNN's bf16 autograd rounds it to bf16 every step), and the error stays within DESIGN.md's tolerance rule with
// room: emulating it in PyTorch over 60 cases (T 32..200, B 1..18, H 17..1024, tanh/relu, 12 seeds) the worst error
// vs the fp64 oracle was 0.50 of the bound 2 × reference error + 2 eps (2026-12-01); tests/test_cpu_bf16.py checks
// the kernel itself. The fp32 alternative (W_hh widened to fp32, fp32 FMA) runs at the fp32 kernels' speed, half of
// vdpbf16ps's.
// Speed, this 2-core AMD EPYC (Zen 5, AVX512-BF16, no AMX), one thread, thread CPU time, medians of 3 alternating
// processes × 7 rounds, machine shared (load average 20-37), 2026-12-01, µs per step, before (fp32 kernels on
// converted data) -> avx512bf16, forward / backward:
//   B=1  H=256:   3.4 -> 1.5 /   3.1 -> 1.4       B=1  H=1024:  95 -> 29  /  66 -> 28
//   B=4  H=512:  23.9 -> 12.4 / 22.7 -> 11.3      B=16 H=256:  30.7 -> 14.1 / 26.7 -> 11.0
//   B=16 H=1024:  389 -> 206 /  502 -> 189        B=64 H=512:   401 -> 214 /  384 -> 192
// On Intel cores the set is "avx512bf16fma" (elman_cpu_avx512bf16fma.cpp): the same layout and numerics contract, the
// pairs widened in registers and multiplied with fp32 FMAs, because Intel's vdpbf16ps issues at a quarter of the FMA
// rate (Emerald Rapids; best_kernels). Its recurrence ran 1.01-1.56x the vdpbf16ps set's there, 2 threads, 2026-12-07,
// µs per step fwd: B1 H1024 16.4 -> 16.2, B4 H1024 51.6 -> 37.0, B16 H1024 216 -> 163, B64 H1024 809 -> 562.
// fp16 has no such instruction here (no AVX512-FP16): it runs the fp32 kernels on converted data, with the
// per-step rounding vectorised (F16C) instead of a scalar c10::Half conversion. AMX (tdpbf16ps, set "avx512amx",
// elman_cpu_avx512amx.cpp) is built and forced only: no AMX machine has run it yet, so best_kernels() never returns
// it (docs/design.md, "CPU bf16/fp16").
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(__linux__) && (defined(__x86_64__) || defined(_M_X64))
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <c10/util/ParallelGuard.h>
#include <torch/library.h>

#include "../fused_rnn.h"
#include "elman_cpu.h"

namespace fused_rnn {
namespace cpu {

// ---- waiting ----------------------------------------------------------------------------------------------------
// Spin (a partner a few µs behind is the common case on an idle machine), then yield, then sleep in short naps -- on
// a shared machine the partner may be descheduled for a whole time slice, and a pure spin would then hold the core
// it needs.
namespace {
constexpr int64_t kSpinNs = 50000;     // 50 µs of pause-spinning
constexpr int64_t kYieldNs = 1000000;  // then sched_yield up to 1 ms, then 50 µs sleeps

inline int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

class Backoff {
 public:
  Backoff() : t0_(now_ns()) {}
  void wait() {
    if ((++n_ & 15) == 0) elapsed_ = now_ns() - t0_;
    if (elapsed_ < kSpinNs) {
      cpu_relax();
    } else if (elapsed_ < kYieldNs) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }
  int64_t elapsed_ns() const { return now_ns() - t0_; }

 private:
  int64_t n_ = 0, t0_, elapsed_ = 0;
};

// ---- who takes part in a hidden split --------------------------------------------------------------------------
// at::parallel_for(0, n, 1, f) may call f fewer than n times (nested, or one thread: once, inline, for all n) and,
// with a thread pool shared by several callers, may start some calls late. So the workers are counted where they
// arrive: each call of f joins the gate with the number of items it covers; the gate closes when all n items are
// covered, or when `timeout_ns` has passed since the first arrival. The workers that joined before the close split
// the work; a call arriving after it does nothing. Every worker that takes part is a running thread that has entered
// the loop, and a round (below) never waits for a worker that holds no claimed panel: no deadlock, whatever the
// threading backend, nesting or load (a slow start costs at most the timeout, then the work runs on fewer threads,
// with bitwise the same results).
class Gate {
 public:
  // Returns this worker's index (0-based, in arrival order) and sets *nparts; -1 if the gate had already closed.
  int join(int64_t items, int64_t total, int64_t timeout_ns, int* nparts) {
    uint64_t w = word_.load(std::memory_order_acquire);
    int idx;
    for (;;) {
      if (w & kClosed) return -1;
      if (word_.compare_exchange_weak(w, w + (static_cast<uint64_t>(items) << 32) + 1, std::memory_order_acq_rel)) {
        idx = static_cast<int>(w & 0xffffffffu);
        break;
      }
    }
    Backoff backoff;
    for (;;) {
      w = word_.load(std::memory_order_acquire);
      if (w & kClosed) break;
      const int64_t covered = static_cast<int64_t>((w >> 32) & 0x7fffffffu);
      if (covered >= total || backoff.elapsed_ns() > timeout_ns) {
        if (word_.compare_exchange_strong(w, w | kClosed, std::memory_order_acq_rel)) {
          w |= kClosed;
          break;
        }
        continue;
      }
      backoff.wait();
    }
    *nparts = static_cast<int>(w & 0xffffffffu);
    return idx;
  }
  // The number of workers, once closed (0 before).
  int nparts() const {
    const uint64_t w = word_.load(std::memory_order_acquire);
    return (w & kClosed) ? static_cast<int>(w & 0xffffffffu) : 0;
  }

 private:
  static constexpr uint64_t kClosed = 1ull << 63;
  alignas(64) std::atomic<uint64_t> word_{0};  // bit 63 closed | bits 32-62 items covered | bits 0-31 workers
};

}  // namespace

// What a hidden-split call reports of its takeovers (cpu_last_run: "takeover=N rejoin=M").
struct TeamStats {
  int takeovers = 0;
  int rejoins = 0;
};

// ---- the rounds of a hidden split ------------------------------------------------------------------------------
// Worker i of P owns the panels [npanels·i/P, npanels·(i+1)/P) and claims them front to back, one `unit` at a time,
// with a compare-and-swap on its own cache line; a worker whose own panels are gone takes what is left of another's
// from the back -- at once when the other is 2+ units behind, after kStealGraceNs of waiting otherwise. Each worker
// adds the panels it finished to one shared counter before it waits; the round is complete when the counter reaches
// npanels·(round + 1). So on an idle machine every worker computes exactly its own panels each step (its share of
// W_hh stays in its core's cache), and when the OS deschedules a worker, the others carry on with its panels
// instead of waiting a time slice at every step (a fixed per-step barrier measured 3 ms/step against 0.7 ms serial
// at B=4, H=1024 with the machine loaded ~10 on 2 cores, 2026-12-01). A worker descheduled while it holds a claimed
// panel still delays that round.
// If a round waits longer than kSoloAfterNs (a worker holding a panel is descheduled), the waiting worker takes the
// call over: it runs alone, and the others, as they come back, follow the rounds without claiming (in 50 µs naps) --
// for a lease of kSoloLeaseNs, doubled at each takeover of the same call, after which the solo worker hands the call
// back and everyone claims again. The result bits do not depend on who computes what. On the 2-core Zen 5 VM, waits
// of 50-250 µs happened with nothing else of ours running: at a 50 µs threshold 22 of 60 calls at B=1 H=1024 went
// solo; at 250 µs, 1 of 60 (median 26.8 µs/step vs 33.7), 2026-12-01. A real time-slice loss lasts milliseconds, so
// 250 µs still catches it. Why a lease rather than the rest of the call (stop 33): on the 2-core Intel Emerald Rapids
// VM, quiet, 12 of 24 calls at T=2800 B=1 H=1024 fp32 were taken over and ran 130-430 ms against 113-150 ms (alone,
// one core streams all of W_hh, 4 MB, from L3 where two cores keep half each in their 2 MB L2s), 2026-12-07; a
// descheduled vCPU there comes back within a few ms, and the doubling still leaves a call alone on a machine whose
// cores are truly taken.
namespace {
constexpr int64_t kStealGraceNs = 5000;
constexpr int64_t kSoloAfterNs = 250000;
constexpr int64_t kSoloLeaseNs = 1000000;
}  // namespace

struct Team {
  Team(int64_t npanels_, int64_t max_workers) : npanels(npanels_), ranges(new Range[max_workers]) {}

  struct alignas(64) Range {
    std::atomic<uint64_t> word{0};  // bits 32-63: round + 1 (0: never claimed) | 16-31: lo | 0-15: hi
    int64_t pending = 0;            // panels the owner finished and has not added to `done` yet
    bool followed = false;          // the owner followed a holder and has not claimed since
  };

  // Claims up to `unit` panels of worker v's range in `round` (from the front if `front`, else from the back) when
  // at least min_avail are left.
  bool claim(int v, int P, int64_t round, int64_t unit, bool front, int64_t min_avail, int64_t* a, int64_t* b) {
    Range& rg = ranges[v];
    const uint64_t tag = static_cast<uint64_t>(round + 1);
    uint64_t w = rg.word.load(std::memory_order_acquire);
    for (;;) {
      const uint64_t wr = w >> 32;
      if (wr > tag) return false;  // a later round has begun: this one is complete
      int64_t lo, hi;
      if (wr < tag) {  // untouched in this round: the owner's whole range
        lo = npanels * v / P;
        hi = npanels * (v + 1) / P;
      } else {
        lo = static_cast<int64_t>((w >> 16) & 0xffffu);
        hi = static_cast<int64_t>(w & 0xffffu);
      }
      if (hi - lo < std::max<int64_t>(1, min_avail)) return false;
      const int64_t take = std::min(unit, hi - lo);
      int64_t nlo = lo, nhi = hi;
      if (front) {
        *a = lo;
        *b = nlo = lo + take;
      } else {
        *a = nhi = hi - take;
        *b = hi;
      }
      const uint64_t nw = (tag << 32) | (static_cast<uint64_t>(nlo) << 16) | static_cast<uint64_t>(nhi);
      if (rg.word.compare_exchange_weak(w, nw, std::memory_order_acq_rel, std::memory_order_acquire)) return true;
    }
  }

  bool steal(int self, int P, int64_t round, int64_t unit, int64_t min_avail, int64_t* a, int64_t* b) {
    for (int k = 1; k < P; ++k) {
      if (claim((self + k) % P, P, round, unit, false, min_avail, a, b)) return true;
    }
    return false;
  }

  // Takes the call over for this worker if no one holds it; returns the holder.
  int take_over(int worker) {
    int expected = -1;
    if (!solo.compare_exchange_strong(expected, worker, std::memory_order_acq_rel)) return expected;
    solo_since_ns = now_ns();  // read and written by the holder only (the CAS orders it after the last holder)
    takeovers.fetch_add(1, std::memory_order_relaxed);
    return worker;
  }

  // The holder of the call (-1: none); when it is this worker and its lease has run out, the call is handed back
  // first (and the next lease doubles).
  int holder(int worker) {
    const int s = solo.load(std::memory_order_acquire);
    if (s != worker || now_ns() - solo_since_ns < lease_ns) return s;
    lease_ns *= 2;
    solo.store(-1, std::memory_order_release);
    return -1;
  }

  // Another worker holds the call: wait (not claiming, in naps: this worker was just descheduled, its core may be
  // wanted elsewhere) until `round` is complete (false) or the call is handed back (true: claim in this round).
  bool follow(int64_t round) {
    const int64_t target = npanels * (round + 1);
    for (;;) {
      if (done.load(std::memory_order_acquire) >= target) return false;
      if (solo.load(std::memory_order_acquire) < 0) return true;
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  const int64_t npanels;  // < 2^16 (the claim word's fields); larger W_hh runs serially
  Gate gate;
  std::atomic<int> solo{-1};  // >= 0: the worker that holds the call (runs it alone), the others follow
  int64_t solo_since_ns = 0;  // holder only
  int64_t lease_ns = kSoloLeaseNs;
  std::atomic<int> takeovers{0};  // how many times a worker took the call over (cpu_last_run's "takeover=")
  std::atomic<int> rejoins{0};    // first claims of a worker after it followed a holder ("rejoin=")
  int stall_worker = -1;      // test hook: this worker sleeps 1 ms in round 3 holding a claimed panel
  alignas(64) std::atomic<int64_t> done{0};  // panels completed, all rounds together
  std::unique_ptr<Range[]> ranges;
};

bool team_next(Team* team, int worker, int64_t round, int unit, int64_t finished, int64_t* a, int64_t* b) {
  const int P = team->gate.nparts();
  Team::Range& me = team->ranges[worker];
  me.pending += finished;
  auto flush = [&] {  // count what this worker finished: the others may be waiting for it
    if (me.pending > 0) team->done.fetch_add(me.pending, std::memory_order_release);
    me.pending = 0;
  };
  const int64_t target = team->npanels * (round + 1);
  for (;;) {
    int solo = team->holder(worker);
    if (solo >= 0 && solo != worker) {  // another worker holds the call: follow it until the round ends
      flush();
      me.followed = true;
      if (!team->follow(round)) return false;
      continue;  // handed back within this round: claim again
    }
    if (team->claim(worker, P, round, unit, true, 1, a, b)) {
      if (me.followed) {
        me.followed = false;
        team->rejoins.fetch_add(1, std::memory_order_relaxed);
      }
      if (worker == team->stall_worker && round == 3) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      return true;
    }
    flush();
    if (team->steal(worker, P, round, unit, solo == worker ? 1 : 2 * unit, a, b)) return true;
    Backoff backoff;
    for (;;) {
      if (team->done.load(std::memory_order_acquire) >= target) return false;
      const int64_t waited = backoff.elapsed_ns();
      if ((solo == worker || waited > kStealGraceNs) && team->steal(worker, P, round, unit, 1, a, b)) return true;
      if (solo < 0 && waited > kSoloAfterNs) {
        // A worker we wait for is not running (it holds a claimed panel): the OS has other work for this machine's
        // cores. Run the call alone for a while rather than wait for a descheduled worker at every step.
        solo = team->take_over(worker);
      }
      if (solo >= 0 && solo != worker) break;  // another worker took the call over meanwhile: follow it
      backoff.wait();
    }
  }
}

namespace {

// ---- instruction-set choice (run time: the binary runs on any x86-64 CPU) -------------------------------------
bool cpu_has_avx2() {
#if defined(FUSED_RNN_CPU_AVX2)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

bool cpu_has_avx512() {
#if defined(FUSED_RNN_CPU_AVX512)
  __builtin_cpu_init();
  return cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#else
  return false;
#endif
}

// cpuid leaf 0's vendor string is "GenuineIntel".
bool cpu_is_intel() {
#if defined(__linux__) && (defined(__x86_64__) || defined(_M_X64))
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return false;
  return b == 0x756e6547u && d == 0x49656e69u && c == 0x6c65746eu;  // "Genu" "ineI" "ntel"
#else
  return false;
#endif
}

bool cpu_has_avx512bf16() {
#if defined(FUSED_RNN_CPU_AVX512BF16)
  __builtin_cpu_init();
  return cpu_has_avx512() && __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

// AMX for the bf16 tiles: "" when this process can run the avx512amx set, else why not. Three conditions: cpuid
// leaf 7 lists AMX-TILE and AMX-BF16 (on top of avx512bf16's flags); the OS enables the tile state in XCR0 (bits 17
// TILECFG, 18 TILEDATA); and Linux (>= 5.16) grants this process the large tile data state on request
// (arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)) -- without the grant the first tile instruction raises
// SIGILL. The request is process-wide and made once, by the first caller, before any worker uses a tile.
std::string amx_unavailable() {
#if defined(FUSED_RNN_CPU_AMX) && defined(__linux__)
  static const std::string why = []() -> std::string {
    if (!cpu_has_avx512bf16()) return "no AVX512-BF16 (or no AVX-512 F/BW/VL/DQ)";
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d) == 0) return "cpuid has no leaf 7";
    if (((d >> 24) & 1u) == 0 || ((d >> 22) & 1u) == 0) return "no AMX-TILE / AMX-BF16 (cpuid leaf 7)";
    if (__get_cpuid(1, &a, &b, &c, &d) == 0 || ((c >> 27) & 1u) == 0) return "no OSXSAVE";
    unsigned lo = 0, hi = 0;
    __asm__ __volatile__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if (((lo >> 17) & 3u) != 3u) return "the OS does not enable the AMX tile state (XCR0 bits 17-18)";
    constexpr long kGetPerm = 0x1022, kReqPerm = 0x1023;  // ARCH_GET_XCOMP_PERM, ARCH_REQ_XCOMP_PERM
    constexpr long kXtileData = 18;                       // XFEATURE_XTILEDATA
    if (syscall(SYS_arch_prctl, kReqPerm, kXtileData) != 0) {
      return "the OS refused the AMX tile data state (arch_prctl(ARCH_REQ_XCOMP_PERM) failed)";
    }
    unsigned long perm = 0;
    if (syscall(SYS_arch_prctl, kGetPerm, &perm) != 0 || ((perm >> kXtileData) & 1ul) == 0) {
      return "the AMX tile data permission is not set after the request (arch_prctl(ARCH_GET_XCOMP_PERM))";
    }
    return "";
  }();
  return why;
#else
  return "this build has no AMX kernels (needs GCC >= 11 on x86-64 Linux)";
#endif
}

// The best set this CPU runs, capped by ATEN_CPU_CAPABILITY when set (torch's own switch, read once: "default"
// -> generic, "avx2" -> at most AVX2), so one variable moves torch's kernels and these together.
const KernelTable* best_kernels() {
  const char* cap = std::getenv("ATEN_CPU_CAPABILITY");
  const std::string c = cap ? cap : "";
  const bool allow512 = c.empty() || c == "avx512";
  const bool allow2 = allow512 || c == "avx2";
#if defined(FUSED_RNN_CPU_AVX512BF16)
  // Intel's vdpbf16ps is the slower way to the bf16 products (elman_cpu_avx512bf16fma.cpp: 1.3-1.6 G/s per core against
  // 6.1-6.5 G/s for fp32 FMAs on Emerald Rapids; the fma set's recurrence ran 1.0-1.6x the dot set's there), AMD's
  // the faster (Zen 5: 441 GFLOP/s of vdpbf16ps against 245 of fp32 FMA per core), so the vendor picks the set.
  if (allow512 && cpu_has_avx512bf16()) return cpu_is_intel() ? &avx512bf16fma_kernels() : &avx512bf16_kernels();
#endif
#if defined(FUSED_RNN_CPU_AVX512)
  if (allow512 && cpu_has_avx512()) return &avx512_kernels();
#endif
#if defined(FUSED_RNN_CPU_AVX2)
  if (allow2 && cpu_has_avx2()) return &avx2_kernels();
#endif
  (void)allow2;
  return &generic_kernels();
}

std::atomic<const KernelTable*>& active_kernels() {
  static std::atomic<const KernelTable*> k{best_kernels()};
  return k;
}

// Test hook: "" -> the active kernel set's name; "auto" | "generic" | "avx2" | "avx512" | "avx512bf16" |
// "avx512bf16fma" | "avx512amx" | "avx512amx_emu" -> switch (error if this CPU or build cannot run it) and return the
// new name. Lets the tests run every variant the CPU has.
std::string cpu_isa_op(const std::string& request) {
  if (request.empty()) return active_kernels().load()->name;
  const KernelTable* k = nullptr;
  if (request == "auto") {
    k = best_kernels();
  } else if (request == "generic") {
    k = &generic_kernels();
  } else if (request == "avx2") {
#if defined(FUSED_RNN_CPU_AVX2)
    TORCH_CHECK(cpu_has_avx2(), "fused_rnn.cpu_isa: this CPU has no AVX2+FMA");
    k = &avx2_kernels();
#else
    TORCH_CHECK(false, "fused_rnn.cpu_isa: this build has no AVX2 kernels");
#endif
  } else if (request == "avx512") {
#if defined(FUSED_RNN_CPU_AVX512)
    TORCH_CHECK(cpu_has_avx512(), "fused_rnn.cpu_isa: this CPU has no AVX-512 F/BW/VL/DQ");
    k = &avx512_kernels();
#else
    TORCH_CHECK(false, "fused_rnn.cpu_isa: this build has no AVX-512 kernels");
#endif
  } else if (request == "avx512bf16") {
#if defined(FUSED_RNN_CPU_AVX512BF16)
    TORCH_CHECK(cpu_has_avx512bf16(), "fused_rnn.cpu_isa: this CPU has no AVX512-BF16 (or no AVX-512 F/BW/VL/DQ)");
    k = &avx512bf16_kernels();
#else
    TORCH_CHECK(false, "fused_rnn.cpu_isa: this build has no AVX512-BF16 kernels");
#endif
  } else if (request == "avx512bf16fma") {
#if defined(FUSED_RNN_CPU_AVX512BF16)
    TORCH_CHECK(cpu_has_avx512bf16(), "fused_rnn.cpu_isa: this CPU has no AVX512-BF16 (or no AVX-512 F/BW/VL/DQ)");
    k = &avx512bf16fma_kernels();
#else
    TORCH_CHECK(false, "fused_rnn.cpu_isa: this build has no AVX512-BF16 kernels");
#endif
  } else if (request == "avx512amx") {
    // Never chosen by "auto": no AMX machine has run it yet (README, status table).
    const std::string why = amx_unavailable();
    TORCH_CHECK(why.empty(), "fused_rnn.cpu_isa: cannot run avx512amx: ", why);
#if defined(FUSED_RNN_CPU_AMX)
    k = &avx512amx_kernels();
#endif
  } else if (request == "avx512amx_emu") {
#if defined(FUSED_RNN_CPU_AVX512BF16)
    TORCH_CHECK(cpu_has_avx512bf16(), "fused_rnn.cpu_isa: this CPU has no AVX512-BF16 (or no AVX-512 F/BW/VL/DQ)");
    k = &avx512amx_emu_kernels();
#else
    TORCH_CHECK(false, "fused_rnn.cpu_isa: this build has no AVX512-BF16 kernels");
#endif
  } else {
    TORCH_CHECK(false, "fused_rnn.cpu_isa: unknown instruction set '", request,
                "' (auto, generic, avx2, avx512, avx512bf16, avx512bf16fma, avx512amx, avx512amx_emu)");
  }
  active_kernels().store(k);
  return k->name;
}

// ---- which loop runs a call ------------------------------------------------------------------------------------
//   serial  one thread, all rows and columns (also whenever we run inside a parallel region or with one thread)
//   hidden  the workers split the result columns (panels of W_hh) step by step (Team: each owns a share, takes
//           over a descheduled one's)
//   batch   the workers split the batch rows, each with all of W_hh, and never wait for each other
//   blas    one BLAS GEMM per step into a [B, H] slice (MKL blocks W and splits the GEMM over its threads)
// serial, hidden and batch run the same per-output summation (elman_cpu_kernels.inc, "Determinism"): bitwise equal
// results for every thread count. blas sums in MKL's order.
enum class Path : int { Auto = 0, Serial, Hidden, Batch, Blas };
const char* path_name(Path p) {
  switch (p) {
    case Path::Serial: return "serial";
    case Path::Hidden: return "hidden";
    case Path::Batch: return "batch";
    case Path::Blas: return "blas";
    default: return "auto";
  }
}

std::atomic<int>& forced_path() {
  static std::atomic<int> v{0};
  return v;
}

// Test hooks for the hidden split (cpu_path "hidden-late" / "hidden-stall"): 1 = the last worker of each call
// starts only once the gate has closed on the others (its timeout passed); 2 = worker 1 sleeps 1 ms in round 3
// while it holds a claimed panel.
std::atomic<int>& test_fault() {
  static std::atomic<int> v{0};
  return v;
}

// Test/benchmark hook: "" -> the forced path ("auto" when none); "auto" | "serial" | "hidden" | "batch" | "blas" ->
// force it for every later call (hidden and batch still run serially where only one thread is available, or where
// the shape leaves a second worker nothing to do). "hidden-late" is "hidden" with the last worker of each call
// arriving after the gate has closed (tests the gate's timeout); "hidden-stall" is "hidden" with worker 1 stopping
// for 1 ms while it holds a panel (tests the take-over).
std::string cpu_path_op(const std::string& request) {
  if (!request.empty()) {
    Path p;
    int fault = 0;
    if (request == "hidden-late" || request == "hidden-stall") {
      p = Path::Hidden;
      fault = request == "hidden-late" ? 1 : 2;
    } else if (request == "auto") {
      p = Path::Auto;
    } else if (request == "serial") {
      p = Path::Serial;
    } else if (request == "hidden") {
      p = Path::Hidden;
    } else if (request == "batch") {
      p = Path::Batch;
    } else if (request == "blas") {
      p = Path::Blas;
    } else {
      TORCH_CHECK(false, "fused_rnn.cpu_path: unknown path '", request, "' (auto, serial, hidden, batch, blas)");
    }
    test_fault().store(fault);
    forced_path().store(static_cast<int>(p));
  }
  const int fault = test_fault().load();
  return std::string(path_name(static_cast<Path>(forced_path().load()))) +
         (fault == 1 ? "-late" : fault == 2 ? "-stall" : "");
}

// What the last elman_fwd / elman_bwd on this thread ran: "isa=<name> path=<path> threads=<workers>".
thread_local std::string t_last_run;
std::string cpu_last_run_op() { return t_last_run; }

// Threads a call may use: 1 inside another parallel region (at::parallel_for runs nested bodies inline, so a
// split there would only add waiting) or when torch is set to one thread.
int64_t usable_threads() {
  if (at::in_parallel_region() || c10::ParallelGuard::is_enabled()) return 1;
  return std::max<int64_t>(1, at::get_num_threads());
}

// ---- the automatic choice -------------------------------------------------------------------------------------
// Never the per-step BLAS path: the own kernels keep results independent of the thread count, and they match or
// beat MKL's per-step GEMM. Single thread, µs per step, own kernel forward (tanh included) / backward vs at::addmm
// (the GEMM nn.RNN runs per step), GMAC/s in brackets -- this 2-core AMD EPYC (Zen 5), AVX-512 build (FMA), thread
// CPU time (immune to the other processes of this shared machine, not to their cache use), 2026-12-01:
//   B=1   H=256:     3.0 /   2.8 (21.9) vs   8.1 ( 8.1)    B=1   H=1024:  85 /  71 (12.3) vs  86 (12.2)
//   B=4   H=1024:   114 /  98 (36.8) vs  361 (11.6)       B=16  H=256:   23 /  21 (45.5) vs  41 (25.8)
//   B=16  H=1024:   359 / 348 (46.7) vs  812 (20.7)       B=64  H=512:  360 / 348 (46.6) vs 365 (46.0)
//   B=256 H=256:    422 / 441 (39.8) vs  345 (48.7)
// Only at B = 256 is MKL's GEMM ahead (~20%); select.py's policy sends B >= 64 to nn.RNN's own kernel anyway, and the
// per-step BLAS path stays available by hand (torch.ops.fused_rnn.cpu_path("blas")).
//
// Splitting a call across threads costs a fork (~10-20 µs) and, for the hidden split, a round per step (a few
// cache-line hand-offs, well under 1 µs on an idle machine); the batch split has no per-step cost but needs rows
// for both workers and reads all of W_hh in each. Op alone, best of 60-80 calls, µs per step, forward / backward,
// 2 threads, this machine loaded (load average 15-60 on 2 cores) but the measuring process at nice -20, so it ran
// nearly undisturbed; 2026-12-01, AVX-512 build (T = 4..64: the forward includes the per-call packing of W_hh):
//                serial        hidden        batch                     serial        hidden        batch
//   B=1  H=128   0.90/0.75     0.62/0.58     -           B=1  H=192   1.86/1.57     1.28/1.20     -
//   B=1  H=256   3.1 /2.8      1.9 /1.8      -           B=1  H=512   16.4/15.6     8.0 /7.1      -
//   B=1  H=1024  156 /99       95  /48       -           B=2  H=128   1.12/0.92     0.88/0.79     -
//   B=4  H=128   1.79/1.44     1.27/1.16     -           B=4  H=512   29.6/26.6     14.9/13.2     -
//   B=4  H=1024  203 /138      89  /61       -           B=8  H=256   13.2/11.2     9.2 /9.6      8.2 /8.1
//   B=8  H=512   61  /44       33  /28       30  /38     B=8  H=1024  297 /207      183 /150      216 /226
//   B=12 H=512   80  /67       46  /45       48  /43     B=16 H=128   6.6 /5.4      3.9 /3.5      3.4 /2.9
//   B=16 H=256   23.4/21.3     12.3/11.3     11.7/10.5   B=16 H=512   100 /92       50  /43       45  /42
//   B=16 H=1024  556 /384      211 /191      205 /186    B=32 H=64    4.3 /3.1      (serial)      2.5 /1.9
//   B=64 H=512   397 /357      197 /177      184 /170    B=256 H=256  371 /330      180 /164      176 /161
// (nn.RNN's forward in the same runs: 7.4 µs/step at B=1 H=128, 54 at B=1 H=512, 191 at B=16 H=512.) So: split
// from ~16k multiply-adds per step and ~1M per call; the hidden split for small batches and for B < 16 at H > 512
// (each worker's share of W_hh stays in its own cache), the batch split from B = 8 at H <= 512 and from B = 16 on.
constexpr int64_t kSplitMinStepWork = 16 * 1024;    // B·H² multiply-adds per step
constexpr int64_t kSplitMinCallWork = 1024 * 1024;  // T·B·H²

//
// On Intel cores the hidden split stays ahead to larger batches while W_hh outgrows half a core's L2: each worker's
// share then stays in its own L2 where the batch split streams all of W_hh from L3 into each core at every step.
// Intel Emerald Rapids VM (2 MB L2 per core), 2 threads, op alone, best of 2 × 5 calls, batch ÷ hidden µs per step,
// fwd / bwd (> 1: the hidden split faster), 2026-12-07:
//   fp32 H=512  (1 MB):   B=8..64 0.75-0.98 (the batch split ahead)
//   fp32 H=768  (2.4 MB): B=8 1.44/1.53  B=16 1.12/1.38  B=32 1.09/1.12  B=48 1.04/1.03  B=64 1.03/1.00
//                         B=128 0.97/0.92
//   fp32 H=1024 (4 MB):   B=16 1.37/1.33  B=32 1.19/1.12  B=48 1.09/1.05  B=64 1.05/1.02  B=128 0.91/0.92
//   fp32 H=1536 (9 MB):   B=16 1.52/1.56  B=32 1.21/1.19  B=48 1.19/1.19  B=128 1.06/0.98
//   bf16 H=512  (0.5 MB): B=8..128 0.76-1.15 (the batch split ahead or even)
//   bf16 H=768  (1.2 MB): B=16 1.27/1.12  B=32 1.22/1.08  B=48 1.04/1.04  B=64 1.11/0.98
//   bf16 H=1024 (2 MB):   B=16 1.25/1.47  B=32 1.19/1.22  B=48 0.98/1.26  B=64 1.15/1.04  B=128 0.91/1.06
// and with the AVX2 kernels forced there (cpu_isa("avx2"), fp32 forward): H=768 B=16 1.28, B=48 1.14; H=1024 B=16
// 1.07, B=32 1.33, B=48 1.14. So there: the hidden split for B < 64 when W_hh's packed bytes exceed half the L2
// (what an Intel client core with AVX2 only is taken to share). On the Zen 5 (1 MB L2) the
// batch split measured even or ahead at B = 16 (table above: H=1024 205/186 vs 211/191, H=512 45/42 vs 50/43), so
// other vendors keep the rule above.
constexpr int64_t kHiddenWideMaxB = 64;

int64_t l2_bytes() {
  static const int64_t v = [] {
    long n = -1;
#if defined(_SC_LEVEL2_CACHE_SIZE)
    n = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
    return n > 0 ? static_cast<int64_t>(n) : int64_t(2) << 20;  // unknown: Emerald Rapids' 2 MB
  }();
  return v;
}

// w_bytes: W_hh's bytes as the kernels read it (H² × 4 for fp32 and for the fp32 kernels on converted half data,
// × 2 for the bf16 sets' pairs, × 8 for fp64).
Path auto_path(int64_t T_, int64_t B, int64_t H, int64_t threads, int64_t npanels, int64_t max_rows,
               int64_t w_bytes) {
  const int64_t step = B * H * H;
  if (threads <= 1 || step < kSplitMinStepWork || T_ * step < kSplitMinCallWork) return Path::Serial;
  // the hidden split's claim words hold panel indices in 16 bits and the round in 32
  const bool hidden_ok = npanels >= 2 && npanels < (1 << 16) && T_ < (int64_t(1) << 31), batch_ok = B > max_rows;
  static const bool intel = cpu_is_intel();
  const bool hidden_wide = intel && B < kHiddenWideMaxB && 2 * w_bytes > l2_bytes();
  const bool batch_better = !hidden_wide && (B >= 16 || (B >= 8 && H <= 512));
  if (batch_ok && (batch_better || !hidden_ok)) return Path::Batch;
  return hidden_ok ? Path::Hidden : Path::Serial;
}

Path choose_path(int64_t T_, int64_t B, int64_t H, int64_t threads, int64_t npanels, int64_t max_rows,
                 int64_t w_bytes) {
  Path p = static_cast<Path>(forced_path().load());
  if (p == Path::Auto) return auto_path(T_, B, H, threads, npanels, max_rows, w_bytes);
  // forced: as asked, or serially where it cannot split
  if (p == Path::Blas) return p;  // BLAS threads itself (and runs single-threaded when nested)
  if (threads <= 1) return Path::Serial;
  if (p == Path::Hidden && (npanels < 2 || npanels >= (1 << 16) || T_ >= (int64_t(1) << 31))) return Path::Serial;
  if (p == Path::Batch && B <= max_rows) return Path::Serial;
  return p;
}

// ---- shared helpers --------------------------------------------------------------------------------------------
at::ScalarType compute_type(at::ScalarType st) { return st == at::kDouble ? at::kDouble : at::kFloat; }

Round round_mode(at::ScalarType st) {
  if (st == at::kHalf) return Round::Half;
  if (st == at::kBFloat16) return Round::BFloat16;
  return Round::None;
}

void check_cpu_common(const char* op, const at::Tensor& a, const std::string& tier) {
  TORCH_CHECK(a.device().is_cpu(), "fused_rnn.", op, " (cpu): tensors must be on the CPU, got ", a.device());
  TORCH_CHECK(tier.empty(), "fused_rnn.", op, " (cpu): the CPU backend has no tiers, got tier '", tier, "'");
  auto st = a.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16, "fused_rnn.", op,
              ": dtype must be float32, float64, float16 or bfloat16, got ", st);
}

// lengths [B] int64 -> a contiguous copy whose every value has been checked to lie in [1, T] (reading them costs
// nothing on the CPU, and a bad value must never index out of bounds).
c10::optional<at::Tensor> checked_lengths(const char* op, const c10::optional<at::Tensor>& lengths, int64_t T) {
  if (!lengths.has_value()) return c10::nullopt;
  at::Tensor L = lengths->contiguous();
  const int64_t* p = L.const_data_ptr<int64_t>();
  for (int64_t b = 0; b < L.numel(); ++b) {
    TORCH_CHECK(p[b] >= 1 && p[b] <= T, "fused_rnn.", op, ": lengths must lie in [1, T] = [1, ", T, "], got lengths[",
                b, "] = ", p[b]);
  }
  return L;
}

// ---- running the own loops on serial / hidden / batch workers --------------------------------------------------
struct AlignedBuf {
  explicit AlignedBuf(int64_t bytes) : raw(new char[bytes + 64]) {
    data = raw.get() + ((64 - reinterpret_cast<uintptr_t>(raw.get()) % 64) % 64);
  }
  std::unique_ptr<char[]> raw;
  char* data;
};

// Runs kern(work) over the workers of `path`; pack(p0, p1) packs panels [p0, p1) of W_hh where the workers do not
// pack it themselves (the batch split: every worker reads all of it). Returns the number of workers that ran;
// *took_over: how often a worker of a hidden split took the call over, and how often one that had followed the
// holder claimed panels again (see team_next).
// Everything is allocated before any worker starts (a worker never throws, so no worker ever waits for one that
// left).
template <typename Pack, typename Kern>
int run_workers(Path path, int64_t T_, int64_t B, int64_t H, int64_t npanels, int64_t max_rows, int64_t threads,
                const Pack& pack, const Kern& kern, TeamStats* took_over) {
  *took_over = TeamStats{};
  const int64_t sbytes = (work_scratch_bytes(B) + 63) / 64 * 64;
  if (path == Path::Serial) {
    AlignedBuf scratch(sbytes);
    kern(Work{0, B, 0, npanels, nullptr, 0, true, scratch.data});
    return 1;
  }
  if (path == Path::Batch) {
    // the rows split evenly (at least one register tile each); each worker runs all T steps with all of W_hh: no
    // synchronisation at all.
    const int64_t nw = std::min(threads, (B + max_rows - 1) / max_rows);
    AlignedBuf scratch(sbytes * nw);
    at::parallel_for(0, npanels, 1, [&](int64_t p0, int64_t p1) { pack(p0, p1); });
    std::atomic<int> used{0};
    at::parallel_for(0, nw, 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        kern(Work{B * i / nw, B * (i + 1) / nw, 0, npanels, nullptr, 0, false, scratch.data + i * sbytes});
      }
      used.fetch_add(1, std::memory_order_relaxed);
    });
    return used.load();
  }
  // Hidden: the workers (counted at the gate) share the panels in rounds (Team); each packs its own panels in round
  // 0, so its share of W_hh is first touched, and then kept, in its own core's cache.
  const int64_t nreq = std::min(threads, npanels);
  AlignedBuf scratch(sbytes * nreq);
  Team team(npanels, nreq);
  std::atomic<int> used{1};
  // A start later than ~1/4 of the serial run time is not worth waiting for (~8 multiply-adds/ns), but waking a
  // sleeping pool thread can take ~100 µs on a busy machine: 100 µs .. 5 ms. (Only a worker that never comes -- a
  // pool shared with other callers -- makes a call wait the whole timeout.)
  const int64_t est_ns = T_ * B * H * H / 8;
  const int64_t timeout_ns = std::min<int64_t>(5000000, std::max<int64_t>(100000, est_ns / 4));
  const bool late = test_fault().load() == 1;
  if (test_fault().load() == 2) team.stall_worker = 1;
  at::parallel_for(0, nreq, 1, [&](int64_t i0, int64_t i1) {
    if (late && i1 == nreq && i0 > 0) {
      // The test hook waits for the close itself, not a fixed time past the timeout: on a loaded machine the first
      // worker can be descheduled for milliseconds before it closes the gate (a fixed 2 ms sleep let the "late"
      // worker in at load ~27 on 2 cores, 2026-12-01). Bounded, so a pool that runs the chunks one after another in
      // this order cannot hang here.
      const auto t0 = std::chrono::steady_clock::now();
      while (team.gate.nparts() == 0 &&
             std::chrono::steady_clock::now() - t0 < std::chrono::nanoseconds(timeout_ns + 200000000))
        std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    int nparts = 1;
    const int idx = team.gate.join(i1 - i0, nreq, timeout_ns, &nparts);
    if (idx < 0) return;
    const int64_t p0 = npanels * idx / nparts, p1 = npanels * (idx + 1) / nparts;
    kern(Work{0, B, p0, p1, nparts > 1 ? &team : nullptr, idx, true, scratch.data + idx * sbytes});
    if (idx == 0) used.store(nparts, std::memory_order_relaxed);
  });
  took_over->takeovers = team.takeovers.load();
  took_over->rejoins = team.rejoins.load();
  return used.load();
}

void set_last_run(const KernelTable& K, Path path, int workers, const TeamStats& took_over) {
  t_last_run = std::string("isa=") + K.name + " path=" + path_name(path) + " threads=" + std::to_string(workers) +
               (took_over.takeovers > 0 ? " takeover=" + std::to_string(took_over.takeovers) +
                                              " rejoin=" + std::to_string(took_over.rejoins)
                                        : "");
}

// ---- per-step BLAS path (large B) ------------------------------------------------------------------------------
// Row masks per step come from lengths exactly as in the own loops: row b is valid at t iff t < L_b.
template <typename T>
void act_rows_parallel(const KernelTable& K, T* a, int64_t B, int64_t H, int act) {
  // tanh over B·H values per step: two threads from ~16k values on (a hand-off costs ~10 µs).
  at::parallel_for(0, B, std::max<int64_t>(1, 16384 / H), [&](int64_t b0, int64_t b1) {
    if constexpr (std::is_same_v<T, float>) {
      K.act_f32(a + b0 * H, (b1 - b0) * H, act);
    } else {
      K.act_f64(a + b0 * H, (b1 - b0) * H, act);
    }
  });
}

// Forward: S [B,H] state (starts at h0), A [B,H] pre-activation scratch; per step A = P_t + S @ Wt (one GEMM),
// A = f(A) (rounded for fp16/bf16), valid rows copied to Y_t and S.
template <typename T>
void fwd_blas(const KernelTable& K, const at::Tensor& Pc, const at::Tensor& h0c, const at::Tensor& Wt, const int64_t* lp,
              at::Tensor& Y, at::Tensor& h_n, bool reverse, int act, Round rm) {
  const int64_t T_ = Pc.size(0), B = Pc.size(1), H = Pc.size(2);
  at::Tensor S = h0c.clone();
  at::Tensor A = at::empty({B, H}, Pc.options());
  T* Sp = S.mutable_data_ptr<T>();
  T* Ap = A.mutable_data_ptr<T>();
  T* Yp = Y.mutable_data_ptr<T>();
  for (int64_t s = 0; s < T_; ++s) {
    const int64_t t = reverse ? T_ - 1 - s : s;
    at::addmm_out(A, Pc[t], S, Wt);
    act_rows_parallel<T>(K, Ap, B, H, act);
    for (int64_t b = 0; b < B; ++b) {
      if (lp != nullptr && t >= lp[b]) continue;
      T* ab = Ap + b * H;
      if constexpr (std::is_same_v<T, float>) {
        if (rm == Round::Half) {
          for (int64_t j = 0; j < H; ++j) ab[j] = static_cast<float>(c10::Half(ab[j]));
        } else if (rm == Round::BFloat16) {
          for (int64_t j = 0; j < H; ++j) ab[j] = static_cast<float>(c10::BFloat16(ab[j]));
        }
      }
      std::memcpy(Yp + (t * B + b) * H, ab, H * sizeof(T));
      std::memcpy(Sp + b * H, ab, H * sizeof(T));
    }
  }
  h_n.copy_(S);
}

// Backward: Cr [B,H] carry (starts at dh_n), D [B,H] this step's dA (0 in rows not valid), Tm [B,H] = D @ W.
template <typename T>
void bwd_blas(const at::Tensor& dYc, const at::Tensor& dhc, const at::Tensor& Yc, const at::Tensor& W,
              const int64_t* lp, at::Tensor& dA, at::Tensor& dh0, bool reverse, int act) {
  const int64_t T_ = Yc.size(0), B = Yc.size(1), H = Yc.size(2);
  at::Tensor Cr = dhc.clone();
  at::Tensor D = at::empty({B, H}, Yc.options());
  at::Tensor Tm = at::empty({B, H}, Yc.options());
  T* Cp = Cr.mutable_data_ptr<T>();
  T* Dp = D.mutable_data_ptr<T>();
  const T* Tp = Tm.const_data_ptr<T>();
  const T* dYp = dYc.const_data_ptr<T>();
  const T* Yp = Yc.const_data_ptr<T>();
  T* dAp = dA.mutable_data_ptr<T>();
  for (int64_t s = 0; s < T_; ++s) {
    const int64_t t = reverse ? s : T_ - 1 - s;
    at::parallel_for(0, B, std::max<int64_t>(1, 16384 / H), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        T* db = Dp + b * H;
        if (lp != nullptr && t >= lp[b]) {
          std::fill(db, db + H, T(0));
          continue;
        }
        const int64_t off = (t * B + b) * H;
        const T* cb = Cp + b * H;
        const T* yb = Yp + off;
        const T* gb = dYp + off;
        if (act == 0) {
          for (int64_t j = 0; j < H; ++j) db[j] = (T(1) - yb[j] * yb[j]) * (gb[j] + cb[j]);
        } else {
          for (int64_t j = 0; j < H; ++j) db[j] = yb[j] <= T(0) ? T(0) : gb[j] + cb[j];  // act_grad's select
        }
        std::memcpy(dAp + off, db, H * sizeof(T));
      }
    });
    at::mm_out(Tm, D, W);
    for (int64_t b = 0; b < B; ++b) {
      if (lp != nullptr && t >= lp[b]) continue;
      std::memcpy(Cp + b * H, Tp + b * H, H * sizeof(T));
    }
  }
  dh0.copy_(Cr);
}

// ---- forward ---------------------------------------------------------------------------------------------------
template <typename T>
int fwd_own(const KernelTable& K, Path path, int64_t threads, const at::Tensor& Pc, const at::Tensor& h0c,
            const at::Tensor& Wc, const int64_t* lp, at::Tensor& Y, at::Tensor& h_n, bool reverse, int act, Round rm,
            TeamStats* took_over) {
  const int64_t T_ = Pc.size(0), B = Pc.size(1), H = Pc.size(2);
  const int64_t NW = std::is_same_v<T, float> ? K.panel_f32 : K.panel_f64;
  const int64_t npanels = (H + NW - 1) / NW;
  at::Tensor Wp = at::empty({npanels * H * NW}, Pc.options());  // 64-byte aligned (c10's CPU allocator)
  T* wp = Wp.mutable_data_ptr<T>();
  const T* w = Wc.const_data_ptr<T>();
  FwdArgs<T> A{Pc.const_data_ptr<T>(), h0c.const_data_ptr<T>(), w, wp, lp, Y.mutable_data_ptr<T>(), T_, B, H,
               reverse, act, rm};
  auto pack = [&](int64_t p0, int64_t p1) {
    if constexpr (std::is_same_v<T, float>) {
      K.pack_f32(w, H, true, p0, p1, wp);
    } else {
      K.pack_f64(w, H, true, p0, p1, wp);
    }
  };
  auto kern = [&](const Work& wk) {
    if constexpr (std::is_same_v<T, float>) {
      K.fwd_f32(A, wk);
    } else {
      K.fwd_f64(A, wk);
    }
  };
  const int workers = run_workers(path, T_, B, H, npanels, K.max_rows, threads, pack, kern, took_over);
  // h_n[b] = Y at row b's last step in order (every row has one: lengths >= 1)
  const T* y = Y.const_data_ptr<T>();
  T* hn = h_n.mutable_data_ptr<T>();
  for (int64_t b = 0; b < B; ++b) {
    const int64_t t = reverse ? 0 : (lp != nullptr ? lp[b] : T_) - 1;
    std::memcpy(hn + b * H, y + (t * B + b) * H, H * sizeof(T));
  }
  return workers;
}

// bf16 with a set that has the AVX512-BF16 forward: P, h0, Y stay bf16, W_hh is packed in bf16 pairs. Same workers
// and panels as fp32 (NW = panel_f32 columns per panel).
int fwd_own_bf16(const KernelTable& K, Path path, int64_t threads, const at::Tensor& Pc, const at::Tensor& h0c,
                 const at::Tensor& Wc, const int64_t* lp, at::Tensor& Y, at::Tensor& h_n, bool reverse, int act,
                 TeamStats* took_over) {
  const int64_t T_ = Pc.size(0), B = Pc.size(1), H = Pc.size(2);
  const int64_t NW = K.panel_f32;
  const int64_t npanels = (H + NW - 1) / NW;
  at::Tensor Wp = at::empty({bf16_packed_values(npanels, NW, H)}, Pc.options());  // 64-byte aligned
  auto bits = [](const at::Tensor& t) { return reinterpret_cast<const bf16_bits*>(t.const_data_ptr<c10::BFloat16>()); };
  bf16_bits* wp = reinterpret_cast<bf16_bits*>(Wp.mutable_data_ptr<c10::BFloat16>());
  const bf16_bits* w = bits(Wc);
  bf16_bits* y_out = reinterpret_cast<bf16_bits*>(Y.mutable_data_ptr<c10::BFloat16>());
  FwdArgs<bf16_bits> A{bits(Pc), bits(h0c), w, wp, lp, y_out, T_, B, H, reverse, act, Round::None};
  auto pack = [&](int64_t p0, int64_t p1) { K.pack_bf16(w, H, p0, p1, wp); };
  auto kern = [&](const Work& wk) { K.fwd_bf16(A, wk); };
  const int workers = run_workers(path, T_, B, H, npanels, K.max_rows, threads, pack, kern, took_over);
  const auto* y = Y.const_data_ptr<c10::BFloat16>();
  auto* hn = h_n.mutable_data_ptr<c10::BFloat16>();
  for (int64_t b = 0; b < B; ++b) {
    const int64_t t = reverse ? 0 : (lp != nullptr ? lp[b] : T_) - 1;
    std::memcpy(hn + b * H, y + (t * B + b) * H, H * sizeof(c10::BFloat16));
  }
  return workers;
}

// Y [T, B, H] for a forward: P itself when `in_place` (the own loops read P_t[b][cols] into the accumulators before
// they store Y_t[b][cols], and a state is always an earlier step's Y row or h0, so Y may overwrite P; padded steps
// are zeroed first, as the kernels never touch them), else a fresh tensor (zeros where lengths leave padded steps).
at::Tensor forward_output(const at::Tensor& Pc, const c10::optional<at::Tensor>& L, bool in_place) {
  const int64_t T_ = Pc.size(0), B = Pc.size(1), H = Pc.size(2);
  if (!in_place) return L.has_value() ? at::zeros({T_, B, H}, Pc.options()) : at::empty({T_, B, H}, Pc.options());
  if (L.has_value()) {
    const int64_t* lp = L->const_data_ptr<int64_t>();
    char* base = static_cast<char*>(Pc.data_ptr());
    const int64_t row = H * static_cast<int64_t>(Pc.element_size());
    for (int64_t t = 0; t < T_; ++t)
      for (int64_t b = 0; b < B; ++b)
        if (t >= lp[b]) std::memset(base + (t * B + b) * row, 0, row);
  }
  return Pc;
}

// The forward; with `in_place`, P (contiguous) receives Y and the returned Y is P (cpu_elman_fwd_inplace).
std::tuple<at::Tensor, at::Tensor> fwd_cpu(const at::Tensor& P, const at::Tensor& h0, const at::Tensor& w_hh,
                                           const c10::optional<at::Tensor>& lengths, bool reverse,
                                           const std::string& nonlinearity, const std::string& tier, bool in_place) {
  check_fwd_inputs(P, h0, w_hh, lengths);
  check_cpu_common("elman_fwd", P, tier);
  const int act = static_cast<int>(parse_nonlinearity(nonlinearity));
  const int64_t T_ = P.size(0), B = P.size(1), H = P.size(2);
  const auto L = checked_lengths("elman_fwd", lengths, T_);
  const auto st = P.scalar_type();
  if (in_place) {
    TORCH_CHECK(P.is_contiguous(), "fused_rnn.cpu_elman_fwd_inplace: P must be contiguous");
    // Y is written over P while h0 and w_hh are read: they must not share its memory
    at::assert_no_overlap(P, h0);
    at::assert_no_overlap(P, w_hh);
  }
  if (B == 0 || H == 0) {
    if (in_place) return {P, at::zeros({B, H}, P.options())};  // nothing to write: P has no elements
    return {at::zeros({T_, B, H}, P.options()), at::zeros({B, H}, P.options())};
  }
  const KernelTable& K = *active_kernels().load();
  const int64_t* lp = L.has_value() ? L->const_data_ptr<int64_t>() : nullptr;
  const int64_t threads = usable_threads();
  if (st == at::kBFloat16 && K.fwd_bf16 != nullptr) {
    const Path path =
        choose_path(T_, B, H, threads, (H + K.panel_f32 - 1) / K.panel_f32, K.max_rows, H * H * 2);
    if (path != Path::Blas) {
      const at::Tensor Pc = P.contiguous(), h0c = h0.contiguous(), Wc = w_hh.contiguous();
      at::Tensor Y = forward_output(Pc, L, in_place);
      at::Tensor h_n = at::empty({B, H}, Pc.options());
      TeamStats took_over;
      const int workers = fwd_own_bf16(K, path, threads, Pc, h0c, Wc, lp, Y, h_n, reverse, act, &took_over);
      set_last_run(K, path, workers, took_over);
      return {Y, h_n};
    }
  }
  const auto ct = compute_type(st);
  const at::Tensor Pc = P.to(ct).contiguous();
  const at::Tensor h0c = h0.to(ct).contiguous();
  const at::Tensor Wc = w_hh.to(ct).contiguous();
  const Round rm = round_mode(st);
  const int64_t NW = ct == at::kFloat ? K.panel_f32 : K.panel_f64;
  const Path path = choose_path(T_, B, H, threads, (H + NW - 1) / NW, K.max_rows,
                                H * H * static_cast<int64_t>(c10::elementSize(ct)));
  // in place only where Pc is P (same dtype) and the own loops run (the per-step BLAS path is not written for it);
  // otherwise compute as usual and copy into P at the end
  const bool own_in_place = in_place && ct == st && path != Path::Blas;
  at::Tensor Y = forward_output(Pc, L, own_in_place);
  at::Tensor h_n = at::empty({B, H}, Pc.options());

  int workers = 1;
  TeamStats took_over;
  if (path == Path::Blas) {
    const at::Tensor Wt = Wc.t().contiguous();
    if (ct == at::kFloat) {
      fwd_blas<float>(K, Pc, h0c, Wt, lp, Y, h_n, reverse, act, rm);
    } else {
      fwd_blas<double>(K, Pc, h0c, Wt, lp, Y, h_n, reverse, act, rm);
    }
    workers = static_cast<int>(threads);
  } else if (ct == at::kFloat) {
    workers = fwd_own<float>(K, path, threads, Pc, h0c, Wc, lp, Y, h_n, reverse, act, rm, &took_over);
  } else {
    workers = fwd_own<double>(K, path, threads, Pc, h0c, Wc, lp, Y, h_n, reverse, act, rm, &took_over);
  }
  set_last_run(K, path, workers, took_over);
  if (in_place && !own_in_place) {
    P.copy_(Y);  // exact: every value was already rounded to st
    return {P, h_n.to(st)};
  }
  if (ct != st) return {Y.to(st), h_n.to(st)};  // exact: every value was already rounded to st
  return {Y, h_n};
}

std::tuple<at::Tensor, at::Tensor> elman_fwd_cpu(const at::Tensor& P, const at::Tensor& h0, const at::Tensor& w_hh,
                                                 const c10::optional<at::Tensor>& lengths, bool reverse,
                                                 c10::string_view nonlinearity_sv, c10::string_view tier_sv,
                                                 bool allow_tf32) {
  (void)allow_tf32;  // TF32 is a CUDA setting; the CPU computes IEEE fp32
  // `str` arguments arrive as string_view: the CPU and CUDA kernels of one op must share a C++ signature.
  return fwd_cpu(P, h0, w_hh, lengths, reverse, std::string(nonlinearity_sv), std::string(tier_sv), false);
}

// cpu_elman_fwd_inplace: elman_fwd writing Y into P (contiguous) and returning h_n. For a caller whose P is a
// temporary nobody else reads (the layer's own input projection): it saves the [T, B, H] allocation of Y, whose
// first touch is page faults -- 11-15 ms for 46 MB on the 2-core AMD EPYC Zen 5 VM, against a 105 ms forward at
// T2800 B16 H256 fp32, 2 threads (2026-12-01). fused_rnn/recurrence.py calls it only in eager mode.
at::Tensor elman_fwd_inplace_cpu(const at::Tensor& P, const at::Tensor& h0, const at::Tensor& w_hh,
                                 const c10::optional<at::Tensor>& lengths, bool reverse, c10::string_view nonlinearity) {
  return std::get<1>(fwd_cpu(P, h0, w_hh, lengths, reverse, std::string(nonlinearity), "", true));
}

// ---- backward --------------------------------------------------------------------------------------------------
template <typename T>
int bwd_own(const KernelTable& K, Path path, int64_t threads, const at::Tensor& dYc, const at::Tensor& dhc,
            const at::Tensor& Yc, const at::Tensor& Wc, const int64_t* lp, at::Tensor& dA, at::Tensor& dh0,
            bool reverse, int act, TeamStats* took_over) {
  const int64_t T_ = Yc.size(0), B = Yc.size(1), H = Yc.size(2);
  const int64_t NW = std::is_same_v<T, float> ? K.panel_f32 : K.panel_f64;
  const int64_t npanels = (H + NW - 1) / NW;
  at::Tensor Wp = at::empty({npanels * H * NW}, Yc.options());
  T* wp = Wp.mutable_data_ptr<T>();
  const T* w = Wc.const_data_ptr<T>();
  BwdArgs<T> A{dYc.const_data_ptr<T>(), dhc.const_data_ptr<T>(), Yc.const_data_ptr<T>(), w, wp, lp,
               dA.mutable_data_ptr<T>(), dh0.mutable_data_ptr<T>(), T_, B, H, reverse, act};
  auto pack = [&](int64_t p0, int64_t p1) {
    if constexpr (std::is_same_v<T, float>) {
      K.pack_f32(w, H, false, p0, p1, wp);
    } else {
      K.pack_f64(w, H, false, p0, p1, wp);
    }
  };
  auto kern = [&](const Work& wk) {
    if constexpr (std::is_same_v<T, float>) {
      K.bwd_f32(A, wk);
    } else {
      K.bwd_f64(A, wk);
    }
  };
  return run_workers(path, T_, B, H, npanels, K.max_rows, threads, pack, kern, took_over);
}

// bf16 backward with a set that has the AVX512-BF16 kernels: dY, Y, dA stay bf16, w_hh is packed in bf16 pairs
// along k, the carry C [B, H] is fp32 (dh0 = C rounded once at the end).
int bwd_own_bf16(const KernelTable& K, Path path, int64_t threads, const at::Tensor& dYc, const at::Tensor& dhc,
                 const at::Tensor& Yc, const at::Tensor& Wc, const int64_t* lp, at::Tensor& dA, at::Tensor& C,
                 bool reverse, int act, TeamStats* took_over) {
  const int64_t T_ = Yc.size(0), B = Yc.size(1), H = Yc.size(2);
  const int64_t NW = K.panel_f32;
  const int64_t npanels = (H + NW - 1) / NW;
  at::Tensor Wp = at::empty({bf16_packed_values(npanels, NW, H)}, Yc.options());
  auto bits = [](const at::Tensor& t) { return reinterpret_cast<const bf16_bits*>(t.const_data_ptr<c10::BFloat16>()); };
  bf16_bits* wp = reinterpret_cast<bf16_bits*>(Wp.mutable_data_ptr<c10::BFloat16>());
  const bf16_bits* w = bits(Wc);
  bf16_bits* da_out = reinterpret_cast<bf16_bits*>(dA.mutable_data_ptr<c10::BFloat16>());
  BwdArgsBf16 A{bits(dYc), bits(dhc), bits(Yc), w, wp, lp, da_out, C.mutable_data_ptr<float>(), T_, B, H, reverse, act};
  auto pack = [&](int64_t p0, int64_t p1) { K.pack_bf16_bwd(w, H, p0, p1, wp); };
  auto kern = [&](const Work& wk) { K.bwd_bf16(A, wk); };
  return run_workers(path, T_, B, H, npanels, K.max_rows, threads, pack, kern, took_over);
}

std::tuple<at::Tensor, at::Tensor> elman_bwd_cpu(const at::Tensor& dY, const at::Tensor& dh_n, const at::Tensor& Y,
                                                 const at::Tensor& w_hh, const c10::optional<at::Tensor>& lengths,
                                                 bool reverse, c10::string_view nonlinearity_sv,
                                                 c10::string_view tier_sv, bool allow_tf32) {
  (void)allow_tf32;
  check_bwd_inputs(dY, dh_n, Y, w_hh, lengths);
  const std::string nonlinearity(nonlinearity_sv), tier(tier_sv);
  check_cpu_common("elman_bwd", Y, tier);
  const int act = static_cast<int>(parse_nonlinearity(nonlinearity));
  const int64_t T_ = Y.size(0), B = Y.size(1), H = Y.size(2);
  const auto L = checked_lengths("elman_bwd", lengths, T_);
  const auto st = Y.scalar_type();
  if (B == 0 || H == 0) {
    return {at::zeros({T_, B, H}, Y.options()), at::zeros({B, H}, Y.options())};
  }
  const KernelTable& K = *active_kernels().load();
  const int64_t* lp = L.has_value() ? L->const_data_ptr<int64_t>() : nullptr;
  const int64_t threads = usable_threads();
  if (st == at::kBFloat16 && K.bwd_bf16 != nullptr) {
    const Path path =
        choose_path(T_, B, H, threads, (H + K.panel_f32 - 1) / K.panel_f32, K.max_rows, H * H * 2);
    if (path != Path::Blas) {
      const at::Tensor dYc = dY.contiguous(), dhc = dh_n.contiguous(), Yc = Y.contiguous(), Wc = w_hh.contiguous();
      at::Tensor dA = L.has_value() ? at::zeros({T_, B, H}, Yc.options()) : at::empty({T_, B, H}, Yc.options());
      at::Tensor C = at::empty({B, H}, Yc.options().dtype(at::kFloat));
      TeamStats took_over;
      const int workers = bwd_own_bf16(K, path, threads, dYc, dhc, Yc, Wc, lp, dA, C, reverse, act, &took_over);
      set_last_run(K, path, workers, took_over);
      return {dA, C.to(at::kBFloat16)};
    }
  }
  const auto ct = compute_type(st);
  const at::Tensor dYc = dY.to(ct).contiguous();
  const at::Tensor dhc = dh_n.to(ct).contiguous();
  const at::Tensor Yc = Y.to(ct).contiguous();
  const at::Tensor Wc = w_hh.to(ct).contiguous();
  // dA in the compute dtype (fp32 for fp16/bf16): the carried gradient uses the unrounded value, dA is rounded once
  // when converted to the storage dtype at the end -- the reference's order.
  at::Tensor dA = L.has_value() ? at::zeros({T_, B, H}, Yc.options()) : at::empty({T_, B, H}, Yc.options());
  at::Tensor dh0 = at::empty({B, H}, Yc.options());
  const int64_t NW = ct == at::kFloat ? K.panel_f32 : K.panel_f64;
  const Path path = choose_path(T_, B, H, threads, (H + NW - 1) / NW, K.max_rows,
                                H * H * static_cast<int64_t>(c10::elementSize(ct)));

  int workers = 1;
  TeamStats took_over;
  if (path == Path::Blas) {
    if (ct == at::kFloat) {
      bwd_blas<float>(dYc, dhc, Yc, Wc, lp, dA, dh0, reverse, act);
    } else {
      bwd_blas<double>(dYc, dhc, Yc, Wc, lp, dA, dh0, reverse, act);
    }
    workers = static_cast<int>(threads);
  } else if (ct == at::kFloat) {
    workers = bwd_own<float>(K, path, threads, dYc, dhc, Yc, Wc, lp, dA, dh0, reverse, act, &took_over);
  } else {
    workers = bwd_own<double>(K, path, threads, dYc, dhc, Yc, Wc, lp, dA, dh0, reverse, act, &took_over);
  }
  set_last_run(K, path, workers, took_over);
  if (ct != st) return {dA.to(st), dh0.to(st)};
  return {dA, dh0};
}

// ---- test hook: a call nested inside another parallel region --------------------------------------------------
// Runs elman_fwd and then elman_bwd `copies` times inside at::parallel_for (grain 1: one copy per chunk), the way an
// op that parallelises over something else would call into this backend. Returns Y [copies, T, B, H],
// dA [copies, T, B, H] and, per copy, what ran ("<fwd last run> | <bwd last run> | nested=<0|1>").
std::tuple<at::Tensor, at::Tensor, std::vector<std::string>> cpu_nested_op(const at::Tensor& P, const at::Tensor& h0,
                                                                            const at::Tensor& w_hh, int64_t copies) {
  TORCH_CHECK(copies >= 1, "fused_rnn.cpu_nested: copies must be >= 1");
  std::vector<at::Tensor> Ys(copies), dAs(copies);
  std::vector<std::string> runs(copies);
  at::parallel_for(0, copies, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const bool nested = at::in_parallel_region() || c10::ParallelGuard::is_enabled();
      auto fw = elman_fwd_cpu(P, h0, w_hh, c10::nullopt, false, "tanh", "", false);
      const std::string f = t_last_run;
      auto bw = elman_bwd_cpu(P, h0, std::get<0>(fw), w_hh, c10::nullopt, false, "tanh", "", false);
      Ys[i] = std::get<0>(fw);
      dAs[i] = std::get<0>(bw);
      runs[i] = f + " | " + t_last_run + " | nested=" + (nested ? "1" : "0");
    }
  });
  return {at::stack(Ys), at::stack(dAs), runs};
}

}  // namespace
}  // namespace cpu

TORCH_LIBRARY_FRAGMENT(fused_rnn, m) {
  m.def("cpu_isa(str request='') -> str", &cpu::cpu_isa_op);
  m.def("cpu_path(str request='') -> str", &cpu::cpu_path_op);
  m.def("cpu_last_run() -> str", &cpu::cpu_last_run_op);
  m.def("cpu_nested(Tensor P, Tensor h0, Tensor w_hh, int copies) -> (Tensor, Tensor, str[])", &cpu::cpu_nested_op);
  m.def("cpu_elman_fwd_inplace(Tensor(a!) P, Tensor h0, Tensor w_hh, Tensor? lengths, bool reverse, str nonlinearity) "
        "-> Tensor",
        &cpu::elman_fwd_inplace_cpu);
}

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) {
  m.impl("elman_fwd", &cpu::elman_fwd_cpu);
  m.impl("elman_bwd", &cpu::elman_bwd_cpu);
}

}  // namespace fused_rnn
