// Layer: cuda/common (host and device; unit-tested on the host by tests/core/tile_walk_test.cpp).
// The semaphores of the deterministic fast backward: its dK/dV CTAs add each step's dQ partial
// into a float32 workspace in a fixed order per walked query box (TileWalk::ordered_rank), which
// a counter per (batch, query head, dilation group, aligned query box) enforces: a CTA of rank r
// waits until the counter reaches r times its adds per box, adds, and counts its own adds once
// they are complete. This file numbers those counters.
#pragma once
#include <cstdint>

#include "cuda/common/params.h"
#include "cuda/common/tile_walk.h"

namespace nattn::cuda {

// Host: aligned query boxes per axis of any dilation group (a group, or a placed query box's
// share of it, holds at most ceil(extent / dilation) positions), for walked boxes of
// 1 << walk_shift[a] queries; returns the counters of the whole call (batch x query heads x
// dilation groups x boxes).
inline int64_t ordered_dq_boxes(const Geometry& g, const int (&walk_shift)[3], int (&boxes)[3]) {
  int64_t n = g.batch * g.heads_q;
  for (int a = 0; a < 3; ++a) {
    const int64_t positions = (g.extent[a] + g.dilation[a] - 1) / g.dilation[a];
    boxes[a] = int((positions + (int64_t(1) << walk_shift[a]) - 1) >> walk_shift[a]);
    n *= g.dilation[a] * boxes[a];
  }
  return n;
}

// The counter of walked query box st (a neighborhood step of an aligned query walk w) of query
// head `head` in batch b; boxes: ordered_dq_boxes's.
NATTN_HD int64_t ordered_dq_slot(const TileWalk& w, const Step& st, const Geometry& g, const int (&boxes)[3], int b,
                                 int head) {
  int64_t slot = int64_t(b) * g.heads_q + head;
#pragma unroll
  for (int a = 0; a < 3; ++a) slot = slot * g.dilation[a] + w.group[a];
#pragma unroll
  for (int a = 0; a < 3; ++a) slot = slot * boxes[a] + w.query_box_index(a, st);
  return slot;
}

// The launch order of the ordered kernel's CTAs. A CTA waits only on CTAs of its own kv head
// (the counters are per query head) with a larger key box, so key boxes launch in decreasing
// order per head and every CTA waited on was dispatched earlier. CTAs of one head must also add
// into each shared query box one after another: if consecutive CTAs in launch order were all of
// one head (key boxes fastest), a freed SM could start the next CTA only to have it trail the one
// before by an add's round trip (~1.5-2.2 us measured, 2026-12-06: one step plus the counter's
// L2 latency), and the whole launch would run at one CTA per round trip. So groups of
// kOrderedHeadGroup kv heads interleave: consecutive CTAs belong to different heads of the group,
// and a head's CTAs come kOrderedHeadGroup launch slots apart. Four heads keep the group's walked
// queries and dQ workspace (dense 8k d128: ~8 MB a head) within the H100's 50 MB L2.
inline constexpr int kOrderedHeadGroup = 4;

// The (key box, kv head) of launch slot `slot` (x + boxes * y of a (boxes, heads) grid: x runs
// fastest in launch order) of a batch: head groups in order, within a group key boxes in
// decreasing order, the group's heads interleaved.
NATTN_HD void ordered_launch_item(int64_t slot, int64_t boxes, int heads, int64_t* box, int* head) {
  const int64_t per_group = boxes * kOrderedHeadGroup;
  const int group = int(slot / per_group);
  const int64_t r = slot % per_group;
  const int left = heads - group * kOrderedHeadGroup;
  const int size = left < kOrderedHeadGroup ? left : kOrderedHeadGroup;  // the last group may be smaller
  *head = group * kOrderedHeadGroup + int(r % size);
  *box = boxes - 1 - r / size;
}

}  // namespace nattn::cuda
