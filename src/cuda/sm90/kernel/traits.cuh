// Layer: cuda/sm90 kernel. Shapes, shared-memory layouts and tiled MMAs of the Hopper forward:
// BM = 128 query rows (two consumer warpgroups of 64), BN key rows per walked tile, head dim HD
// in 64-column panels of 128-byte swizzled rows. The TMA writes a box of tokens (row-major box
// order) into one panel at a time, which is exactly a K-major 128B-swizzled GMMA tile.
#pragma once
#include <cuda.h>
#include <cute/tensor.hpp>
#include <cutlass/numeric_types.h>

#include "cuda/common/params.h"
#include "cuda/common/tile_walk.h"

namespace nattn::cuda::sm90 {

// The kernel's one parameter (a __grid_constant__, so the tensor maps stay in parameter space
// where the TMA unit reads them).
struct ForwardArgs {
  // Boxes of 64 columns over [B, X1, X2, X3, H * D] (heads packed with the head dim: heads
  // inner) or [B * H, X1, X2, X3, D] (e.g. a [B, H, X.., D] tensor viewed heads-last).
  CUtensorMap tma_q, tma_k, tma_v;
  int heads_inner[3];  // q, k, v: which of the two
  ForwardParams p;
  Tiling tl;
};

// The TMA coordinates (column, batch-or-batch*heads) of head h's 64-column panel pnl.
__device__ __forceinline__ void head_coords(bool heads_inner, int64_t heads, int64_t head_dim, int b, int h, int pnl,
                                            int& c0, int& c4) {
  c0 = heads_inner ? h * int(head_dim) + pnl * 64 : pnl * 64;
  c4 = heads_inner ? b : b * int(heads) + h;
}

template <class Element_, int HD_, int BN_, int STAGES_, bool PINGPONG_>
struct ForwardTraits {
  using Element = Element_;  // cutlass::half_t or cutlass::bfloat16_t
  static constexpr int HD = HD_, BM = 128, BN = BN_, kStages = STAGES_;
  static constexpr bool kPingPong = PINGPONG_;
  static constexpr int kConsumers = 2;  // warpgroups, 64 query rows each
  static constexpr int kThreads = 128 * (kConsumers + 1);
  static constexpr int kPanels = HD / 64;
  static_assert(HD % 64 == 0, "head dims come in 64-column panels");

  using Atom = decltype(cute::GMMA::Layout_K_SW128_Atom<Element>{});
  using SmemQ = decltype(cute::tile_to_shape(Atom{}, cute::Shape<cute::Int<BM>, cute::Int<HD>>{}));
  using SmemK = decltype(cute::tile_to_shape(Atom{}, cute::Shape<cute::Int<BN>, cute::Int<HD>, cute::Int<kStages>>{}));
  // V as the B operand of O = P V: (HD, BN) with keys contiguous per column panel (MN-major).
  using SmemVt = decltype(cute::composition(
      SmemK{}, cute::make_ordered_layout(cute::make_shape(cute::Int<HD>{}, cute::Int<BN>{}, cute::Int<kStages>{}),
                                         cute::Step<cute::_2, cute::_1, cute::_3>{})));
  using MmaS = decltype(cute::make_tiled_mma(
      cute::SM90::GMMA::ss_op_selector<Element, Element, float, cute::Shape<cute::_64, cute::Int<BN>, cute::Int<HD>>>(),
      cute::Layout<cute::Shape<cute::_2, cute::_1, cute::_1>>{}));
  using MmaO = decltype(cute::make_tiled_mma(
      cute::SM90::GMMA::rs_op_selector<Element, Element, float, cute::Shape<cute::_64, cute::Int<HD>, cute::Int<BN>>,
                                       cute::GMMA::Major::K, cute::GMMA::Major::MN>(),
      cute::Layout<cute::Shape<cute::_2, cute::_1, cute::_1>>{}));

  struct SharedStorage {
    alignas(1024) Element q[cute::cosize_v<SmemQ>];
    alignas(1024) Element k[cute::cosize_v<SmemK>];
    alignas(1024) Element v[cute::cosize_v<SmemK>];
    // K and V of a stage have their own barriers: K is free once S = Q K^T is done, V only after
    // O += P V, which the mainloop issues one tile later.
    alignas(8) uint64_t q_full;
    uint64_t k_full[kStages];   // the TMA of stage s's K landed (and steps[s] is set)
    uint64_t k_empty[kStages];  // every consumer thread is done with stage s's K
    uint64_t v_full[kStages];
    uint64_t v_empty[kStages];
    Step steps[kStages];  // the walk step loaded into each stage
    int2 win[3][BM];      // each own query's window per axis
    TileWalk walk;
  };
};

}  // namespace nattn::cuda::sm90
