// Layer: cuda/sm90 kernel. Shapes, shared memory and parameters of the sm90 backward dK/dV
// kernel (kernel/fna_backward_dkdv.cuh): one CTA owns a box of BK = 128 keys (two consumer
// warpgroups of 64 key rows) of one (batch, kv head, dilation group) and walks query boxes of
// BQ = 64 queries, for each query head of the kv head.
#pragma once
#include <cute/tensor.hpp>

#include "cuda/common/params.h"
#include "cuda/common/tile_walk.h"
#include "cuda/sm90/kernel/traits.cuh"

namespace nattn::cuda::sm90 {

// Tensor maps of the dK/dV kernel: the walked side (q, dout) in boxes of the walk shift, the
// owned side (k, v) in boxes of the own shift.
enum BackwardMapId : int { kBMapQ = 0, kBMapDout = 1, kBMapK = 2, kBMapV = 3, kNumBackwardMaps = 4 };

struct DkdvArgs {
  CUtensorMap tma[kNumBackwardMaps];
  int mode[kNumBackwardMaps];       // MapMode of each map
  int head_cols[kNumBackwardMaps];  // C of each map (head_dim or head_dim_v)
  BackwardParams p;
  Tiling tl;
};

template <class Element_, int HD_, int BQ_, int STAGES_>
struct DkdvTraits {
  using Element = Element_;  // cutlass::half_t or cutlass::bfloat16_t
  static constexpr int HD = HD_, BK = 128, BQ = BQ_, kStages = STAGES_;
  static constexpr int PW = HD >= 64 ? 64 : HD;  // columns per panel
  static constexpr int kPanels = HD / PW;
  static constexpr int kConsumers = 2;  // warpgroups, 64 key rows each
  static constexpr int kThreads = 128 * (kConsumers + 1);
  // setmaxnreg split ((168 - P) * 128 >= (C - 168) * 256): dK and dV accumulators (64 x HD fp32
  // each per warpgroup) plus S^T and dP^T (64 x BQ) take 4 * HD / 2 + BQ registers per thread:
  // 224 at head dim 128, so the producer warpgroup (one TMA thread stepping the walk) gets 40.
  static constexpr int kProducerRegs = HD > 64 ? 40 : 72;
  static constexpr int kConsumerRegs = HD > 64 ? 232 : 216;
  static_assert(HD == 32 || HD == 64 || HD == 128, "the sm90 dK/dV kernel takes padded head dims 32, 64, 128");

  using Atom = std::conditional_t<(PW == 64), decltype(cute::GMMA::Layout_K_SW128_Atom<Element>{}),
                                  decltype(cute::GMMA::Layout_K_SW64_Atom<Element>{})>;
  // Own K and V: (BK, HD), K-major (the A operands of S^T = K Q^T and dP^T = V dO^T).
  using SmemKV = decltype(cute::tile_to_shape(Atom{}, cute::Shape<cute::Int<BK>, cute::Int<HD>>{}));
  // Walked Q and dO stages: (BQ, HD, stages), K-major (the B operands of S^T and dP^T) ...
  using SmemQ = decltype(cute::tile_to_shape(Atom{}, cute::Shape<cute::Int<BQ>, cute::Int<HD>, cute::Int<kStages>>{}));
  // ... and the same memory as (HD, BQ, stages), queries contiguous per column panel (MN-major):
  // the B operands of dV += P^T dO and dK += dS^T Q.
  using SmemQt = decltype(cute::composition(
      SmemQ{}, cute::make_ordered_layout(cute::make_shape(cute::Int<HD>{}, cute::Int<BQ>{}, cute::Int<kStages>{}),
                                         cute::Step<cute::_2, cute::_1, cute::_3>{})));
  // S^T and dP^T: (BK keys x BQ queries) over HD, both operands from shared memory.
  using MmaS = decltype(cute::make_tiled_mma(
      cute::SM90::GMMA::ss_op_selector<Element, Element, float, cute::Shape<cute::_64, cute::Int<BQ>, cute::Int<HD>>>(),
      cute::Layout<cute::Shape<cute::_2, cute::_1, cute::_1>>{}));
  // dV and dK: (BK keys x HD) over the BQ queries, P^T / dS^T from registers.
  using MmaG = decltype(cute::make_tiled_mma(
      cute::SM90::GMMA::rs_op_selector<Element, Element, float, cute::Shape<cute::_64, cute::Int<HD>, cute::Int<BQ>>,
                                       cute::GMMA::Major::K, cute::GMMA::Major::MN>(),
      cute::Layout<cute::Shape<cute::_2, cute::_1, cute::_1>>{}));

  static constexpr int kKVElems = BK * HD, kQElems = BQ * HD;

  // Per consumer warpgroup and step parity: the walked queries' log2-domain lse (+inf where a
  // query contributes nothing), Delta, and windows per axis (partial boxes).
  struct Columns {
    float lse2[BQ];
    float delta[BQ];
    int2 win[3][BQ];
  };

  struct SharedStorage {
    alignas(1024) Element k[kKVElems];
    alignas(1024) Element v[kKVElems];
    alignas(1024) Element q[kStages * kQElems];
    alignas(1024) Element dout[kStages * kQElems];
    alignas(8) uint64_t kv_full;  // the own K and V boxes landed
    uint64_t full[kStages];       // stage s's Q and dO landed (and steps[s] is set)
    uint64_t empty[kStages];      // every consumer thread is done with stage s
    Step steps[kStages];          // the walk step loaded into each stage
    Columns cols[kConsumers][2];
    TileWalk walk;
  };
};

}  // namespace nattn::cuda::sm90
