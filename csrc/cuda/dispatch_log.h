// Which CUDA tier really ran (issue #26): the dispatcher (elman_cuda.cpp) appends one entry per op call while a
// test or `make gpu-check` has switched the log on (torch.ops.fused_rnn.cuda_tier_log_*; the Python side is
// fused_rnn.backends.tier_log.record()). A forced tier that refuses a shape falls back to `fallback` inside the op,
// so without this record a GPU test could not tell a tier from its fallback.
//
// Launchers (host code in the .cu files and elman_cuda.cpp) report through two per-thread notes that the dispatcher
// reads right after the call: why a tier refused (always kept: refusals are rare and the reason matters), and what
// was launched (cluster size, batch tile, waves, GEMM kind; formatted only while the log is on, so the launch path
// pays one relaxed atomic load when it is off). Plain C++ (no ATen, no CUDA): the standalone harness links it too.
#pragma once

#include <string>
#include <vector>

namespace fused_rnn {
namespace cuda {
namespace dispatch_log {

bool enabled();                 // the log is on (cheap: one relaxed atomic load)
bool set_enabled(bool on);      // returns the previous state
void clear();                   // drops every entry
long long size();               // entries appended since the last clear
std::vector<std::string> entries(long long start);  // entries [start, size())

void begin_call();                      // clears this thread's notes before a dispatch
void note_refusal(const std::string& why, bool arch = false);  // a launcher refused (arch: the GPU or the build's
                                                               // archs cannot run it at all); the last note wins
void note_detail(const std::string& what);  // a launcher ran (only called while enabled())
std::string refusal();                  // this thread's notes since begin_call()
bool refusal_is_arch();
std::string detail();

// Appends "op \t requested \t ran \t why \t detail \t shape" (tabs separate the fields; none may contain one).
void append(const std::string& op, const std::string& requested, const std::string& ran, const std::string& why,
            const std::string& detail, const std::string& shape);

}  // namespace dispatch_log
}  // namespace cuda
}  // namespace fused_rnn
