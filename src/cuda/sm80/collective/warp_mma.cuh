// Layer: cuda/sm80 collective. Warp-level tensor-core products on swizzled shared tiles:
//   S[16*MI x BN]  = Q[rows] . K^T   (A = Q rows, B = K rows: ldmatrix, no transpose)
//   O[16*MI x HD] += P . V           (A = P from registers, B = V rows: ldmatrix.trans)
// Fragment layouts are those of mma.sync m16n8k16 (row.col), fp32 accumulators.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cute/arch/copy_sm75.hpp>
#include <cute/arch/mma_sm80.hpp>

#include <type_traits>

#include "cuda/common/fragment/pack.cuh"
#include "cuda/sm80/collective/smem_tile.cuh"

namespace nattn::cuda::sm80 {

template <class Element>
struct Mma;
template <>
struct Mma<__nv_bfloat16> {
  using Atom = cute::SM80_16x8x16_F32BF16BF16F32_TN;
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) { return pack2<__nv_bfloat16>(lo, hi); }
};
template <>
struct Mma<__half> {
  using Atom = cute::SM80_16x8x16_F32F16F16F32_TN;
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) { return pack2<__half>(lo, hi); }
};

template <class Element>
__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  Mma<Element>::Atom::fma(d[0], d[1], d[2], d[3], a[0], a[1], a[2], a[3], b0, b1, d[0], d[1], d[2], d[3]);
}

__device__ __forceinline__ void ldsm_x4(const void* p, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
  cute::SM75_U32x4_LDSM_N::copy(*reinterpret_cast<const cute::uint128_t*>(p), r0, r1, r2, r3);
}
__device__ __forceinline__ void ldsm_x4_t(const void* p, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
  cute::SM75_U16x8_LDSM_T::copy(*reinterpret_cast<const cute::uint128_t*>(p), r0, r1, r2, r3);
}

// acc = 0 for an accumulator array of any shape.
template <int A, int B>
__device__ __forceinline__ void zero(float (&acc)[A][B][4]) {
#pragma unroll
  for (int i = 0; i < A; ++i)
#pragma unroll
    for (int j = 0; j < B; ++j) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.f;
}

// acc[mi][ni][4] += A(rows row0 + 16*mi .., HD) . B(rows of `b`, HD)^T, over the head dim.
// A and B are swizzled HD-wide tiles; NI n8-tiles of B starting at row 0.
template <class Element, int HD, int MI, int NI>
__device__ __forceinline__ void gemm_abT(float (&acc)[MI][NI][4], const Element* a, int row0, const Element* b) {
  const int lane = threadIdx.x & 31;
  const int mat = lane >> 3, r8 = lane & 7;
#pragma unroll
  for (int ki = 0; ki < HD / 16; ++ki) {
    uint32_t af[MI][4];
#pragma unroll
    for (int mi = 0; mi < MI; ++mi) {
      const int row = row0 + mi * 16 + r8 + (mat & 1) * 8;
      ldsm_x4(a + Swizzle<HD>::offset(row, 2 * ki + (mat >> 1)), af[mi][0], af[mi][1], af[mi][2], af[mi][3]);
    }
#pragma unroll
    for (int nj = 0; nj < NI / 2; ++nj) {
      uint32_t b0, b1, b2, b3;
      const int row = nj * 16 + r8 + (mat >> 1) * 8;
      ldsm_x4(b + Swizzle<HD>::offset(row, 2 * ki + (mat & 1)), b0, b1, b2, b3);
#pragma unroll
      for (int mi = 0; mi < MI; ++mi) {
        mma<Element>(acc[mi][2 * nj], af[mi], b0, b1);
        mma<Element>(acc[mi][2 * nj + 1], af[mi], b2, b3);
      }
    }
  }
}

// acc[mi][oi][4] += P[mi] . V, P given as packed A fragments p[mi][kk][4] over BN keys.
template <class Element, int HD, int MI, int BN>
__device__ __forceinline__ void gemm_pv(float (&acc)[MI][HD / 8][4], const uint32_t (&p)[MI][BN / 16][4],
                                        const Element* v) {
  const int lane = threadIdx.x & 31;
  const int mat = lane >> 3, r8 = lane & 7;
#pragma unroll
  for (int kk = 0; kk < BN / 16; ++kk) {
#pragma unroll
    for (int oj = 0; oj < HD / 16; ++oj) {
      uint32_t b0, b1, b2, b3;
      const int row = kk * 16 + r8 + (mat & 1) * 8;
      ldsm_x4_t(v + Swizzle<HD>::offset(row, 2 * oj + (mat >> 1)), b0, b1, b2, b3);
#pragma unroll
      for (int mi = 0; mi < MI; ++mi) {
        mma<Element>(acc[mi][2 * oj], p[mi][kk], b0, b1);
        mma<Element>(acc[mi][2 * oj + 1], p[mi][kk], b2, b3);
      }
    }
  }
}

}  // namespace nattn::cuda::sm80
