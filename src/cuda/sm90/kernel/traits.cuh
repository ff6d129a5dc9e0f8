// Layer: cuda/sm90 kernel. Shapes, shared-memory layouts and tiled MMAs of the Hopper forward:
// BM = 128 query rows (two consumer warpgroups of 64), BN key rows per walked tile, padded head
// dim HD (32, 64, 128 or 256) in panels of PW = min(HD, 64) columns, each panel a tile of
// 128-byte (PW 64) or 64-byte (PW 32) swizzled rows. The TMA writes a box of tokens (row-major
// box order) into one panel at a time, which is exactly a K-major swizzled GMMA tile.
#pragma once
#include <cuda.h>
#include <cute/tensor.hpp>
#include <cutlass/numeric_types.h>

#include "cuda/common/params.h"
#include "cuda/common/tile_walk.h"

namespace nattn::cuda::sm90 {

// How a tensor map addresses a [B, X1, X2, X3, H, C] tensor (C = head dim) in at most 5 TMA
// dimensions (innermost first). "Apart" maps give heads a dimension of their own, so columns
// past C are outside the tensor and the TMA zero-fills them: head dims below the padded HD
// work, and any head stride (a multiple of 16 bytes) does. They need a spare dimension: the
// problem has no third axis (extent 1), or the batch is 1.
enum MapMode : int {
  kHeadsInner = 0,    // (H*C, X3, X2, X1, B): heads packed with the head dim (C must equal HD)
  kHeadsFolded = 1,   // (C, X3, X2, X1, B*H): batch stride = H x head stride
  kHeadsApart = 2,    // (C, H, X2, X1, B): X3 == 1
  kHeadsApartB1 = 3,  // (C, H, X3, X2, X1): B == 1
};

// Tensor maps of the forward: q, k, v over the grid; ka, va over the additional keys
// ([B, Na, H, C] as a 1-D grid of Na tokens).
enum MapId : int { kMapQ = 0, kMapK = 1, kMapV = 2, kMapKa = 3, kMapVa = 4, kNumMaps = 5 };

// The kernel's one parameter (a __grid_constant__, so the tensor maps stay in parameter space
// where the TMA unit reads them).
struct ForwardArgs {
  CUtensorMap tma[kNumMaps];
  int mode[kNumMaps];       // MapMode of each map
  int head_cols[kNumMaps];  // C of each map (head_dim or head_dim_v)
  int items;                // work items: own boxes x heads x batch (< 2^31, checked by the plan)
  bool longest_first;       // causal: run the items in reverse order
  ForwardParams p;
  Tiling tl;
};

// The 5 TMA coordinates of panel pnl (PW columns) of head h in batch b at box coordinates
// c (X1, X2, X3 element positions).
__device__ __forceinline__ void map_coords(int mode, int heads, int cols, int b, int h, int pnl, int pw,
                                           const int (&c)[3], int (&t)[5]) {
  switch (mode) {
    case kHeadsInner: t[0] = h * cols + pnl * pw, t[1] = c[2], t[2] = c[1], t[3] = c[0], t[4] = b; break;
    case kHeadsFolded: t[0] = pnl * pw, t[1] = c[2], t[2] = c[1], t[3] = c[0], t[4] = b * heads + h; break;
    case kHeadsApart: t[0] = pnl * pw, t[1] = h, t[2] = c[1], t[3] = c[0], t[4] = b; break;
    default: t[0] = pnl * pw, t[1] = h, t[2] = c[2], t[3] = c[1], t[4] = c[0]; break;
  }
}

template <int HD>
using PanelAtom = std::conditional_t<(HD >= 64), decltype(cute::GMMA::Layout_K_SW128_Atom<cutlass::half_t>{}),
                                     decltype(cute::GMMA::Layout_K_SW64_Atom<cutlass::half_t>{})>;

template <class Element_, int HD_, int BN_, int STAGES_, bool PINGPONG_, bool POLY_EXP_ = false>
struct ForwardTraits {
  using Element = Element_;  // cutlass::half_t or cutlass::bfloat16_t
  static constexpr int HD = HD_, BM = 128, BN = BN_, kStages = STAGES_;
  static constexpr int PW = HD >= 64 ? 64 : HD;  // columns per panel
  static constexpr bool kPingPong = PINGPONG_;
  // Every kPolyEvery-th n8 block of an S tile takes the FMA units' 2^x (0: none; configs.h).
  static constexpr int kPolyEvery = POLY_EXP_ ? 4 : 0;
  static constexpr int kConsumers = 2;  // warpgroups, 64 query rows each
  static constexpr int kThreads = 128 * (kConsumers + 1);
  // setmaxnreg split (the kernel compiles to 168 per thread: (168 - P) * 128 >= (C - 168) * 256).
  // 72/216 leaves both roles spill-free up to head dim 128; head dim 256's 64 x 256 O accumulator
  // needs 224, and the producer's 56 suffice since key walks classify against per-item intervals
  // (a 40/232 split spilled in TileWalk::init).
  static constexpr int kProducerRegs = HD > 128 ? 56 : 72;
  static constexpr int kConsumerRegs = HD > 128 ? 224 : 216;
  static constexpr int kPanels = HD / PW;
  static_assert(HD == 32 || HD % 64 == 0, "padded head dims: 32 or a multiple of 64");

  using Atom = std::conditional_t<(PW == 64), decltype(cute::GMMA::Layout_K_SW128_Atom<Element>{}),
                                  decltype(cute::GMMA::Layout_K_SW64_Atom<Element>{})>;
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

  static constexpr int kQElems = BM * HD, kKVElems = BN * HD;
  // Two Q buffers (the next work item's Q lands while this one finishes) where they fit.
  static constexpr int kQStages = (2 * kQElems + 2 * kStages * kKVElems) * 2 + 16384 <= 227 * 1024 ? 2 : 1;

  // Per work item (double-buffered: the producer warpgroup prepares the next item's walk while
  // the consumers finish this one).
  struct Item {
    TileWalk walk;
    int2 win[3][BM];  // each own query's window per axis
    int b, h;
  };

  struct SharedStorage {
    alignas(1024) Element q[kQStages * kQElems];
    alignas(1024) Element k[kStages * kKVElems];
    alignas(1024) Element v[kStages * kKVElems];
    // K and V of a stage have their own barriers: K is free once S = Q K^T is done, V only after
    // O += P V, which the mainloop issues one tile later.
    alignas(8) uint64_t q_full[kQStages];
    uint64_t q_empty[kQStages];
    uint64_t k_full[kStages];   // the TMA of stage s's K landed (and steps[s] is set)
    uint64_t k_empty[kStages];  // every consumer thread is done with stage s's K
    uint64_t v_full[kStages];
    uint64_t v_empty[kStages];
    uint64_t item_full[2];   // item slot i's walk and windows are ready
    uint64_t item_empty[2];  // the consumers are done with item slot i
    Step steps[kStages];     // the walk step loaded into each stage
    Item item[2];
  };
};

}  // namespace nattn::cuda::sm90
