// Layer: cuda/common (host and device; unit-tested on the host by tests/core/ordered_dq_test.cpp).
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

}  // namespace nattn::cuda
