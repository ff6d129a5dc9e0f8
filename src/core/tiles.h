// Layer: core. Tile-range helpers for fused kernels (host and device).
//
// A query tile is a box of query group positions (one dilation group per axis, so the box
// is a dense sub-grid). These helpers give the key box that covers every window of the
// tile, and classify a key box as fully inside every query's window (run unmasked), fully
// outside all of them (skip) or partial (mask). Because windows are ranges with monotone
// ends and consecutive windows overlap or touch (s <= k), all three answers are exact per
// axis, and a multi-axis box combines them: full iff full on every axis, outside iff outside
// on some axis.
#pragma once
#include <cstdint>

#include "core/window.h"

namespace nattn::tiles {

using window::Range;

enum class Coverage : int { kOutside = 0, kPartial = 1, kFull = 2 };

// Union of the windows of query positions q (non-empty) in a group of length Lg.
NATTN_HD constexpr Range key_union(Range q, int64_t Lg, int64_t k, int64_t s, bool causal) {
  return {window::group_window(q.begin, Lg, k, s, causal).begin, window::group_window(q.end - 1, Lg, k, s, causal).end};
}

// Keys that every query of q attends to (may be empty).
NATTN_HD constexpr Range key_intersection(Range q, int64_t Lg, int64_t k, int64_t s, bool causal) {
  return {window::group_window(q.end - 1, Lg, k, s, causal).begin, window::group_window(q.begin, Lg, k, s, causal).end};
}

NATTN_HD constexpr Coverage classify(Range q, Range keys, int64_t Lg, int64_t k, int64_t s, bool causal) {
  const Range u = key_union(q, Lg, k, s, causal);
  if (keys.end <= u.begin || keys.begin >= u.end) return Coverage::kOutside;
  const Range x = key_intersection(q, Lg, k, s, causal);
  if (x.begin <= keys.begin && keys.end <= x.end) return Coverage::kFull;
  return Coverage::kPartial;
}

// The queries whose windows meet the key range `keys` (non-empty; backward kernels iterate
// this): the first query attending its first key to the last attending its last, one binary
// search each (group_inverse's other two are not needed), in 32-bit integers where they fit.
// It is the sm90 dK/dV kernels' CTA set-up's largest cost: one thread runs it while the CTA
// waits (ncu, 2026-12-05: ~4% of the fast kernel's time on dense 8k, with four 64-bit searches).
template <class I>
NATTN_HD constexpr Range query_union_in(Range keys, I Lg, I k, I s, bool causal) {
  const I first = window::first_attending<I>(I(keys.begin), Lg, k, s, causal);
  const I last = window::last_attending_end<I>(I(keys.end - 1), Lg, k, s, causal);
  return {first, last > first ? last : first};
}
NATTN_HD constexpr Range query_union(Range keys, int64_t Lg, int64_t k, int64_t s, bool causal) {
  return window::fits32(Lg, k, s) ? query_union_in<int32_t>(keys, int32_t(Lg), int32_t(k), int32_t(s), causal)
                                  : query_union_in<int64_t>(keys, Lg, k, s, causal);
}

// Multi-axis boxes, one Range per axis, in group positions of one dilation group per axis.
template <int R>
struct Box {
  Range r[R];
  NATTN_HD constexpr int64_t volume() const {
    int64_t v = 1;
    for (int a = 0; a < R; ++a) v *= r[a].size();
    return v;
  }
};

// Per-axis group lengths and parameters of a tile's dilation group.
template <int R>
struct GroupGeometry {
  int64_t Lg[R];
  int64_t kernel[R];
  int64_t stride[R];
  bool causal[R];
};

template <int R>
NATTN_HD constexpr GroupGeometry<R> geometry(const window::Axis* axes, const int64_t* group) {
  GroupGeometry<R> g{};
  for (int a = 0; a < R; ++a) {
    g.Lg[a] = window::group_length(axes[a], group[a]);
    g.kernel[a] = axes[a].kernel;
    g.stride[a] = axes[a].stride;
    g.causal[a] = axes[a].causal;
  }
  return g;
}

template <int R>
NATTN_HD constexpr Box<R> key_box(const Box<R>& q, const GroupGeometry<R>& g) {
  Box<R> out{};
  for (int a = 0; a < R; ++a) out.r[a] = key_union(q.r[a], g.Lg[a], g.kernel[a], g.stride[a], g.causal[a]);
  return out;
}

template <int R>
NATTN_HD constexpr Box<R> query_box(const Box<R>& keys, const GroupGeometry<R>& g) {
  Box<R> out{};
  for (int a = 0; a < R; ++a) out.r[a] = query_union(keys.r[a], g.Lg[a], g.kernel[a], g.stride[a], g.causal[a]);
  return out;
}

template <int R>
NATTN_HD constexpr Coverage classify_box(const Box<R>& q, const Box<R>& keys, const GroupGeometry<R>& g) {
  bool full = true;
  for (int a = 0; a < R; ++a) {
    const Coverage c = classify(q.r[a], keys.r[a], g.Lg[a], g.kernel[a], g.stride[a], g.causal[a]);
    if (c == Coverage::kOutside) return Coverage::kOutside;
    if (c != Coverage::kFull) full = false;
  }
  return full ? Coverage::kFull : Coverage::kPartial;
}

}  // namespace nattn::tiles
