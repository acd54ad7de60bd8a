// PTX wrappers of the `cluster2` tier (cluster2_kernel.cuh): every instruction the kernel issues that plain CUDA C++
// does not express -- warp-level MMA (fp16 / bf16 m16n8k16, tf32 m16n8k8), ldmatrix, mbarriers, the DSMEM bulk
// copy, cluster special registers and barriers. The kernel calls only these functions for them, so
// csrc/cuda/emulate/emulate_cluster2.cpp can compile the kernel source unchanged on the host with a twin of each (same
// name, same signature, semantics from the PTX ISA).
//
// Shared-memory addresses are `saddr_t`: the 32-bit .shared window address (cvta) on the device, a host pointer in
// the emulation; the kernel only adds byte offsets to them. Every body is sm_90-only PTX (mma.sync and ldmatrix exist
// from sm_80, the rest from sm_90); the kernel calls them only under `__CUDA_ARCH__ >= 900`.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace fused_rnn {
namespace cuda {
namespace c2 {

using saddr_t = uint32_t;

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900

// The kernel's dynamic shared memory (one buffer for the whole CTA; layout in Plan).
__device__ __forceinline__ unsigned char* dyn_smem() {
  extern __shared__ __align__(128) unsigned char c2_dyn_smem[];
  return c2_dyn_smem;
}

__device__ __forceinline__ saddr_t smem_addr(const void* p) {
  return static_cast<saddr_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ int cluster_rank() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
  return static_cast<int>(r);
}

// The .shared::cluster address of the same offset in CTA `rank` of this cluster.
__device__ __forceinline__ saddr_t map_peer(saddr_t a, int rank) {
  saddr_t r;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(rank));
  return r;
}

// ldmatrix .m8n8 .b16, non-transposed. Lanes 8q..8q+7 give the row addresses (16 bytes each) of matrix q; lane l
// receives, in r[q], the 32-bit word (l % 4) of row (l / 4) of matrix q.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], saddr_t a) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a)
               : "memory");
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], saddr_t a) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(a)
               : "memory");
}

// d += A (16x16, row) * B (16x8, col), fp32 accumulation; A four and B two 32-bit registers of element pairs.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]);
template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4],
                                                         const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
template <>
__device__ __forceinline__ void mma_16816<__half>(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// d += A (16x8, row) * B (8x8, col) in TF32 (fp32 storage with allow_tf32): operands are fp32 bit patterns of which
// the tensor core reads sign, exponent and the top 10 mantissa bits; round them first (cvt_tf32).
__device__ __forceinline__ void mma_1688_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
// fp32 -> tf32 (round to nearest, ties away from zero), as a 32-bit pattern with the low 13 bits zero.
__device__ __forceinline__ uint32_t cvt_tf32(uint32_t fp32_bits) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(__uint_as_float(fp32_bits)));
  return r;
}

// mbarrier in this CTA's shared memory, `count` arrivals per phase.
__device__ __forceinline__ void mbar_init(saddr_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}
// Makes the initializations above visible to the other CTAs of the cluster (before the cluster barrier that
// precedes any remote complete_tx).
__device__ __forceinline__ void fence_mbar_init() {
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}
// One arrival on `bar` that also expects `bytes` more transaction bytes in the current phase.
__device__ __forceinline__ void mbar_arrive_expect_tx(saddr_t bar, uint32_t bytes) {
  asm volatile(
      "{\n\t.reg .b64 st;\n\t"
      "mbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1;\n\t}" ::"r"(bar),
      "r"(bytes)
      : "memory");
}
// True once the phase of parity `parity` has completed (the barrier's current phase has the other parity).
__device__ __forceinline__ bool mbar_try_wait(saddr_t bar, uint32_t parity) {
  uint32_t ok;
  asm volatile(
      "{\n\t.reg .pred p;\n\t"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n\t"
      "selp.u32 %0, 1, 0, p;\n\t}"
      : "=r"(ok)
      : "r"(bar), "r"(parity)
      : "memory");
  return ok != 0;
}
// Bulk copy of `bytes` (multiple of 16, both addresses 16-byte aligned) from this CTA's shared memory into a peer's
// (dst and bar are .shared::cluster addresses from map_peer); completes as transaction bytes on the peer's `bar`.
__device__ __forceinline__ void bulk_copy_to_peer(saddr_t dst, saddr_t src, uint32_t bytes, saddr_t bar) {
  asm volatile(
      "cp.async.bulk.shared::cluster.shared::cta.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(dst),
      "r"(src), "r"(bytes), "r"(bar)
      : "memory");
}
// Orders this thread's generic-proxy shared-memory writes before later async-proxy (bulk copy) reads of them.
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}
// Split cluster barrier (all threads of all CTAs of the cluster); used only before and after the time loop.
__device__ __forceinline__ void cluster_arrive() {
  asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
}
__device__ __forceinline__ void cluster_wait() {
  asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
}
// A clock for the mbarrier watchdog (cluster2_kernel.cuh: a protocol bug traps instead of hanging the GPU).
__device__ __forceinline__ long long wall_clock() { return clock64(); }
__device__ __forceinline__ void watchdog_trap() { __trap(); }

#endif  // __CUDA_ARCH__ >= 900

}  // namespace c2
}  // namespace cuda
}  // namespace fused_rnn
