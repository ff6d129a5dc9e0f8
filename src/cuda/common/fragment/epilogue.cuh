// Layer: cuda/common (fragment pieces shared by the sm80 and sm90 families: mma.sync and
// wgmma give each warp the same m16n8 accumulator layout). Stores of a warp's [16*MI x HD] fp32 accumulator (mma.sync
// layout: row 16*mi + 8*hr + lane/4, columns 8*oi + 2*(lane%4) + {0,1}) to global rows, two
// elements per 32-bit store: O in the forward, dQ, dK and dV in the backward.
#pragma once
#include <cstdint>

#include "cuda/common/fragment/pack.cuh"

namespace nattn::cuda {

// row_dst(r) returns row r's destination (nullptr: not stored), factor[mi][hr] scales the
// row, columns at or past `cols` (head-dim padding) are not stored. Call with all lanes.
template <class Element, int MI, int OI, class RowDst>
__device__ __forceinline__ void store_rows(const float (&acc)[MI][OI][4], const float (&factor)[MI][2], int row0,
                                           int lane, int cols, RowDst&& row_dst) {
#pragma unroll
  for (int mi = 0; mi < MI; ++mi)
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      Element* dst = row_dst(row0 + mi * 16 + hr * 8 + lane / 4);
      if (dst == nullptr) continue;
      const float f = factor[mi][hr];
#pragma unroll
      for (int oi = 0; oi < OI; ++oi) {
        const int col = oi * 8 + 2 * (lane % 4);
        if (col < cols)
          *reinterpret_cast<uint32_t*>(dst + col) =
              pack2<Element>(acc[mi][oi][2 * hr] * f, acc[mi][oi][2 * hr + 1] * f);
      }
    }
}

// The same factor for every row.
template <int MI>
__device__ __forceinline__ void fill_factor(float (&factor)[MI][2], float f) {
#pragma unroll
  for (int mi = 0; mi < MI; ++mi) factor[mi][0] = factor[mi][1] = f;
}

}  // namespace nattn::cuda
