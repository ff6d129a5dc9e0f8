// Layer: cuda/common. Index math of boxes (a dense sub-grid of one dilation group per axis
// whose extents are powers of two): a box row's coordinates, its group positions, whether it
// lies inside the group, and the element offsets of tokens. Host and device, any family.
#pragma once
#include <cstdint>

#include "core/window.h"
#include "cuda/common/params.h"

namespace nattn::cuda {

// Splits row r of a box whose extents are 1 << shift[a] into per-axis coordinates (axis 2
// fastest), with shifts only: the division this replaces dominated the kernels' instructions.
NATTN_HD void box_local(int r, const int (&shift)[3], int (&l)[3]) {
  l[2] = r & ((1 << shift[2]) - 1);
  l[1] = (r >> shift[2]) & ((1 << shift[1]) - 1);
  l[0] = r >> (shift[1] + shift[2]);
}

// Coordinate along axis A of row r of a box with extents 1 << shift[a].
template <int A>
NATTN_HD int box_coord(int r, const int (&shift)[3]) {
  if (A == 2) return r & ((1 << shift[2]) - 1);
  if (A == 1) return (r >> shift[2]) & ((1 << shift[1]) - 1);
  return r >> (shift[1] + shift[2]);
}

// Group positions of row r of a box starting at start[a].
NATTN_HD void box_position(int r, const int (&shift)[3], const int (&start)[3], int (&pos)[3]) {
  box_local(r, shift, pos);
#pragma unroll
  for (int a = 0; a < 3; ++a) pos[a] += start[a];
}

// True when row r of a box lies inside its group: count[a] = group length - box start.
NATTN_HD bool row_inside(int r, const int (&shift)[3], const int (&count)[3]) {
  int l[3];
  box_local(r, shift, l);
  return l[0] < count[0] && l[1] < count[1] && l[2] < count[2];
}

// Element offset (from the (batch, head) base) of the token at group positions pos.
NATTN_HD int64_t token_offset(const int (&pos)[3], const int (&group)[3], const Geometry& g, const Strides& s) {
  int64_t off = 0;
#pragma unroll
  for (int a = 0; a < 3; ++a) off += int64_t(pos[a] * int(g.dilation[a]) + group[a]) * s.axis[a];
  return off;
}

// The Delta pre-pass's row (BackwardParams::rows: lse2, Delta, 0, 0) of the query at group
// positions pos (group offset group) of head h in batch b.
NATTN_HD const float* pre_pass_row(const BackwardParams& p, int64_t b, int64_t h, const int (&pos)[3],
                                   const int (&group)[3]) {
  return p.rows + b * p.srows.batch + h * p.srows.head + token_offset(pos, group, p.g, p.srows);
}

// Offset of row r of a box from its first token.
NATTN_HD int64_t row_offset(int r, const int (&shift)[3], const Geometry& g, const Strides& s) {
  int l[3];
  box_local(r, shift, l);
  int64_t off = 0;
#pragma unroll
  for (int a = 0; a < 3; ++a) off += int64_t(l[a]) * g.dilation[a] * s.axis[a];
  return off;
}

// Element offset of flat token n (row-major over the full extents) for strides s: walks that
// cover every query in token order (dK/dV of additional keys) use it.
NATTN_HD int64_t flat_token_offset(int64_t n, const Geometry& g, const Strides& s) {
  int64_t off = 0;
#pragma unroll
  for (int a = 2; a >= 0; --a) {
    off += (n % g.extent[a]) * s.axis[a];
    n /= g.extent[a];
  }
  return off;
}

}  // namespace nattn::cuda
