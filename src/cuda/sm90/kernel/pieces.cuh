// Layer: cuda/sm90 kernel. Pieces shared by the sm90 kernels (forward, backward): wgmma issue,
// the accumulator-as-A-operand view, TMA box loads through a MapMode tensor map, box
// coordinates of a walk step, and the stage cursor of an mbarrier ring.
#pragma once
#include <cuda_runtime.h>
#include <cute/arch/copy_sm90_tma.hpp>
#include <cute/tensor.hpp>

#include <type_traits>

#include "cuda/common/params.h"
#include "cuda/sm90/kernel/traits.cuh"

namespace nattn::cuda::sm90 {

template <class Element>
using GlobalElement = std::conditional_t<std::is_same_v<Element, cutlass::bfloat16_t>, __nv_bfloat16, __half>;

// The accumulator layout ((2, 2, N/8), M, N) of S read as the A-operand layout
// ((2, 2, 2), M, N/16) of O += P V: the same registers, 16 key columns per k-slice.
template <class Layout>
__device__ __forceinline__ auto accumulator_as_a(Layout acc) {
  using namespace cute;
  auto l = logical_divide(get<0, 2>(acc), Tile<_2>{});  // ((2, N/16))
  return make_layout(make_layout(get<0, 0>(acc), get<0, 1>(acc), get<0, 0>(l)), get<1>(acc),
                     coalesce(make_layout(get<0, 1>(l), get<2>(acc))));
}

// Warpgroup-wide C (+)= A B over the k-slices of A and B; kZero starts from C = 0.
template <bool kZero, class Mma, class TA, class TB, class TC>
__device__ __forceinline__ void wgmma(Mma& mma, const TA& a, const TB& b, TC& c) {
  using namespace cute;
  warpgroup_fence_operand(c);
  warpgroup_arrive();
  if constexpr (kZero) mma.accumulate_ = GMMA::ScaleOut::Zero;
#pragma unroll
  for (int k = 0; k < size<2>(a); ++k) {
    gemm(mma, a(_, _, k), b(_, _, k), c);
    mma.accumulate_ = GMMA::ScaleOut::One;
  }
  warpgroup_commit_batch();
  warpgroup_fence_operand(c);
}

// Tensor rows along (X1, X2, X3) of a box starting at group positions start: position x
// dilation + off, with off = TileWalk::own_off (the query box) or walk_off (the key box): the
// dilation group, less the box's origin in the global grid when placed. Rows outside the
// tensor (before a key box's origin, past its end) come back zero from the TMA and are masked.
__device__ __forceinline__ void box_coords(const int (&start)[3], const int (&off)[3], const Geometry& g, int (&c)[3]) {
#pragma unroll
  for (int a = 0; a < 3; ++a) c[a] = start[a] * int(g.dilation[a]) + off[a];
}

// The box coordinates of walk step st (walked rows `rows` per box): a neighborhood box at its
// group positions (box_coords of walk_off), or an extra tile (the additional keys after the
// walk's nbr_tiles neighborhood boxes) at row (tile - nbr_tiles) x rows of their 1-D grid.
// Returns whether the step is an extra tile (read from the additional keys' maps).
__device__ __forceinline__ bool step_coords(const Step& st, const TileWalk& w, const Geometry& g, int rows,
                                            int (&c)[3]) {
  if (st.tile < w.nbr_tiles) {
    box_coords(st.start, w.walk_off, g, c);
    return false;
  }
  c[0] = (st.tile - w.nbr_tiles) * rows;
  c[1] = c[2] = 0;
  return true;
}

// One thread: TMA loads of every panel (PW columns) of one box of `rows` rows into dst,
// completing on bar; heads and cols describe the map's tensor (MapMode, traits.cuh).
template <int kPanels, int PW, class Element>
__device__ __forceinline__ void tma_load_box(const CUtensorMap* map, int mode, int heads, int cols, uint64_t* bar,
                                             uint64_t hint, Element* dst, int rows, int b, int h, const int (&c)[3]) {
#pragma unroll
  for (int pnl = 0; pnl < kPanels; ++pnl) {
    int t[5];
    map_coords(mode, heads, cols, b, h, pnl, PW, c, t);
    cute::SM90_TMA_LOAD_5D::copy(map, bar, hint, dst + pnl * rows * PW, t[0], t[1], t[2], t[3], t[4]);
  }
}

// A stage index and its barrier phase, advanced together.
template <int kStages>
struct StageCursor {
  int stage = 0;
  uint32_t phase = 0;
  __device__ __forceinline__ void next() {
    if (++stage == kStages) {
      stage = 0;
      phase ^= 1;
    }
  }
};

}  // namespace nattn::cuda::sm90
