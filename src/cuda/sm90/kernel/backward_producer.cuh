// Layer: cuda/sm90 kernel. The producer of the sm90 backward kernels (dK/dV, dQ): thread 0 of
// the producer warpgroup loads the CTA's two own boxes once and, per walk step, the two walked
// boxes of the step's head into a ring of stages guarded by mbarriers, closed by an invalid step
// (the end marker passes the stage's full barrier without data). The own boxes and the first
// steps are issued at kernel start, before the walk's tables are filled. It fills the traits'
// BackwardShapes::Pipeline part of their SharedStorage (kernel/backward_traits.cuh).
// The persistent variant (Tr::kPersistent, below): a CTA runs work items blockIdx.x,
// + gridDim.x, ...; producer warps 1-3 prepare each item's walk and tables in one of two item
// slots while the item before runs, thread 0 loads each item's own boxes (once the consumers are
// done with the last item's: own_empty) and its walked boxes into the ring, which runs on across
// items (BackwardShapes::ItemPipeline).
#pragma once
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>

#include "cuda/common/ordered_dq.h"
#include "cuda/common/tile_walk.h"
#include "cuda/sm90/kernel/backward_traits.cuh"
#include "cuda/sm90/kernel/pieces.cuh"

namespace nattn::cuda::sm90 {

// Thread 0: the TMA loads of the CTA's two own boxes (own_head of own_heads), once. Issued as
// soon as the walk knows the own box (start_backward), before the coverage tables are filled,
// so their latency overlaps the set-up: most of a small grid's CTA time.
template <class Tr>
__device__ __forceinline__ void load_own_boxes(typename Tr::SharedStorage& ss, const TileWalk& w,
                                               const BackwardArgs& args, int b, int own_head, int own_heads) {
  using Element = typename Tr::Element;
  // The own boxes are read by this CTA only.
  constexpr uint64_t kOnce = uint64_t(cute::TMA::CacheHintSm90::EVICT_FIRST);
  int c[3];
  box_coords(w.own_start, w.own_off, args.p.g, c);
  cutlass::arch::ClusterTransactionBarrier::arrive_and_expect_tx(&ss.own_full, 2 * Tr::kOwnElems * sizeof(Element));
  for (const int map : {int(kOwnA), int(kOwnB)})
    tma_load_box<Tr::kPanels, Tr::PW>(&args.tma[map], args.mode[map], own_heads, args.head_cols[map], &ss.own_full,
                                      kOnce, map == kOwnA ? ss.own_a : ss.own_b, Tr::kOwnRows, b, own_head, c);
}

// Thread 0: waits until stage `at` is free, publishes step `st` of walk w there and, when the
// step is valid, issues its two walked boxes (head walk_head0 + st.head of walk_heads, batch b);
// an invalid step (the end marker) passes the stage's full barrier without data. Returns
// st.valid.
template <class Tr>
__device__ __forceinline__ bool issue_step(typename Tr::SharedStorage& ss, const TileWalk& w, const BackwardArgs& args,
                                           const StageCursor<Tr::kStages>& at, const Step& st, int b, int walk_head0,
                                           int walk_heads) {
  using Barrier = cutlass::arch::ClusterBarrier;
  // Walked boxes are read again by neighbouring CTAs and heads.
  constexpr uint64_t kShared = uint64_t(cute::TMA::CacheHintSm90::EVICT_LAST);
  Barrier::wait(&ss.empty[at.stage], at.phase ^ 1);  // the first pass over the stages does not wait
  ss.steps[at.stage] = st;
  if (!st.valid) {
    Barrier::arrive(&ss.full[at.stage]);
    return false;
  }
  // The ordered dQ adds' counter and rank of the step's box (published with the step).
  if constexpr (Tr::kOrderedDq)
    ss.dq_order[at.stage] =
        make_int2(int(ordered_dq_slot(w, st, args.p.g, args.order_boxes, b, walk_head0 + st.head)), w.ordered_rank(st));
  // Extra steps (dQ: the additional keys) read their 1-D maps; rows past Na come back zero
  // and their columns are masked (mask_walked_keys).
  int c[3];
  const bool extra = step_coords(st, w, args.p.g, Tr::kWalkRows, c);
  int bytes = 2 * Tr::kWalkElems * int(sizeof(typename Tr::Element));
  if constexpr (Tr::kWalkRowsByTma) bytes += Tr::kRowsBytes;
  cutlass::arch::ClusterTransactionBarrier::arrive_and_expect_tx(&ss.full[at.stage], uint32_t(bytes));
  auto load = [&](int map, typename Tr::Element* dst) {
    tma_load_box<Tr::kPanels, Tr::PW>(&args.tma[map], args.mode[map], walk_heads, args.head_cols[map],
                                      &ss.full[at.stage], kShared, dst + at.stage * Tr::kWalkElems, Tr::kWalkRows, b,
                                      walk_head0 + st.head, c);
  };
  load(extra ? kExtraA : kWalkA, ss.walk_a);
  load(extra ? kExtraB : kWalkB, ss.walk_b);
  // dK/dV: the walked queries' lse2 and Delta (the row workspace, in the same boxes as Q; rows
  // outside the tensor come back zero, as do their Q and dO, so their P^T dO and dS^T add 0).
  if constexpr (Tr::kWalkRowsByTma)
    tma_load_box<1, kRowColumns>(&args.tma[kWalkRows], args.mode[kWalkRows], walk_heads, args.head_cols[kWalkRows],
                                 &ss.full[at.stage], kShared, &ss.walk_rows[at.stage][0][0], Tr::kWalkRows, b,
                                 walk_head0 + st.head, c);
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
  while (issue_step<Tr>(ss, ss.walk, args, at, ss.walk.advance(), b, walk_head0, walk_heads)) at.next();
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
    }
    cutlass::arch::fence_barrier_init();
    const int extra_tiles = int((extra_rows + Tr::kWalkRows - 1) / Tr::kWalkRows);
    ss.walk.init(args.p.g, args.tl, own_box, walks_queries, extra_tiles, Tr::kWalkRows, Tr::kOrderedDq);
    ss.walk.begin(heads_per_walk, extra_rows > 0 ? extra_rows : INT64_MAX);
    StageCursor<Tr::kStages> at;
    bool ended = false;
    if (!ss.walk.empty) {
      load_own_boxes<Tr>(ss, ss.walk, args, b, own_head, own_heads);
      for (int i = 0; args.early_steps && i < kFirstSteps<Tr> && !ended; ++i) {
        ended = !issue_step<Tr>(ss, ss.walk, args, at, ss.walk.advance(false), b, walk_head0, walk_heads);
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

// The consumers' cursors: the stage ring, the own boxes' phase, the count of partial walk
// steps (the parity of the dK/dV kernel's window tables) and the fast dK/dV kernel's count of
// steps (the parity of its dS buffers and, below head dim 128, which warpgroup runs a step's dQ
// product). The default kernels' start at zero for their one item; the persistent variant's run
// on across items, so that an item's first step never reuses the last one's dS buffer.
template <int kStages>
struct ConsumerCursors {
  StageCursor<kStages> at;
  uint32_t own_phase = 0;
  int partials = 0;
  int steps = 0;
};

// ---- The persistent variant (Tr::kPersistent) ----

// Work item `item` of a persistent launch (BackwardArgs items/boxes/heads): its own box, head
// and batch.
__device__ __forceinline__ void decode_backward_item(int item, const BackwardArgs& args, int64_t& box, int& head,
                                                     int& b) {
  box = item % args.boxes;
  const int rest = item / args.boxes;
  head = rest % args.heads;
  b = rest / args.heads;
}

// Thread 0 at kernel start: every barrier of the item pipeline.
template <class Tr>
__device__ __forceinline__ void init_item_barriers(typename Tr::SharedStorage& ss) {
  using Barrier = cutlass::arch::ClusterBarrier;
  using TxBarrier = cutlass::arch::ClusterTransactionBarrier;
  TxBarrier::init(&ss.own_full, 1);
  Barrier::init(&ss.own_empty, 128 * Tr::kConsumers);
  for (int i = 0; i < Tr::kStages; ++i) {
    TxBarrier::init(&ss.full[i], 1);
    Barrier::init(&ss.empty[i], 128 * Tr::kConsumers);
  }
  for (int i = 0; i < 2; ++i) {
    Barrier::init(&ss.item_full[i], 96);  // producer warps 1-3, each writer arriving itself
    // The consumers and the TMA thread (which steps the walk) release a slot.
    Barrier::init(&ss.item_empty[i], 128 * Tr::kConsumers + 1);
  }
  cutlass::arch::fence_barrier_init();
}

// Producer warps 1-3 (96 threads): per work item, its walk (walks_queries: the dK/dV kernel;
// heads_per_walk query heads per kv head; extra_rows: the dQ kernel's additional keys, walked
// after the neighborhood boxes in tiles of the walked rows, the last tile's rows past Na masked)
// and coverage tables in the item's slot, then the kernel's own tables of the item
// (tables(item, thread) over 96 threads). Two slots: the next item is prepared while this one
// runs. An empty walk (an own box past its dilation group's end) is passed on as such.
template <class Tr, class Tables>
__device__ __forceinline__ void prepare_backward_items(typename Tr::SharedStorage& ss, const BackwardArgs& args,
                                                       bool walks_queries, int heads_per_walk, int64_t extra_rows,
                                                       Tables&& tables) {
  using Barrier = cutlass::arch::ClusterBarrier;
  const int tid = int(threadIdx.x) - 32;  // 0..95
  const int extra_tiles = int((extra_rows + Tr::kWalkRows - 1) / Tr::kWalkRows);
  int n = 0;
  for (int item = int(blockIdx.x); item < args.items; item += int(gridDim.x), ++n) {
    const int slot = n & 1;
    auto& it = ss.item[slot];
    Barrier::wait(&ss.item_empty[slot], ((n >> 1) & 1) ^ 1);  // a slot's first use does not wait
    if (tid == 0) {
      int64_t box;
      decode_backward_item(item, args, box, it.head, it.b);
      it.walk.init(args.p.g, args.tl, box, walks_queries, extra_tiles, Tr::kWalkRows);
      it.walk.begin(heads_per_walk, extra_rows > 0 ? extra_rows : INT64_MAX);
    }
    cutlass::arch::NamedBarrier::sync(96, 4);  // the walk is initialised before the tables
    if (!it.walk.empty) {
      it.walk.fill_tables(tid, 96);
      tables(it, tid);
    }
    // Every writer arrives itself (count 96): its writes are released to the waiters directly.
    Barrier::arrive(&ss.item_full[slot]);
  }
}

// Producer thread 0: per prepared item, the TMA loads of its two own boxes (own_heads: the head
// count of their tensors; the item's head) once the consumers are done with the last item's,
// then per walk step the two walked boxes of head walk_head(item head) + step.head of walk_heads
// into the ring, closed by an end marker (issue_step). The ring runs on across items, so the
// next item's own boxes and first steps load while the consumers finish this one. Every step
// reads the item's filled tables (args.early_steps does not apply: the item was prepared ahead).
template <class Tr, class WalkHead>
__device__ __forceinline__ void produce_backward_items(typename Tr::SharedStorage& ss, const BackwardArgs& args,
                                                       int own_heads, WalkHead&& walk_head, int walk_heads) {
  using Barrier = cutlass::arch::ClusterBarrier;
  StageCursor<Tr::kStages> at;
  uint32_t own_phase = 0;
  int n = 0;
  for (int item = int(blockIdx.x); item < args.items; item += int(gridDim.x), ++n) {
    const int slot = n & 1;
    Barrier::wait(&ss.item_full[slot], (n >> 1) & 1);
    auto& it = ss.item[slot];
    TileWalk& w = it.walk;
    if (!w.empty) {
      Barrier::wait(&ss.own_empty, own_phase ^ 1);  // the first item does not wait
      load_own_boxes<Tr>(ss, w, args, it.b, it.head, own_heads);
      own_phase ^= 1;
      const int walk_head0 = walk_head(it.head);
      while (issue_step<Tr>(ss, w, args, at, w.advance(), it.b, walk_head0, walk_heads)) at.next();
      at.next();  // the end marker's stage
    }
    Barrier::arrive(&ss.item_empty[slot]);  // the walk is stepped to its end
  }
}

// The consumer warpgroups: every work item of this CTA, in the producer's order; run_item(it,
// cs) runs one whose walk is not empty, cs the cursors that run on across items.
template <class Tr, class RunItem>
__device__ __forceinline__ void consume_backward_items(typename Tr::SharedStorage& ss, const BackwardArgs& args,
                                                       RunItem&& run_item) {
  ConsumerCursors<Tr::kStages> cs;
  int n = 0;
  for (int item = int(blockIdx.x); item < args.items; item += int(gridDim.x), ++n) {
    const int slot = n & 1;
    cutlass::arch::ClusterBarrier::wait(&ss.item_full[slot], (n >> 1) & 1);
    if (!ss.item[slot].walk.empty) run_item(ss.item[slot], cs);
    cutlass::arch::ClusterBarrier::arrive(&ss.item_empty[slot]);
  }
}

// The persistent kernels' roles: thread 0 initialises the barriers; then producer warp 0's
// thread 0 loads, warps 1-3 prepare items, the consumer warpgroups run them.
template <class Tr, class Produce, class Prepare, class Consume>
__device__ __forceinline__ void run_backward_roles(typename Tr::SharedStorage& ss, Produce&& produce, Prepare&& prepare,
                                                   Consume&& consume) {
  if (threadIdx.x == 0) init_item_barriers<Tr>(ss);
  __syncthreads();
  if (threadIdx.x < 128) {
    cutlass::arch::warpgroup_reg_dealloc<Tr::kProducerRegs>();
    if (threadIdx.x == 0)
      produce();
    else if (threadIdx.x >= 32)
      prepare();
  } else {
    cutlass::arch::warpgroup_reg_alloc<Tr::kConsumerRegs>();
    consume();
  }
}

}  // namespace nattn::cuda::sm90
