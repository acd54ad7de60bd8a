// Launch planning of the `cluster` tier (Hopper thread-block clusters), as a pure function: plain C++ with no CUDA
// or ATen dependency, so the decision is tested on the CPU with the occupancy answer as an input
// (torch.ops.fused_rnn.cuda_cluster_plan, tests/test_cuda.py) and the launcher (persistent.cu) runs the same code with
// the CUDA runtime's answer. Shapes: B batch, H hidden; a cluster of `cluster` CTAs owns one batch tile of `bt` rows,
// CTA r of it the hidden units [r*hs, r*hs + hs).
//
// Why a plan from the runtime (issue #21): clusters are scheduled onto GPCs, not onto single SMs, so the number of
// 16-CTA clusters a device holds at once is not floor(#SMs / 16). An H200 (132 SMs) ran bf16 B=256, H=1024 at
// 50.6 us/step = 5 x 10.1: 32 clusters in 5 waves, so at most 7 co-resident where 132 / 16 assumed 8 (2026-11-27), and
// a part with fewer SMs per GPC may hold no 16-CTA cluster at all. cudaOccupancyMaxActiveClusters answers exactly
// this question for one kernel, cluster size and shared-memory size.
#pragma once

#include <cstddef>

namespace fused_rnn {
namespace cuda {
namespace plan {

constexpr int kRows = 4;         // hidden units per warp pass of the persistent kernels (persistent_kernel.cuh)
constexpr int kMaxCluster = 16;  // the largest cluster a Hopper GPC can hold (non-portable above 8)
constexpr int kMaxTiles = 65535; // gridDim.y limit: one cluster per batch tile

inline int ceil_div(int a, int b) { return (a + b - 1) / b; }
inline size_t align16(size_t x) { return (x + 15) / 16 * 16; }

// Largest batch tile worth compiling for B (the kernels take BT = 1, 4 or 8 at compile time).
inline int pick_bt(int B) { return B <= 1 ? 1 : (B <= 4 ? 4 : 8); }

// Shared memory of one CTA of the persistent kernels: the weight slice [HS][H] in the storage dtype (elem bytes),
// then `slots` fp32 [BT][H] state tiles (cluster: 2, the ping-pong; cooperative grid: 1).
inline size_t smem_bytes(int HS, int H, int BT, int slots, int elem) {
  return align16(static_cast<size_t>(HS) * H * elem) + static_cast<size_t>(slots) * BT * H * sizeof(float);
}

struct ClusterPlan {
  int cluster = 0;  // CTAs per cluster; 0 = no plan (the tier cannot run this shape on this device)
  int bt = 0;       // batch rows per tile (1, 4 or 8)
  int hs = 0;       // hidden units per CTA (a multiple of kRows)
  int tiles = 0;    // clusters launched = ceil(B / bt)
  int active = 0;   // clusters the device holds at once (the occupancy answer for this cluster, bt and smem)
  int waves = 0;    // ceil(tiles / active): whole sequences run one wave after another beyond `active`
  size_t smem = 0;  // dynamic shared memory per CTA
};

// The plan for B x H in a storage dtype of `elem` bytes, with `smem_optin` bytes of shared memory per block.
//   occ(cluster, bt, smem) -> clusters of that size co-resident at once (cudaOccupancyMaxActiveClusters for the
//                             <dtype, bt> kernel with `smem` bytes); <= 0 when it cannot be scheduled (or the query
//                             failed).
//   only_bt        > 0: consider this batch tile only (the harness's fixed-BT launchers); 0: 1, 4 and 8 up to
//                  pick_bt(B).
//   force_cluster  > 0: this cluster size or nothing (tests); 0: choose.
// Rule, in order:
//   1. The largest cluster that can be scheduled at all (largest first: the per-step matvec shrinks with the CTA
//      count while each CTA's DSMEM pushes do not grow -- H200, fp32 forward, 16 vs 8 CTAs: 2.95 vs 6.41 us/step at
//      B=16, H=512). A size the occupancy query refuses (e.g. 16 on a part whose GPCs hold fewer free SMs) falls
//      through to the next smaller one.
//   2. For that cluster size, the smallest batch tile whose tiles all fit in one wave (more, smaller clusters: H200
//      bf16 B=16, H=1024, BT 8 -> 4: 10.0 -> 6.5 us/step); where no tile size gives one wave, the one with the
//      fewest waves (ties: the smaller tile).
// Clusters never wait on each other, so a plan with several waves is correct, only slower; no plan at all means the
// tier refuses and the dispatcher runs `fallback`.
template <class Occ>
ClusterPlan plan_cluster(int B, int H, int elem, size_t smem_optin, int only_bt, int force_cluster, Occ&& occ) {
  ClusterPlan none{};
  if (B < 1 || H < 1) return none;
  const int max_bt = pick_bt(B);
  const int c_max = force_cluster > 0 ? force_cluster : (H < kMaxCluster * kRows ? ceil_div(H, kRows) : kMaxCluster);
  for (int c = c_max; c >= 1; --c) {
    const int hs = ceil_div(ceil_div(H, c), kRows) * kRows;
    if (ceil_div(H, hs) != c) {  // the same split as a smaller cluster: that one is tried next
      if (force_cluster > 0) return none;
      continue;
    }
    ClusterPlan best{};
    for (int bt : {1, 4, 8}) {
      if (only_bt > 0 ? bt != only_bt : bt > max_bt) continue;
      const size_t smem = smem_bytes(hs, H, bt, 2, elem);
      if (smem > smem_optin) continue;
      const int tiles = ceil_div(B, bt);
      if (tiles > kMaxTiles) continue;
      const int active = occ(c, bt, smem);
      if (active < 1) continue;
      const int waves = ceil_div(tiles, active);
      if (best.cluster == 0 || waves < best.waves) best = ClusterPlan{c, bt, hs, tiles, active, waves, smem};
      if (waves == 1) break;  // the smallest tile that covers B in one wave
    }
    if (best.cluster != 0) return best;
    if (force_cluster > 0) return none;
  }
  return none;
}

}  // namespace plan
}  // namespace cuda
}  // namespace fused_rnn
