// Layer: cuda/sm90 kernel. Shapes, shared memory and parameters of the sm90 backward kernels.
// Both own a box of 128 rows (two consumer warpgroups of 64) and two tensors on it, loaded once,
// and walk boxes of 64 rows of two other tensors (kernel/backward_producer.cuh loads them):
//   dK/dV (kernel/fna_backward_dkdv.cuh): owns K and V of one (batch, kv head, dilation group),
//     walks Q and dO boxes for each query head of the kv head;
//   dQ (kernel/fna_backward_dq.cuh): owns Q and dO of one (batch, head, dilation group), walks
//     the K and V boxes of its kv head.
#pragma once
#include <cute/tensor.hpp>

#include "cuda/common/params.h"
#include "cuda/common/tile_walk.h"
#include "cuda/sm90/kernel/traits.cuh"

namespace nattn::cuda::sm90 {

// Tensor maps of a backward kernel: the two walked tensors in boxes of the walk shift (dK/dV:
// q, dout; dQ: k, v), the two owned ones in boxes of the own shift (dK/dV: k, v; dQ: q, dout).
enum BackwardMapId : int { kWalkA = 0, kWalkB = 1, kOwnA = 2, kOwnB = 3, kNumBackwardMaps = 4 };

struct BackwardArgs {
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
  // The producer's view (kernel/backward_producer.cuh).
  static constexpr int kOwnRows = BK, kWalkRows = BQ, kOwnElems = kKVElems, kWalkElems = kQElems;

  // Per consumer warpgroup and step parity: the walked queries' log2-domain lse (+inf where a
  // query contributes nothing), Delta, and windows per axis (partial boxes).
  struct Columns {
    float lse2[BQ];
    float delta[BQ];
    int2 win[3][BQ];
  };

  struct SharedStorage {
    alignas(1024) Element own_a[kKVElems];            // K
    alignas(1024) Element own_b[kKVElems];            // V
    alignas(1024) Element walk_a[kStages * kQElems];  // Q
    alignas(1024) Element walk_b[kStages * kQElems];  // dO
    alignas(8) uint64_t own_full;                     // the own K and V boxes landed
    uint64_t full[kStages];                           // stage s's Q and dO landed (and steps[s] is set)
    uint64_t empty[kStages];                          // every consumer thread is done with stage s
    Step steps[kStages];                              // the walk step loaded into each stage
    Columns cols[kConsumers][2];
    TileWalk walk;
  };
};

template <class Element_, int HD_, int BN_, int STAGES_>
struct DqTraits {
  using Element = Element_;  // cutlass::half_t or cutlass::bfloat16_t
  static constexpr int HD = HD_, BM = 128, BN = BN_, kStages = STAGES_;
  static constexpr int PW = HD >= 64 ? 64 : HD;  // columns per panel
  static constexpr int kPanels = HD / PW;
  static constexpr int kConsumers = 2;  // warpgroups, 64 query rows each
  static constexpr int kThreads = 128 * (kConsumers + 1);
  // dQ (64 x HD fp32 per warpgroup: HD / 2 registers per thread), S and dP (BN / 2 each) and
  // dS: about 180 at head dim 128, within the forward's split.
  static constexpr int kProducerRegs = 72;
  static constexpr int kConsumerRegs = 216;
  static_assert(HD == 32 || HD == 64 || HD == 128, "the sm90 dQ kernel takes padded head dims 32, 64, 128");

  using Atom = std::conditional_t<(PW == 64), decltype(cute::GMMA::Layout_K_SW128_Atom<Element>{}),
                                  decltype(cute::GMMA::Layout_K_SW64_Atom<Element>{})>;
  // Own Q and dO: (BM, HD), K-major (the A operands of S = Q K^T and dP = dO V^T).
  using SmemOwn = decltype(cute::tile_to_shape(Atom{}, cute::Shape<cute::Int<BM>, cute::Int<HD>>{}));
  // Walked K and V stages: (BN, HD, stages), K-major (the B operands of S and dP) ...
  using SmemWalk =
      decltype(cute::tile_to_shape(Atom{}, cute::Shape<cute::Int<BN>, cute::Int<HD>, cute::Int<kStages>>{}));
  // ... and K as (HD, BN, stages), keys contiguous per column panel: the B operand of dQ += dS K.
  using SmemWalkT = decltype(cute::composition(
      SmemWalk{}, cute::make_ordered_layout(cute::make_shape(cute::Int<HD>{}, cute::Int<BN>{}, cute::Int<kStages>{}),
                                            cute::Step<cute::_2, cute::_1, cute::_3>{})));
  using MmaS = decltype(cute::make_tiled_mma(
      cute::SM90::GMMA::ss_op_selector<Element, Element, float, cute::Shape<cute::_64, cute::Int<BN>, cute::Int<HD>>>(),
      cute::Layout<cute::Shape<cute::_2, cute::_1, cute::_1>>{}));
  using MmaQ = decltype(cute::make_tiled_mma(
      cute::SM90::GMMA::rs_op_selector<Element, Element, float, cute::Shape<cute::_64, cute::Int<HD>, cute::Int<BN>>,
                                       cute::GMMA::Major::K, cute::GMMA::Major::MN>(),
      cute::Layout<cute::Shape<cute::_2, cute::_1, cute::_1>>{}));

  static constexpr int kOwnRows = BM, kWalkRows = BN, kOwnElems = BM * HD, kWalkElems = BN * HD;

  struct SharedStorage {
    alignas(1024) Element own_a[kOwnElems];              // Q
    alignas(1024) Element own_b[kOwnElems];              // dO
    alignas(1024) Element walk_a[kStages * kWalkElems];  // K
    alignas(1024) Element walk_b[kStages * kWalkElems];  // V
    alignas(8) uint64_t own_full;                        // the own Q and dO boxes landed
    uint64_t full[kStages];                              // stage s's K and V landed (and steps[s] is set)
    uint64_t empty[kStages];                             // every consumer thread is done with stage s
    Step steps[kStages];                                 // the walk step loaded into each stage
    int2 win[3][BM];                                     // each own query's window per axis
    TileWalk walk;
  };
};

}  // namespace nattn::cuda::sm90
