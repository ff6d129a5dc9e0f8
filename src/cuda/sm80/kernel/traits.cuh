// Layer: cuda/sm80 kernel. Block shapes and shared-memory footprints of the fused kernels:
// BM rows owned by the CTA (16 * MI per warp), BN rows per walked tile, head dims padded to HD.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

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
  // Q, two K and two V buffers, the K/V row-offset tables, each query's window per axis.
  static constexpr size_t kSmemBytes =
      (B::kOwn + 4 * B::kWalk) * sizeof(Element) + 2 * BN * sizeof(int64_t) + 3 * BM * sizeof(int2);
};

template <class Element, int HD, int BM, int BN, int WARPS>
struct BackwardTraits : BlockShape<Element, HD, BM, BN, WARPS> {
  using B = BlockShape<Element, HD, BM, BN, WARPS>;
  static_assert(BN <= B::kThreads && BM <= B::kThreads, "one thread per row fills the per-row tables");
  // dQ: Q, dO; two K and two V buffers; K/V row-offset tables; windows; lse and Delta per row.
  static constexpr size_t kSmemDq = (2 * B::kOwn + 4 * B::kWalk) * sizeof(Element) + 2 * BN * sizeof(int64_t) +
                                    3 * BM * sizeof(int2) + 2 * BM * sizeof(float);
  // dK/dV: K, V; two Q and two dO buffers; Q/dO row-offset tables; per buffer the walked
  // queries' windows, lse and Delta.
  static constexpr size_t kSmemDkdv = (2 * B::kOwn + 4 * B::kWalk) * sizeof(Element) + 2 * BN * sizeof(int64_t) +
                                      2 * 3 * BN * sizeof(int2) + 4 * BN * sizeof(float);
};

}  // namespace nattn::cuda::sm80
