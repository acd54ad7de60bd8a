// Placeholder until the persistent tiers land: they report "cannot run", so the dispatcher uses `fallback`.
#include "persistent.h"

namespace fused_rnn {
namespace cuda {

bool elman_fwd_persistent(const ElmanFwdParams&, at::ScalarType, bool, cudaStream_t) { return false; }
bool elman_bwd_persistent(const ElmanBwdParams&, at::ScalarType, bool, cudaStream_t) { return false; }

}  // namespace cuda
}  // namespace fused_rnn
