// Layer: cuda/sm80 collective. Token rows of a box (a dense sub-grid of one dilation group per
// axis) in global memory: the element offset of a token, the offset of each box row from the
// box's first token (the same for every box of one shape, so kernels tabulate it once per CTA
// in shared memory instead of redoing 64-bit index math per row per tile), and the gathered
// cp.async load of a box into a swizzled tile.
#pragma once
#include <cstdint>

#include "cuda/common/box_index.h"
#include "cuda/common/params.h"
#include "cuda/common/tile_walk.h"
#include "cuda/sm80/collective/smem_tile.cuh"

namespace nattn::cuda::sm80 {

// All threads: rel[r] = row_offset(r) for the ROWS rows of a box.
template <int ROWS>
__device__ __forceinline__ void fill_row_offsets(int64_t* rel, const int (&shift)[3], const Geometry& g,
                                                 const Strides& s) {
  for (int r = threadIdx.x; r < ROWS; r += blockDim.x) rel[r] = row_offset(r, shift, g, s);
}

// Loads a box's rows into a swizzled tile (rows outside the group zero-filled): `first` points
// at the box's first token, rel[] is the row-offset table.
template <int HD, int ROWS, int THREADS, class Element>
__device__ __forceinline__ void load_box(Element* tile, const Element* first, const int64_t* rel, const int (&shift)[3],
                                         const int (&count)[3], int dims) {
  load_rows<HD, ROWS, THREADS>(
      tile, [&](int r) -> const Element* { return row_inside(r, shift, count) ? first + rel[r] : nullptr; }, dims,
      first);
}

// Loads the CTA's own box (first position `start`, extents 1 << shift[a], rows past the
// group's end per count[a] zero-filled) from `base` (the (batch, head) origin of a tensor with
// strides s). Once per CTA, so row offsets are computed, not tabulated.
template <int HD, int ROWS, int THREADS, class Element>
__device__ __forceinline__ void load_own_box(Element* tile, const Element* base, const int (&start)[3],
                                             const int (&group)[3], const int (&shift)[3], const int (&count)[3],
                                             const Geometry& g, const Strides& s, int dims) {
  const Element* first = base + token_offset(start, group, g, s);
  load_rows<HD, ROWS, THREADS>(
      tile,
      [&](int r) -> const Element* {
        return row_inside(r, shift, count) ? first + row_offset(r, shift, g, s) : nullptr;
      },
      dims, base);
}

// Where a walk over key tiles reads its K and V rows (already offset to batch and head):
// neighborhood boxes through the row-offset tables, additional keys as rows of [Na, D].
template <class Element>
struct KvSource {
  const Element* k;
  const Element* v;
  const Element* ka;
  const Element* va;
  const Strides* sk;
  const Strides* sv;
  int64_t ka_row, va_row;  // additional-key row strides
  const int64_t* rel_k;
  const int64_t* rel_v;
};

// Loads a walk step's key tile (neighborhood box or additional-key tile of BN rows) into dk / dv.
template <int HD, int BN, int THREADS, class Element>
__device__ __forceinline__ void load_walked_kv(Element* dk, Element* dv, const Step& st, const TileWalk& w,
                                               const Tiling& tl, const Geometry& g, const KvSource<Element>& src) {
  const int D = int(g.head_dim), Dv = int(g.head_dim_v);
  if (st.tile >= w.nbr_tiles) {
    const int64_t j0 = int64_t(st.tile - w.nbr_tiles) * BN;
    load_rows<HD, BN, THREADS>(
        dk,
        [&](int r) -> const Element* { return j0 + r < g.num_additional ? src.ka + (j0 + r) * src.ka_row : nullptr; },
        D, src.k);
    load_rows<HD, BN, THREADS>(
        dv,
        [&](int r) -> const Element* { return j0 + r < g.num_additional ? src.va + (j0 + r) * src.va_row : nullptr; },
        Dv, src.v);
    return;
  }
  int start[3], count[3];
#pragma unroll
  for (int a = 0; a < 3; ++a) start[a] = st.start[a];
  w.walk_rows_left(start, count);  // (placed: rows past the key box are zero-filled and masked)
  load_box<HD, BN, THREADS>(dk, src.k + token_offset(start, w.walk_off, g, *src.sk), src.rel_k, tl.walk_shift, count,
                            D);
  load_box<HD, BN, THREADS>(dv, src.v + token_offset(start, w.walk_off, g, *src.sv), src.rel_v, tl.walk_shift, count,
                            Dv);
}

}  // namespace nattn::cuda::sm80
