// Layer: cuda/sm90 kernel. The producer of the sm90 backward kernels (dK/dV, dQ): thread 0 of
// the producer warpgroup loads the CTA's two own boxes once and, per walk step, the two walked
// boxes of the step's head into a ring of stages guarded by mbarriers, closed by an invalid step
// (the end marker passes the stage's full barrier without data). The own boxes and the first
// steps are issued at kernel start, before the walk's tables are filled. It fills the traits'
// BackwardShapes::Pipeline part of their SharedStorage (kernel/backward_traits.cuh).
#pragma once
#include <cutlass/arch/barrier.h>

#include "cuda/common/tile_walk.h"
#include "cuda/sm90/kernel/backward_traits.cuh"
#include "cuda/sm90/kernel/pieces.cuh"

namespace nattn::cuda::sm90 {

// Thread 0: the TMA loads of the CTA's two own boxes (own_head of own_heads), once. Issued as
// soon as the walk knows the own box (start_backward), before the coverage tables are filled,
// so their latency overlaps the set-up: most of a small grid's CTA time.
template <class Tr>
__device__ __forceinline__ void load_own_boxes(typename Tr::SharedStorage& ss, const BackwardArgs& args, int b,
                                               int own_head, int own_heads) {
  using Element = typename Tr::Element;
  // The own boxes are read by this CTA only.
  constexpr uint64_t kOnce = uint64_t(cute::TMA::CacheHintSm90::EVICT_FIRST);
  int c[3];
  box_coords(ss.walk.own_start, ss.walk.own_off, args.p.g, c);
  cutlass::arch::ClusterTransactionBarrier::arrive_and_expect_tx(&ss.own_full, 2 * Tr::kOwnElems * sizeof(Element));
  for (const int map : {int(kOwnA), int(kOwnB)})
    tma_load_box<Tr::kPanels, Tr::PW>(&args.tma[map], args.mode[map], own_heads, args.head_cols[map], &ss.own_full,
                                      kOnce, map == kOwnA ? ss.own_a : ss.own_b, Tr::kOwnRows, b, own_head, c);
}

// Thread 0: waits until stage `at` is free, publishes step `st` there and, when the step is
// valid, issues its two walked boxes (head walk_head0 + st.head of walk_heads, batch b); an
// invalid step (the end marker) passes the stage's full barrier without data. Returns st.valid.
template <class Tr>
__device__ __forceinline__ bool issue_step(typename Tr::SharedStorage& ss, const BackwardArgs& args,
                                           const StageCursor<Tr::kStages>& at, const Step& st, int b, int walk_head0,
                                           int walk_heads) {
  using Barrier = cutlass::arch::ClusterBarrier;
  // Walked boxes are read again by neighbouring CTAs and heads.
  constexpr uint64_t kShared = uint64_t(cute::TMA::CacheHintSm90::EVICT_LAST);
  Barrier::wait(&ss.empty[at.stage], at.phase ^ 1);  // the first pass over the stages does not wait
  ss.steps[at.stage] = st;
  Barrier::arrive(&ss.info[at.stage]);  // releases the step to the consumers' early column loads
  if (!st.valid) {
    Barrier::arrive(&ss.full[at.stage]);
    return false;
  }
  // Extra steps (dQ: the additional keys) read their 1-D maps; rows past Na come back zero
  // and their columns are masked (mask_walked_keys).
  int c[3];
  const bool extra = step_coords(st, ss.walk, args.p.g, Tr::kWalkRows, c);
  cutlass::arch::ClusterTransactionBarrier::arrive_and_expect_tx(&ss.full[at.stage],
                                                                 2 * Tr::kWalkElems * sizeof(typename Tr::Element));
  auto load = [&](int map, typename Tr::Element* dst) {
    tma_load_box<Tr::kPanels, Tr::PW>(&args.tma[map], args.mode[map], walk_heads, args.head_cols[map],
                                      &ss.full[at.stage], kShared, dst + at.stage * Tr::kWalkElems, Tr::kWalkRows, b,
                                      walk_head0 + st.head, c);
  };
  load(extra ? kExtraA : kWalkA, ss.walk_a);
  load(extra ? kExtraB : kWalkB, ss.walk_b);
  return true;
}

// The walk steps start_backward issues before the coverage tables are filled.
template <class Tr>
inline constexpr int kFirstSteps = Tr::kStages < 2 ? Tr::kStages : 2;

// Thread 0, after start_backward: the rest of the walk, head walk_head0 + step.head of
// walk_heads, from where start_backward left the ring (ss.ring).
template <class Tr>
__device__ __forceinline__ void produce_backward(typename Tr::SharedStorage& ss, const BackwardArgs& args, int b,
                                                 int walk_head0, int walk_heads) {
  if (ss.ring.ended) return;
  StageCursor<Tr::kStages> at = ss.ring.at;
  while (issue_step<Tr>(ss, args, at, ss.walk.advance(), b, walk_head0, walk_heads)) at.next();
}

// All threads, at kernel start: thread 0 initialises the barriers and the walk and issues the
// own boxes' loads (own_head of own_heads, batch b) and the walk's first steps (kFirstSteps;
// walked boxes of head walk_head0 + step.head of walk_heads); then every thread fills the walk's
// coverage tables. The first steps take their coverage from the windows (the tables are not
// filled yet), so their loads, like the own boxes', overlap the set-up: on a short walk (small
// grids) the set-up and the first loads are most of a CTA's time (args.early_steps = false:
// every step after the tables, as before 2026-12-05's seventh session); ss.ring says where
// produce_backward goes on. Returns false when the own
// box is empty (a box past its dilation group's end: nothing to load, compute or write).
// extra_rows: rows of the extra steps after the neighborhood boxes (dQ: the Na additional keys,
// in tiles of the walked rows; the last tile's rows past Na are masked), 0 for none.
template <class Tr>
__device__ __forceinline__ bool start_backward(typename Tr::SharedStorage& ss, const BackwardArgs& args,
                                               int64_t own_box, bool walks_queries, int heads_per_walk, int b,
                                               int own_head, int own_heads, int walk_head0, int walk_heads,
                                               int64_t extra_rows = 0) {
  if (threadIdx.x == 0) {
    cutlass::arch::ClusterTransactionBarrier::init(&ss.own_full, 1);
    for (int i = 0; i < Tr::kStages; ++i) {
      cutlass::arch::ClusterTransactionBarrier::init(&ss.full[i], 1);
      cutlass::arch::ClusterBarrier::init(&ss.empty[i], 128 * Tr::kConsumers);
      cutlass::arch::ClusterBarrier::init(&ss.info[i], 1);
    }
    cutlass::arch::fence_barrier_init();
    const int extra_tiles = int((extra_rows + Tr::kWalkRows - 1) / Tr::kWalkRows);
    ss.walk.init(args.p.g, args.tl, own_box, walks_queries, extra_tiles, Tr::kWalkRows);
    ss.walk.begin(heads_per_walk, extra_rows > 0 ? extra_rows : INT64_MAX);
    StageCursor<Tr::kStages> at;
    bool ended = false;
    if (!ss.walk.empty) {
      load_own_boxes<Tr>(ss, args, b, own_head, own_heads);
      for (int i = 0; args.early_steps && i < kFirstSteps<Tr> && !ended; ++i) {
        ended = !issue_step<Tr>(ss, args, at, ss.walk.advance(false), b, walk_head0, walk_heads);
        if (!ended) at.next();
      }
    }
    ss.ring = {at, ended};
  }
  __syncthreads();
  if (ss.walk.empty) return false;
  ss.walk.fill_tables(int(threadIdx.x), Tr::kThreads);
  return true;
}

}  // namespace nattn::cuda::sm90
