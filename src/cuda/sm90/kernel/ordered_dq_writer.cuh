// Layer: cuda/sm90 kernel. The ordered dQ adds of the deterministic fast kernel (Tr::kOrderedDq;
// cuda/common/ordered_dq.h numbers the counters, TileWalk::ordered_rank the order), handed from
// the consumer warpgroups to a writer thread, as FlashAttention-3's backward hands its dQ to a
// producer warp. A consumer warpgroup stages its step's dQ partial in shared memory as the fast
// kernel does and posts a job (the walked box, its query head, counter and rank) on an mbarrier;
// producer thread 32 (the writer) waits for the box's turn on its counter, issues the TMA
// reduce-adds, frees the staging tile once they have read it, and counts them once they are
// complete. So no consumer waits for a counter or for an add's completion: before the writer
// (fourteenth session, 2026-12-06) a consumer thread polled the counter and waited for its last
// adds' completion before every step's barrier, and the ordered kernel ran 1.2-1.7x the pair's
// time on the H100 (dense 8k d128 8.2-8.3 ms against 6.4; interleaving heads in launch order
// changed nothing there, bench/results/2026-12-06-h100-fourteenth-session.md).
#pragma once
#include <cute/arch/copy_sm90_tma.hpp>
#include <cutlass/arch/barrier.h>

#include "cuda/common/box_index.h"
#include "cuda/sm90/kernel/backward_traits.cuh"
#include "cuda/sm90/kernel/pieces.cuh"

namespace nattn::cuda::sm90 {

// The staging tile's free barrier of warpgroup wg's jobs. Head dim 128: both warpgroups add every
// step, each its own column half of the tile, so each half has its own; below, the warpgroups
// take turns with the whole tile, so a job waits for the step before's, the other warpgroup's.
template <class Tr>
__device__ __forceinline__ uint64_t* dq_free_barrier(typename Tr::SharedStorage& ss, int wg) {
  return &ss.dq_free[Tr::Fast::kDqSplit == 2 ? wg : 0];
}

// Consumer warpgroup wg before staging its job of CTA step `step`: the writer has read the tile
// (its half) of the step before (and taken that job). Every step has one job per free barrier,
// so the step before's is that barrier's phase step - 1.
template <class Tr>
__device__ __forceinline__ void wait_dq_stage_free(typename Tr::SharedStorage& ss, int wg, int step) {
  if (step > 0) cutlass::arch::ClusterBarrier::wait(dq_free_barrier<Tr>(ss, wg), uint32_t((step - 1) & 1));
}

// Every thread of consumer warpgroup wg once its staging writes are fenced for the async proxy
// and its thread 0 has written the job (ss.dq_job[wg]): the 128 arrivals release the job and the
// staged tile to the writer's wait.
template <class Tr>
__device__ __forceinline__ void post_dq_job(typename Tr::SharedStorage& ss, int wg) {
  cutlass::arch::ClusterBarrier::arrive(&ss.dq_staged[wg]);
}

// Consumer warpgroup wg (t its thread) after its walk (steps: the CTA's step count): its end job,
// once the writer has taken the last step's (so its own last one too). The writer waits for the
// end of the warpgroup whose turn comes next; the other's end is never waited for.
template <class Tr>
__device__ __forceinline__ void end_dq_jobs(typename Tr::SharedStorage& ss, int wg, int t, int steps) {
  wait_dq_stage_free<Tr>(ss, wg, steps);
  if (t == 0) ss.dq_job[wg].slot = -1;
  post_dq_job<Tr>(ss, wg);
}

// Producer thread 32, the writer: per CTA step the jobs of the warpgroups adding (both, each its
// column half, or warpgroup step % 2 with every column), in step order, until an end job. b: the
// CTA's batch.
template <class Tr>
__device__ __forceinline__ void write_ordered_dq(typename Tr::SharedStorage& ss, const BackwardArgs& args, int b) {
  using F = typename Tr::Fast;
  using Barrier = cutlass::arch::ClusterBarrier;
  constexpr int BQ = Tr::BQ, PC = F::kPanelCols;
  const Geometry& g = args.p.g;
  uint32_t phase[2] = {0, 0};
  for (int n = 0;; ++n) {
    const int wg0 = F::kDqSplit == 2 ? 0 : (n & 1);
    DqJob job;
#pragma unroll
    for (int i = 0; i < F::kDqSplit; ++i) {  // both warpgroups' jobs name the same box
      Barrier::wait(&ss.dq_staged[wg0 + i], phase[wg0 + i]);
      phase[wg0 + i] ^= 1;
      job = ss.dq_job[wg0 + i];
      if (job.slot < 0) return;  // every job before was counted (its completion waited for below)
    }
    // The box's turn: the adds of every CTA ranked before this one are complete and counted.
    const int* counter = args.dq_order + job.slot;
    const int want = F::kDqSplit * job.rank;
    int seen;
    do {
      asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(seen) : "l"(counter) : "memory");
    } while (seen < want);
    asm volatile("fence.proxy.async.global;\n" ::: "memory");  // their adds before this one's
#pragma unroll
    for (int i = 0; i < F::kDqSplit; ++i) {
      const int col0 = F::kDqSplit == 2 ? (wg0 + i) * F::kDqCols : 0;
      for (int pnl = col0 / PC; pnl < (col0 + F::kDqCols) / PC; ++pnl) {
        int tc[5];
        map_coords(args.mode[kDqAccum], int(g.heads_q), args.head_cols[kDqAccum], b, job.h, pnl, PC, job.c, tc);
        cute::SM90_TMA_REDUCE_ADD_5D::copy(&args.tma[kDqAccum], ss.dq_stage + pnl * BQ * PC, tc[0], tc[1], tc[2], tc[3],
                                           tc[4]);
      }
    }
    cute::tma_store_arrive();
    cute::tma_store_wait<0>();  // the adds have read the staging tile: the warpgroups may restage
#pragma unroll
    for (int i = 0; i < F::kDqSplit; ++i) Barrier::arrive(dq_free_barrier<Tr>(ss, wg0 + i));
    asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");  // and are complete in global memory
    asm volatile("fence.proxy.async.global;\n" ::: "memory");
    asm volatile("red.release.gpu.global.add.s32 [%0], %1;\n" ::"l"(counter), "r"(F::kDqSplit) : "memory");
  }
}

}  // namespace nattn::cuda::sm90
