// Layer: cuda/common (fragment pieces shared by the sm80 and sm90 families: mma.sync and
// wgmma give each warp the same m16n8 accumulator layout). Softmax pieces of the fused kernels, in the log2 domain with
// the scale folded into one FFMA per score: the fast exp2, the scale fold, the online softmax of the forward (rows in
// the mma.sync accumulator layout: row (mi, hr) lives in the 4 lanes of a quad) and the recomputation of P from the
// forward's logsumexp in the backward.
#pragma once
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "cuda/common/fragment/exp2_poly.h"

namespace nattn::cuda {

inline constexpr float kLog2e = 1.4426950408889634f;
inline constexpr float kLn2 = 0.6931471805599453f;

// 2^x with one MUFU.EX2 (flushing results below 2^-126 to zero, which a softmax weight that
// small is anyway next to the row's largest weight 1); exp2f() adds range fix-ups around it.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Kernels fold the softmax scale into one FFMA with exp2, which needs scale > 0 for the row
// maximum of raw scores to be the maximum of scaled ones. A non-positive scale is applied to
// one operand tile instead, exactly: a negative scale flips the tile's signs (its magnitude
// stays in the FFMA), a zero scale zeroes the tile (every score is then exactly 0).
// Returns the positive factor, in the log2 domain, that the kernel multiplies raw scores by.
// `thread` numbers the THREADS threads that share the tile (threadIdx.x when all of the CTA).
template <int ELEMENTS, int THREADS, class Element>
__device__ __forceinline__ float fold_scale_sign(Element* tile, float scale, int thread) {
  if (scale > 0.f) return scale * kLog2e;
  uint32_t* w = reinterpret_cast<uint32_t*>(tile);
  const uint32_t flip = scale < 0.f ? 0x80008000u : 0u;
  for (int i = thread; i < ELEMENTS / 2; i += THREADS) w[i] = scale < 0.f ? (w[i] ^ flip) : 0u;
  return scale < 0.f ? -scale * kLog2e : kLog2e;
}

template <int ELEMENTS, int THREADS, class Element>
__device__ __forceinline__ float fold_scale_sign(Element* tile, float scale) {
  return fold_scale_sign<ELEMENTS, THREADS>(tile, scale, int(threadIdx.x));
}

// The forward's running softmax of 16*MI rows per warp. A row's reference max only moves
// (rescaling O and the sum) when a tile's max exceeds it by more than 2^kSlack, and only if
// some row of the warp needs it: weights then reach at most 2^kSlack, harmless in fp32 and
// bf16/fp16, and the result is the same softmax (numerator and denominator share the reference).
template <int MI>
struct OnlineSoftmax {
  static constexpr float kSlack = 8.f;
  float ref[MI][2];  // reference max per row, log2 units
  float sum[MI][2];  // this lane's part of the row's sum of weights

  __device__ __forceinline__ void init() {
#pragma unroll
    for (int mi = 0; mi < MI; ++mi) {
      ref[mi][0] = ref[mi][1] = -INFINITY;
      sum[mi][0] = sum[mi][1] = 0.f;
    }
  }

  // Scores s (raw, times c = scale * log2 e) become weights 2^(c s - ref); O is rescaled when
  // a reference moves. kPolyEvery > 0: the scores of every kPolyEvery-th n8 column block take
  // the FMA units' 2^x (exp2_poly.h) instead of MUFU.EX2, which the rest keep.
  template <int kPolyEvery = 0, int NI, int OI>
  __device__ __forceinline__ void weigh(float (&s)[MI][NI][4], float c, float (&o)[MI][OI][4]) {
    float tile_max[MI][2];
    if (__any_sync(0xffffffffu, max_moves(s, c, tile_max))) {
#pragma unroll
      for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
          const float corr = move_reference(mi, hr, tile_max[mi][hr]);
#pragma unroll
          for (int oi = 0; oi < OI; ++oi) {
            o[mi][oi][2 * hr] *= corr;
            o[mi][oi][2 * hr + 1] *= corr;
          }
        }
    }
    exponentiate<kPolyEvery>(s, c);
  }

  // weigh() for a mainloop that is still accumulating into O (an asynchronous P V product): the
  // factors O must be multiplied by once that product is done go to corr (rescale()); returns
  // whether any is not 1.
  template <int kPolyEvery = 0, int NI>
  __device__ __forceinline__ bool weigh_deferred(float (&s)[MI][NI][4], float c, float (&corr)[MI][2]) {
    float tile_max[MI][2];
    const bool moved = __any_sync(0xffffffffu, max_moves(s, c, tile_max));
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) corr[mi][hr] = moved ? move_reference(mi, hr, tile_max[mi][hr]) : 1.f;
    exponentiate<kPolyEvery>(s, c);
    return moved;
  }

  template <int OI>
  __device__ __forceinline__ static void rescale(float (&o)[MI][OI][4], const float (&corr)[MI][2]) {
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
      for (int hr = 0; hr < 2; ++hr)
#pragma unroll
        for (int oi = 0; oi < OI; ++oi) {
          o[mi][oi][2 * hr] *= corr[mi][hr];
          o[mi][oi][2 * hr + 1] *= corr[mi][hr];
        }
  }

  // All lanes: the row's total weight (summed over its quad).
  __device__ __forceinline__ float row_total(int mi, int hr) const {
    float t = sum[mi][hr];
    t += __shfl_xor_sync(0xffffffffu, t, 1);
    t += __shfl_xor_sync(0xffffffffu, t, 2);
    return t;
  }

  // The natural-log logsumexp of a row whose total weight is `total`.
  __device__ __forceinline__ float lse(int mi, int hr, float total) const {
    const float m = ref[mi][hr] == -INFINITY ? 0.f : ref[mi][hr];
    return (m + log2f(total)) * kLn2;
  }

 private:
  // Each row's tile max (log2 units) into tile_max; true when some row of this lane's must move
  // its reference.
  template <int NI>
  __device__ __forceinline__ bool max_moves(const float (&s)[MI][NI][4], float c, float (&tile_max)[MI][2]) const {
    bool move = false;
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) {
        float mx = -INFINITY;
#pragma unroll
        for (int ni = 0; ni < NI; ++ni) mx = fmaxf(mx, fmaxf(s[mi][ni][2 * hr], s[mi][ni][2 * hr + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        tile_max[mi][hr] = mx * c;
        move |= tile_max[mi][hr] > ref[mi][hr] + kSlack;
      }
    return move;
  }

  // Moves row (mi, hr)'s reference to include tile_max; returns the factor for what was summed.
  __device__ __forceinline__ float move_reference(int mi, int hr, float tile_max) {
    const float next = fmaxf(ref[mi][hr], tile_max);
    const float corr = next == -INFINITY ? 1.f : fast_exp2(ref[mi][hr] - next);
    ref[mi][hr] = next;
    sum[mi][hr] *= corr;
    return corr;
  }

  template <int kPolyEvery, int NI>
  __device__ __forceinline__ void exponentiate(float (&s)[MI][NI][4], float c) {
    constexpr int kEvery = kPolyEvery > 0 ? kPolyEvery : 1;
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) {
        const float m = ref[mi][hr] == -INFINITY ? 0.f : ref[mi][hr];
#pragma unroll
        for (int ni = 0; ni < NI; ++ni) {
          // (ni is a constant once unrolled: each block takes one of the two, no branch)
          const bool poly = kPolyEvery > 0 && ni % kEvery == kEvery - 1;
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float x = fmaf(s[mi][ni][2 * hr + e], c, -m);
            s[mi][ni][2 * hr + e] = poly ? exp2_poly(x) : fast_exp2(x);
          }
          sum[mi][hr] += s[mi][ni][2 * hr] + s[mi][ni][2 * hr + 1];
        }
      }
  }
};

}  // namespace nattn::cuda
