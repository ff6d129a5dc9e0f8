// Layer: cuda/sm90 kernel. The producer of the sm90 backward kernels (dK/dV, dQ): thread 0 of
// the producer warpgroup loads the CTA's two own boxes once and, per walk step, the two walked
// boxes of the step's head into a ring of stages guarded by mbarriers, closed by an invalid step
// (the end marker passes the stage's full barrier without data). It fills the traits'
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

// Thread 0, after start_backward: the walked boxes, walk_head0 + step.head of walk_heads.
template <class Tr>
__device__ __forceinline__ void produce_backward(typename Tr::SharedStorage& ss, const BackwardArgs& args, int b,
                                                 int walk_head0, int walk_heads) {
  using Element = typename Tr::Element;
  using Barrier = cutlass::arch::ClusterBarrier;
  using TxBarrier = cutlass::arch::ClusterTransactionBarrier;
  // Walked boxes are read again by neighbouring CTAs and heads.
  constexpr uint64_t kShared = uint64_t(cute::TMA::CacheHintSm90::EVICT_LAST);
  const Geometry& g = args.p.g;
  TileWalk& w = ss.walk;
  auto load = [&](int map, int heads, int head, uint64_t* bar, uint64_t hint, Element* dst, int rows,
                  const int(&c)[3]) {
    tma_load_box<Tr::kPanels, Tr::PW>(&args.tma[map], args.mode[map], heads, args.head_cols[map], bar, hint, dst, rows,
                                      b, head, c);
  };
  int c[3];
  StageCursor<Tr::kStages> at;
  for (;;) {
    const Step st = w.advance();
    Barrier::wait(&ss.empty[at.stage], at.phase ^ 1);  // the first pass over the stages does not wait
    ss.steps[at.stage] = st;
    Barrier::arrive(&ss.info[at.stage]);  // releases the step to the consumers' early column loads
    if (!st.valid) {
      Barrier::arrive(&ss.full[at.stage]);
      break;
    }
    // Extra steps (dQ: the additional keys) read their 1-D maps; rows past Na come back zero
    // and their columns are masked (mask_walked_keys).
    const bool extra = step_coords(st, w, g, Tr::kWalkRows, c);
    TxBarrier::arrive_and_expect_tx(&ss.full[at.stage], 2 * Tr::kWalkElems * sizeof(Element));
    const int h = walk_head0 + st.head;
    load(extra ? kExtraA : kWalkA, walk_heads, h, &ss.full[at.stage], kShared, ss.walk_a + at.stage * Tr::kWalkElems,
         Tr::kWalkRows, c);
    load(extra ? kExtraB : kWalkB, walk_heads, h, &ss.full[at.stage], kShared, ss.walk_b + at.stage * Tr::kWalkElems,
         Tr::kWalkRows, c);
    at.next();
  }
}

// All threads, at kernel start: thread 0 initialises the barriers and the walk and issues the
// own boxes' loads (own_head of own_heads, batch b); then every thread fills the walk's
// coverage tables. Returns false when the own box is empty (a box past its dilation group's
// end: nothing to load, compute or write). extra_rows: rows of the extra steps after the
// neighborhood boxes (dQ: the Na additional keys, in tiles of the walked rows; the last tile's
// rows past Na are masked), 0 for none.
template <class Tr>
__device__ __forceinline__ bool start_backward(typename Tr::SharedStorage& ss, const BackwardArgs& args,
                                               int64_t own_box, bool walks_queries, int heads_per_walk, int b,
                                               int own_head, int own_heads, int64_t extra_rows = 0) {
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
    if (!ss.walk.empty) load_own_boxes<Tr>(ss, args, b, own_head, own_heads);
  }
  __syncthreads();
  if (ss.walk.empty) return false;
  ss.walk.fill_tables(int(threadIdx.x), Tr::kThreads);
  return true;
}

}  // namespace nattn::cuda::sm90
