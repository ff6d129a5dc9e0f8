// Layer: cuda/sm80 kernel. Block shapes and shared storage of the fused kernels: BM rows owned
// by the CTA (16 * MI per warp), BN rows per walked tile, head dims padded to HD. Each kernel's
// dynamic shared memory is one SharedStorage struct: its size is the launch size.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "cuda/common/tile_walk.h"

namespace nattn::cuda::sm80 {

template <class Element_, int HD_, int BM_, int BN_, int WARPS_>
struct BlockShape {
  using Element = Element_;
  static constexpr int HD = HD_, BM = BM_, BN = BN_, kWarps = WARPS_;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int MI = BM / (16 * kWarps);  // m16 blocks per warp
  static constexpr int NI = BN / 8;              // n8 tiles of a BM x BN product
  static constexpr int OI = HD / 8;              // n8 tiles of a BM x HD accumulator
  static_assert(MI >= 1 && BM % (16 * kWarps) == 0, "BM must be a multiple of 16 * warps");
  static constexpr size_t kOwn = size_t(BM) * HD, kWalk = size_t(BN) * HD;  // tile elements
};

template <class Element, int HD, int BM, int BN, int WARPS>
struct ForwardTraits : BlockShape<Element, HD, BM, BN, WARPS> {
  using B = BlockShape<Element, HD, BM, BN, WARPS>;
  struct SharedStorage {
    alignas(128) Element q[B::kOwn];      // the own query box
    alignas(128) Element k[2][B::kWalk];  // double-buffered walked key and value tiles
    alignas(128) Element v[2][B::kWalk];
    int64_t rel_k[BN], rel_v[BN];  // row offsets of a walked box in K and V
    int2 win[3][BM];               // each own query's window per axis
    TileWalk walk;                 // the walk (loop-invariant: kept out of registers)
  };
};

template <class Element, int HD, int BM, int BN, int WARPS>
struct BackwardTraits : BlockShape<Element, HD, BM, BN, WARPS> {
  using B = BlockShape<Element, HD, BM, BN, WARPS>;
  static_assert(BN <= B::kThreads && BM <= B::kThreads, "one thread per row fills the per-row tables");
  struct DqStorage {
    alignas(128) Element q[B::kOwn];  // the own query box and its output gradient
    alignas(128) Element dout[B::kOwn];
    alignas(128) Element k[2][B::kWalk];  // double-buffered walked key and value tiles
    alignas(128) Element v[2][B::kWalk];
    int64_t rel_k[BN], rel_v[BN];
    int2 win[3][BM];
    float lse[BM], delta[BM];  // per own query: lse (log2 domain) and Delta
    TileWalk walk;
  };
  struct DkdvStorage {
    alignas(128) Element k[B::kOwn];  // the own key box and its values
    alignas(128) Element v[B::kOwn];
    alignas(128) Element q[2][B::kWalk];  // double-buffered walked queries and output gradients
    alignas(128) Element dout[2][B::kWalk];
    int64_t rel_q[BN], rel_dout[BN];
    int2 win[2][3][BN];              // per buffer: the walked queries' windows
    float lse[2][BN], delta[2][BN];  // per buffer: walked queries' lse (log2) and Delta
    TileWalk walk;
  };
};

}  // namespace nattn::cuda::sm80
