// Layer: core. The neighborhood of SPEC.md, per axis, for host and device code.
//
// Everything works in "group positions": dilation d splits an axis of extent L into d
// interleaved groups (g = i mod d, p = i div d), and a window is a contiguous range of group
// positions. Within a group both ends of the window are non-decreasing in the query position
// (it needs Lg >= k, which k * d <= L guarantees), which is what makes the inverse map and the
// tile helpers simple ranges.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define NATTN_HD __host__ __device__ __forceinline__
#define NATTN_HD_CALL __host__ __device__  // host+device, inlined at the compiler's discretion
#else
#define NATTN_HD inline
#define NATTN_HD_CALL inline
#endif

namespace nattn::window {

// Half-open range [begin, end).
struct Range {
  int64_t begin = 0;
  int64_t end = 0;
  NATTN_HD constexpr int64_t size() const { return end - begin; }
  NATTN_HD constexpr bool empty() const { return end <= begin; }
  NATTN_HD constexpr bool contains(int64_t x) const { return begin <= x && x < end; }
};

// The window parameters of one axis (SPEC.md).
struct Axis {
  int64_t extent = 1;    // L
  int64_t kernel = 2;    // k
  int64_t stride = 1;    // s
  int64_t dilation = 1;  // d
  bool causal = false;
};

NATTN_HD constexpr int64_t group_of(const Axis& a, int64_t i) { return i % a.dilation; }
NATTN_HD constexpr int64_t position_of(const Axis& a, int64_t i) { return i / a.dilation; }
NATTN_HD constexpr int64_t index_of(const Axis& a, int64_t group, int64_t pos) { return pos * a.dilation + group; }
// Lg: the number of axis indices in dilation group g.
NATTN_HD constexpr int64_t group_length(const Axis& a, int64_t g) {
  return a.extent / a.dilation + (g < a.extent % a.dilation ? 1 : 0);
}

// The keys (group positions) that query position p of a group of length Lg attends to, in
// integers of type I: int64_t everywhere, int32_t where the device's walk set-up knows every
// parameter is below 2^29 (fits32), so that no step overflows: the same results, with 32-bit
// divisions instead of 64-bit ones (a 64-bit division is a ~70-instruction subroutine on GPUs).
template <class I>
struct RangeOf {
  I begin, end;
};
template <class I>
NATTN_HD constexpr RangeOf<I> group_window_in(I p, I Lg, I k, I s, bool causal) {
  if (causal) {
    I leader = (p / s) * s + s - 1;  // last query of p's stride group
    if (leader > Lg - 1) leader = Lg - 1;
    I start = leader - (k - 1);
    if (start < 0) start = 0;
    I end = p + 1 < Lg ? p + 1 : Lg;  // never past the query itself
    return {start, end};
  }
  const I wl = k / 2;
  const I wr = k / 2 + (k % 2) - 1;
  I leader = (p / s) * s + s / 2;  // centre query of p's stride group
  if (leader > Lg - 1) leader = Lg - 1;
  I start = leader - wl;
  if (start < 0) start = 0;
  if (leader + wr >= Lg) start += Lg - wr - leader - 1;  // shift left at the far border
  return {start, start + k};
}

NATTN_HD constexpr Range group_window(int64_t p, int64_t Lg, int64_t k, int64_t s, bool causal) {
  const RangeOf<int64_t> w = group_window_in<int64_t>(p, Lg, k, s, causal);
  return {w.begin, w.end};
}

NATTN_HD constexpr Range group_window(const Axis& a, int64_t g, int64_t p) {
  return group_window(p, group_length(a, g), a.kernel, a.stride, a.causal);
}

// Whether a group's parameters fit the 32-bit window arithmetic (group_window_in's intermediates
// stay below Lg + k + s < 2^31).
NATTN_HD constexpr bool fits32(int64_t Lg, int64_t k, int64_t s) {
  return Lg < (int64_t(1) << 29) && k < (int64_t(1) << 29) && s < (int64_t(1) << 29);
}

// The queries (group positions) whose window contains key position t. Because both window
// ends are monotone in p, that set is the range [first p with end(p) > t, last p with
// start(p) <= t]; a binary search finds each end (O(log Lg), fine on device once per tile/key).
// first_attending and last_attending_end are the two searches alone (a key range's query union
// needs one of each), in the integer type I (group_window_in).
template <class I>
NATTN_HD constexpr I first_attending(I t, I Lg, I k, I s, bool causal) {
  I lo = 0, hi = Lg;  // first p with end(p) > t
  while (lo < hi) {
    const I mid = lo + (hi - lo) / 2;
    if (group_window_in<I>(mid, Lg, k, s, causal).end > t)
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo;
}
template <class I>
NATTN_HD constexpr I last_attending_end(I t, I Lg, I k, I s, bool causal) {
  I lo = 0, hi = Lg;  // first p with start(p) > t
  while (lo < hi) {
    const I mid = lo + (hi - lo) / 2;
    if (group_window_in<I>(mid, Lg, k, s, causal).begin > t)
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo;
}

NATTN_HD constexpr Range group_inverse(int64_t t, int64_t Lg, int64_t k, int64_t s, bool causal) {
  const int64_t first = first_attending<int64_t>(t, Lg, k, s, causal);
  const int64_t last_plus_one = last_attending_end<int64_t>(t, Lg, k, s, causal);
  return {first, last_plus_one > first ? last_plus_one : first};
}

NATTN_HD constexpr Range group_inverse(const Axis& a, int64_t g, int64_t t) {
  return group_inverse(t, group_length(a, g), a.kernel, a.stride, a.causal);
}

// Floor of n / d for any sign of n (d > 0).
NATTN_HD constexpr int64_t floor_div(int64_t n, int64_t d) { return n >= 0 ? n / d : -((-n + d - 1) / d); }

NATTN_HD constexpr Range intersect(Range x, Range y) {
  const int64_t b = x.begin > y.begin ? x.begin : y.begin;
  const int64_t e = x.end < y.end ? x.end : y.end;
  return {b, e > b ? e : b};
}

// The group positions of group g whose axis index lies in [lo, hi) (clipped to the group).
NATTN_HD constexpr Range group_positions_in(const Axis& a, int64_t g, int64_t lo, int64_t hi) {
  const int64_t d = a.dilation;
  return intersect({floor_div(lo - g + d - 1, d), floor_div(hi - g + d - 1, d)}, {0, group_length(a, g)});
}

// ---- Placed boxes (SPEC.md "Placed boxes"): `Axis` is the global axis (extent = G); the
// queries are the box [q_origin, q_origin + q_extent) of it, the keys [k_origin, k_origin +
// k_extent). Windows are evaluated in global coordinates and clipped to the key box.
struct Boxes {
  int64_t q_origin = 0, q_extent = 1, k_origin = 0, k_extent = 1;
};

// The keys (group positions, clipped to the key box) of local query i; *group receives its
// dilation group. Key position t has local index t * d + group - k_origin.
NATTN_HD constexpr Range placed_keys(const Axis& a, const Boxes& b, int64_t i, int64_t* group) {
  const int64_t gi = b.q_origin + i;
  const int64_t g = group_of(a, gi);
  *group = g;
  return intersect(group_window(a, g, position_of(a, gi)),
                   group_positions_in(a, g, b.k_origin, b.k_origin + b.k_extent));
}

// The queries (group positions, clipped to the query box) whose window holds local key j.
// Query position p has local index p * d + group - q_origin.
NATTN_HD constexpr Range placed_queries(const Axis& a, const Boxes& b, int64_t j, int64_t* group) {
  const int64_t gj = b.k_origin + j;
  const int64_t g = group_of(a, gj);
  *group = g;
  return intersect(group_inverse(a, g, position_of(a, gj)),
                   group_positions_in(a, g, b.q_origin, b.q_origin + b.q_extent));
}

// Keys attended, summed over the queries of the box (the placed form of window_size_sum).
NATTN_HD constexpr int64_t placed_window_size_sum(const Axis& a, const Boxes& b) {
  int64_t total = 0, g = 0;
  for (int64_t i = 0; i < b.q_extent; ++i) total += placed_keys(a, b, i, &g).size();
  return total;
}

// Number of keys each query attends to, summed over every query of the axis (used for
// counting attended pairs: the multi-axis count is the product of the per-axis sums).
NATTN_HD constexpr int64_t window_size_sum(const Axis& a) {
  int64_t total = 0;
  for (int64_t g = 0; g < a.dilation && g < a.extent; ++g) {
    const int64_t Lg = group_length(a, g);
    for (int64_t p = 0; p < Lg; ++p) total += group_window(p, Lg, a.kernel, a.stride, a.causal).size();
  }
  return total;
}

}  // namespace nattn::window
