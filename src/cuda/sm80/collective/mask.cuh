// Layer: cuda/sm80 collective. Masking of partial tiles in the mma.sync accumulator layout
// (row = 16*mi + 8*hr + lane/4, column = 8*ni + 2*(lane%4) + c, element [mi][ni][2*hr + c]).
// A box pair is partial only along some axes (TileWalk::coverage reports which), and the
// window test separates per axis, so each partial axis costs one subtract-and-compare per
// element and full axes cost nothing.
#pragma once
#include <cmath>

#include "core/window.h"
#include "cuda/common/tile_walk.h"

namespace nattn::cuda::sm80 {

// Coordinate along axis A of row r of a box with extents 1 << shift[a].
template <int A>
__device__ __forceinline__ int box_coord(int r, const int (&shift)[3]) {
  if (A == 2) return r & ((1 << shift[2]) - 1);
  if (A == 1) return (r >> shift[2]) & ((1 << shift[1]) - 1);
  return r >> (shift[1] + shift[2]);
}

// All threads: win[a * stride + l] = the window (keys, group positions) of query position
// start[a] + l, for l < 1 << shift[a]; positions past the group are clamped (their rows are
// never stored, or carry lse = +inf).
__device__ __forceinline__ void fill_axis_windows(int2* win, int stride, const int (&start)[3], const int (&shift)[3],
                                                  const TileWalk& w, int thread, int threads) {
  for (int i = thread; i < 3 * stride; i += threads) {
    const int a = i / stride, l = i % stride;
    if (l >= (1 << shift[a])) continue;
    const int p = start[a] + l < w.lg[a] ? start[a] + l : w.lg[a] - 1;
    const window::Range r = window::group_window(p, w.geo.Lg[a], w.geo.kernel[a], w.geo.stride[a], w.geo.causal[a]);
    win[i] = make_int2(int(r.begin), int(r.end));
  }
}

namespace detail {
template <int A, int MI, int NI>
__device__ __forceinline__ void mask_axis_rows_are_queries(float (&s)[MI][NI][4], const int2* win, const int (&q_shift)[3],
                                                           const int (&k_shift)[3], int k_start, int row0, int lane) {
  int lo[MI][2];
  unsigned len[MI][2];
#pragma unroll
  for (int mi = 0; mi < MI; ++mi)
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const int2 w = win[box_coord<A>(row0 + mi * 16 + hr * 8 + lane / 4, q_shift)];
      lo[mi][hr] = w.x - k_start;
      len[mi][hr] = unsigned(w.y - w.x);
    }
#pragma unroll
  for (int ni = 0; ni < NI; ++ni)
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      const int lk = box_coord<A>(ni * 8 + 2 * (lane % 4) + c, k_shift);
#pragma unroll
      for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int hr = 0; hr < 2; ++hr)
          if (unsigned(lk - lo[mi][hr]) >= len[mi][hr]) s[mi][ni][2 * hr + c] = -INFINITY;
    }
}

template <int A, int MI, int NI>
__device__ __forceinline__ void mask_axis_rows_are_keys(float (&s)[MI][NI][4], const int2* win, const int (&k_shift)[3],
                                                        const int (&q_shift)[3], int k_start, int row0, int lane) {
  int kp[MI][2];
#pragma unroll
  for (int mi = 0; mi < MI; ++mi)
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) kp[mi][hr] = k_start + box_coord<A>(row0 + mi * 16 + hr * 8 + lane / 4, k_shift);
#pragma unroll
  for (int ni = 0; ni < NI; ++ni)
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      const int2 w = win[box_coord<A>(ni * 8 + 2 * (lane % 4) + c, q_shift)];
#pragma unroll
      for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int hr = 0; hr < 2; ++hr)
          if (unsigned(kp[mi][hr] - w.x) >= unsigned(w.y - w.x)) s[mi][ni][2 * hr + c] = -INFINITY;
    }
}
}  // namespace detail

// Rows are the CTA's own queries (windows in win[a * stride + l]), columns the keys of the
// walked box starting at k_start: scores of keys outside a row's window become -inf.
template <int MI, int NI>
__device__ __forceinline__ void mask_rows_are_queries(float (&s)[MI][NI][4], int partial_axes, const int2* win,
                                                      int stride, const int (&q_shift)[3], const int (&k_shift)[3],
                                                      const int (&k_start)[3], int row0, int lane) {
  if (partial_axes & 1) detail::mask_axis_rows_are_queries<0>(s, win, q_shift, k_shift, k_start[0], row0, lane);
  if (partial_axes & 2) detail::mask_axis_rows_are_queries<1>(s, win + stride, q_shift, k_shift, k_start[1], row0, lane);
  if (partial_axes & 4) detail::mask_axis_rows_are_queries<2>(s, win + 2 * stride, q_shift, k_shift, k_start[2], row0, lane);
}

// Rows are the CTA's own keys (box starting at k_start), columns the queries of the walked
// box (windows in win[a * stride + l]): the transposed test of mask_rows_are_queries.
template <int MI, int NI>
__device__ __forceinline__ void mask_rows_are_keys(float (&s)[MI][NI][4], int partial_axes, const int2* win, int stride,
                                                   const int (&k_shift)[3], const int (&q_shift)[3],
                                                   const int (&k_start)[3], int row0, int lane) {
  if (partial_axes & 1) detail::mask_axis_rows_are_keys<0>(s, win, k_shift, q_shift, k_start[0], row0, lane);
  if (partial_axes & 2) detail::mask_axis_rows_are_keys<1>(s, win + stride, k_shift, q_shift, k_start[1], row0, lane);
  if (partial_axes & 4) detail::mask_axis_rows_are_keys<2>(s, win + 2 * stride, k_shift, q_shift, k_start[2], row0, lane);
}

// Columns at or past `valid` (additional keys past Na) become -inf.
template <int MI, int NI>
__device__ __forceinline__ void mask_columns_from(float (&s)[MI][NI][4], int64_t valid, int lane) {
#pragma unroll
  for (int ni = 0; ni < NI; ++ni)
#pragma unroll
    for (int c = 0; c < 2; ++c)
      if (ni * 8 + 2 * (lane % 4) + c >= valid)
#pragma unroll
        for (int mi = 0; mi < MI; ++mi) s[mi][ni][c] = s[mi][ni][2 + c] = -INFINITY;
}

// Forward / dQ: masks S (own queries x the keys of walk step st, which is not full): the
// additional-key columns past Na, or keys outside the rows' windows along the partial axes.
template <int BN, int MI, int NI>
__device__ __forceinline__ void mask_walked_keys(float (&s)[MI][NI][4], const Step& st, const TileWalk& w,
                                                 int64_t num_additional, const int2* win, int stride, const Tiling& tl,
                                                 int row0, int lane) {
  if (st.tile >= w.nbr_tiles) {
    mask_columns_from(s, num_additional - int64_t(st.tile - w.nbr_tiles) * BN, lane);
    return;
  }
  int start[3];
#pragma unroll
  for (int a = 0; a < 3; ++a) start[a] = st.start[a];
  mask_rows_are_queries(s, st.partial, win, stride, tl.fixed_shift, tl.walk_shift, start, row0, lane);
}

}  // namespace nattn::cuda::sm80
