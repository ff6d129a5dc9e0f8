// Layer: cuda/common (fragment pieces shared by the sm80 and sm90 families: mma.sync and
// wgmma give each warp the same m16n8 accumulator layout). Masking of partial tiles in the mma.sync accumulator layout
// (row = 16*mi + 8*hr + lane/4, column = 8*ni + 2*(lane%4) + c, element [mi][ni][2*hr + c]).
// A box pair is partial only along some axes (TileWalk::coverage reports which), and the
// window test separates per axis, so each partial axis costs one subtract-and-compare per
// element and full axes cost nothing.
#pragma once
#include <cmath>

#include "core/window.h"
#include "cuda/common/box_index.h"
#include "cuda/common/tile_walk.h"

namespace nattn::cuda {

// All threads: win[a * stride + l] = the window (keys, group positions) of query position
// start[a] + l, for l < 1 << shift[a]; positions past the group are clamped (their rows are
// never stored, or carry lse = +inf). Placed problems clip each window to the key box (an
// empty window masks every key), so keys outside it are masked like keys outside the window
// (TileWalk::mask_window, unit-tested on the host).
// kUnrollAxes (the sm90 dK/dV consumers of one CTA per SM, which fill a partial step's windows
// inside their walk loop; the two-CTA d32 rows spilled more with it): the axes unrolled, so that start, shift and the
// walk's per-axis fields are indexed by constants; with a runtime axis the caller's Step went to local memory (4 stores
// and loads a step, 2026-12-05). The other callers fill once per item and keep the flat loop (unrolled, the sm90 d256
// forward's item preparation spilled 4 bytes).
template <bool kUnrollAxes = false>
__device__ __forceinline__ void fill_axis_windows(int2* win, int stride, const int (&start)[3], const int (&shift)[3],
                                                  const TileWalk& w, int thread, int threads) {
  if constexpr (kUnrollAxes) {
#pragma unroll
    for (int a = 0; a < 3; ++a)
      for (int l = thread; l < (1 << shift[a]); l += threads) {
        const window::Range r = w.mask_window(a, start[a] + l);
        win[a * stride + l] = make_int2(int(r.begin), int(r.end));
      }
  } else {
    for (int i = thread; i < 3 * stride; i += threads) {
      const int a = i / stride, l = i % stride;
      if (l >= (1 << shift[a])) continue;
      const window::Range r = w.mask_window(a, start[a] + l);
      win[i] = make_int2(int(r.begin), int(r.end));
    }
  }
}

namespace detail {
// Along axis A, scores of (query, key) pairs whose key lies outside the query's window become
// -inf. Rows are the CTA's own box and columns the walked box; kRowsAreQueries says which of
// them holds the queries (forward, dQ) and which the keys (dK/dV). win[l] is the window of
// query coordinate l; keys are at k_start + their coordinate. The row side's quantity (a
// query's window relative to the key box, or a key's position) is hoisted out of the column loop.
template <int A, bool kRowsAreQueries, int MI, int NI>
__device__ __forceinline__ void mask_axis(float (&s)[MI][NI][4], const int2* win, const int (&row_shift)[3],
                                          const int (&col_shift)[3], int k_start, int row0, int lane) {
  int lo[MI][2];        // queries as rows: window start - k_start; keys as rows: key position
  unsigned len[MI][2];  // queries as rows: window length
#pragma unroll
  for (int mi = 0; mi < MI; ++mi)
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const int rc = box_coord<A>(row0 + mi * 16 + hr * 8 + lane / 4, row_shift);
      if constexpr (kRowsAreQueries) {
        const int2 w = win[rc];
        lo[mi][hr] = w.x - k_start;
        len[mi][hr] = unsigned(w.y - w.x);
      } else {
        lo[mi][hr] = k_start + rc;
        len[mi][hr] = 0;
      }
    }
#pragma unroll
  for (int ni = 0; ni < NI; ++ni)
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      const int cc = box_coord<A>(ni * 8 + 2 * (lane % 4) + c, col_shift);
      int2 w = make_int2(0, 0);
      if constexpr (!kRowsAreQueries) w = win[cc];
#pragma unroll
      for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
          // key in [window begin, window end) as one unsigned compare
          const bool outside = kRowsAreQueries ? unsigned(cc - lo[mi][hr]) >= len[mi][hr]
                                               : unsigned(lo[mi][hr] - w.x) >= unsigned(w.y - w.x);
          if (outside) s[mi][ni][2 * hr + c] = -INFINITY;
        }
    }
}

template <bool kRowsAreQueries, int MI, int NI>
__device__ __forceinline__ void mask_axes(float (&s)[MI][NI][4], int partial_axes, const int2* win, int stride,
                                          const int (&row_shift)[3], const int (&col_shift)[3], const int (&k_start)[3],
                                          int row0, int lane) {
  if (partial_axes & 1) mask_axis<0, kRowsAreQueries>(s, win, row_shift, col_shift, k_start[0], row0, lane);
  if (partial_axes & 2) mask_axis<1, kRowsAreQueries>(s, win + stride, row_shift, col_shift, k_start[1], row0, lane);
  if (partial_axes & 4)
    mask_axis<2, kRowsAreQueries>(s, win + 2 * stride, row_shift, col_shift, k_start[2], row0, lane);
}
}  // namespace detail

// Rows are the CTA's own queries (windows in win[a * stride + l]), columns the keys of the
// walked box starting at k_start: scores of keys outside a row's window become -inf.
template <int MI, int NI>
__device__ __forceinline__ void mask_rows_are_queries(float (&s)[MI][NI][4], int partial_axes, const int2* win,
                                                      int stride, const int (&q_shift)[3], const int (&k_shift)[3],
                                                      const int (&k_start)[3], int row0, int lane) {
  detail::mask_axes<true>(s, partial_axes, win, stride, q_shift, k_shift, k_start, row0, lane);
}

// Rows are the CTA's own keys (box starting at k_start), columns the queries of the walked
// box (windows in win[a * stride + l]): the transposed orientation of the same test.
template <int MI, int NI>
__device__ __forceinline__ void mask_rows_are_keys(float (&s)[MI][NI][4], int partial_axes, const int2* win, int stride,
                                                   const int (&k_shift)[3], const int (&q_shift)[3],
                                                   const int (&k_start)[3], int row0, int lane) {
  detail::mask_axes<false>(s, partial_axes, win, stride, k_shift, q_shift, k_start, row0, lane);
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
  mask_rows_are_queries(s, st.partial, win, stride, tl.own_shift, tl.walk_shift, start, row0, lane);
}

}  // namespace nattn::cuda
