// Layer: cuda/common (fragment pieces shared by the sm80 and sm90 families). Two fp32 values
// rounded into one 32-bit register of a 16-bit element pair (low half first), the form of
// mma/wgmma A operands and of two-element stores.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace nattn::cuda {

template <class Element>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);

template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// Packs accumulator tiles [MI][N/8][4] into mma A fragments [MI][N/16][4] (bf16/fp16 pairs).
template <class Element, int MI, int NI>
__device__ __forceinline__ void pack_a(const float (&x)[MI][NI][4], uint32_t (&f)[MI][NI / 2][4]) {
#pragma unroll
  for (int mi = 0; mi < MI; ++mi)
#pragma unroll
    for (int kk = 0; kk < NI / 2; ++kk) {
      f[mi][kk][0] = pack2<Element>(x[mi][2 * kk][0], x[mi][2 * kk][1]);
      f[mi][kk][1] = pack2<Element>(x[mi][2 * kk][2], x[mi][2 * kk][3]);
      f[mi][kk][2] = pack2<Element>(x[mi][2 * kk + 1][0], x[mi][2 * kk + 1][1]);
      f[mi][kk][3] = pack2<Element>(x[mi][2 * kk + 1][2], x[mi][2 * kk + 1][3]);
    }
}

}  // namespace nattn::cuda
