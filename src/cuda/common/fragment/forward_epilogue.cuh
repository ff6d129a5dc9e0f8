// Layer: cuda/common (fragment pieces shared by the sm80 and sm90 families). The forward's
// epilogue for one warp's 16*MI rows of the own query box: O normalised by each row's total
// weight and the natural-log logsumexp, stored at the rows of the caller's out/lse tensors
// (TileWalk own_start/own_off; q_count = TileWalk::own_rows_left of own_start: placed query
// boxes included). Rows past the box are not stored; a row without weight (a query without
// keys) stores O = 0, lse = -inf.
#pragma once
#include <cstdint>

#include "cuda/common/box_index.h"
#include "cuda/common/fragment/epilogue.cuh"
#include "cuda/common/fragment/softmax.cuh"
#include "cuda/common/params.h"
#include "cuda/common/tile_walk.h"

namespace nattn::cuda {

template <class Out, int MI, int OI>
__device__ __forceinline__ void store_forward_rows(const float (&o)[MI][OI][4], const OnlineSoftmax<MI>& softmax,
                                                   const TileWalk& w, const int (&q_count)[3], const Tiling& tl,
                                                   const ForwardParams& p, int64_t b, int h, int row0, int lane) {
  const Geometry& g = p.g;
  float total[MI][2], inv[MI][2];
#pragma unroll
  for (int mi = 0; mi < MI; ++mi)
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      total[mi][hr] = softmax.row_total(mi, hr);
      inv[mi][hr] = total[mi][hr] > 0.f ? 1.f / total[mi][hr] : 0.f;
    }
  Out* o_base = static_cast<Out*>(p.out) + b * p.so.batch + h * p.so.head;
  store_rows<Out>(o, inv, row0, lane, int(g.head_dim_v), [&](int r) -> Out* {
    if (!row_inside(r, tl.own_shift, q_count)) return nullptr;
    int pos[3];
    box_position(r, tl.own_shift, w.own_start, pos);
    return o_base + token_offset(pos, w.own_off, g, p.so);
  });
  if (p.lse == nullptr || lane % 4 != 0) return;
#pragma unroll
  for (int mi = 0; mi < MI; ++mi)
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const int r = row0 + mi * 16 + hr * 8 + lane / 4;
      if (!row_inside(r, tl.own_shift, q_count)) continue;
      int pos[3];
      box_position(r, tl.own_shift, w.own_start, pos);
      p.lse[b * p.slse.batch + h * p.slse.head + token_offset(pos, w.own_off, g, p.slse)] =
          softmax.lse(mi, hr, total[mi][hr]);
    }
}

}  // namespace nattn::cuda
