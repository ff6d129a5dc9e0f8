// Layer: cuda/sm80 collective. Shared-memory tiles of HD-element rows, XOR-swizzled in 16-byte
// chunks so that ldmatrix reads of 8 rows hit 8 different bank groups, and gathered loads of
// arbitrary global rows (token rows of a box) into them with cp.async.
#pragma once
#include <cute/arch/copy_sm80.hpp>
#include <cute/numeric/int.hpp>

#include <cstdint>

namespace nattn::cuda::sm80 {

template <int HD>
struct Swizzle {
  static constexpr int kChunks = HD / 8;  // 16-byte chunks per row
  static constexpr int kMask = kChunks >= 8 ? 7 : kChunks - 1;
  static constexpr int kRowDiv = kChunks >= 8 ? 1 : 8 / kChunks;
  // Element offset of (row, chunk) in a tile.
  __device__ __forceinline__ static int offset(int row, int chunk) {
    return row * HD + ((chunk ^ ((row / kRowDiv) & kMask)) << 3);
  }
};

// Loads ROWS rows into a swizzled tile: row_ptr(row) gives the global row (or nullptr for a
// row outside the grid, zero-filled); chunks at or past `dims` elements are zero-filled (head
// dims padded up to HD). `fallback` is any valid global address (cp.async needs one).
// Each thread copies consecutive chunks of as few rows as possible (still 16-byte copies
// that coalesce across the threads sharing a row), so the per-row work of finding a gathered
// row (a table read, bounds tests, 64-bit address math) is paid once per row, not per chunk.
template <int HD, int ROWS, int THREADS, class Element, class RowPtr>
__device__ __forceinline__ void load_rows(Element* tile, RowPtr&& row_ptr, int dims, const Element* fallback) {
  constexpr int kChunks = HD / 8;
  constexpr int kTotal = ROWS * kChunks;
  static_assert(kTotal % THREADS == 0, "tile rows must split evenly across threads");
  constexpr int kPerThread = kTotal / THREADS;
  constexpr int kRowChunks = kPerThread < kChunks ? kPerThread : kChunks;  // chunks per row visit
  constexpr int kRowVisits = kPerThread / kRowChunks;
  static_assert(kChunks % kRowChunks == 0, "chunk runs must not straddle rows");
#pragma unroll
  for (int v = 0; v < kRowVisits; ++v) {
    const int first = (int(threadIdx.x) + v * THREADS) * kRowChunks;
    const int row = first / kChunks, chunk0 = first % kChunks;
    const Element* src = row_ptr(row);
#pragma unroll
    for (int i = 0; i < kRowChunks; ++i) {
      const int chunk = chunk0 + i;
      const bool pred = src != nullptr && chunk * 8 < dims;
      const Element* g = pred ? src + chunk * 8 : fallback;
      cute::SM80_CP_ASYNC_CACHEGLOBAL_ZFILL<cute::uint128_t>::copy(
          *reinterpret_cast<const cute::uint128_t*>(g),
          *reinterpret_cast<cute::uint128_t*>(tile + Swizzle<HD>::offset(row, chunk)), pred);
    }
  }
}

__device__ __forceinline__ void cp_async_commit() { cute::cp_async_fence(); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  cute::cp_async_wait<N>();
}

}  // namespace nattn::cuda::sm80
