// The tier record of dispatch_log.h. A bounded in-memory log: entries past kMaxEntries (65536) are dropped, so a
// process that leaves the log on cannot grow memory without limit.
#include "dispatch_log.h"

#include <atomic>
#include <mutex>

namespace fused_rnn {
namespace cuda {
namespace dispatch_log {
namespace {

constexpr size_t kMaxEntries = 1 << 16;

std::atomic<bool> g_on{false};
std::mutex g_mu;
std::vector<std::string>& log_store() {
  static std::vector<std::string> v;
  return v;
}
thread_local std::string t_refusal;
thread_local std::string t_detail;
thread_local bool t_arch = false;

}  // namespace

bool enabled() { return g_on.load(std::memory_order_relaxed); }
bool set_enabled(bool on) { return g_on.exchange(on); }

void clear() {
  std::lock_guard<std::mutex> lk(g_mu);
  log_store().clear();
}

long long size() {
  std::lock_guard<std::mutex> lk(g_mu);
  return static_cast<long long>(log_store().size());
}

std::vector<std::string> entries(long long start) {
  std::lock_guard<std::mutex> lk(g_mu);
  const auto& v = log_store();
  if (start < 0) start = 0;
  if (start >= static_cast<long long>(v.size())) return {};
  return std::vector<std::string>(v.begin() + start, v.end());
}

void begin_call() {
  t_refusal.clear();
  t_detail.clear();
  t_arch = false;
}
void note_refusal(const std::string& why, bool arch) {
  t_refusal = why;
  t_arch = arch;
}
bool refusal_is_arch() { return t_arch; }
void note_detail(const std::string& what) { t_detail = what; }
std::string refusal() { return t_refusal; }
std::string detail() { return t_detail; }

void append(const std::string& op, const std::string& requested, const std::string& ran, const std::string& why,
            const std::string& detail, const std::string& shape) {
  std::string e;
  e.reserve(op.size() + requested.size() + ran.size() + why.size() + detail.size() + shape.size() + 5);
  e += op;
  e += '\t';
  e += requested;
  e += '\t';
  e += ran;
  e += '\t';
  e += why;
  e += '\t';
  e += detail;
  e += '\t';
  e += shape;
  std::lock_guard<std::mutex> lk(g_mu);
  auto& v = log_store();
  if (v.size() < kMaxEntries) v.push_back(std::move(e));
}

}  // namespace dispatch_log
}  // namespace cuda
}  // namespace fused_rnn
