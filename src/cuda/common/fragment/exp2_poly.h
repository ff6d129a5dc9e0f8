// Layer: cuda/common (fragment pieces). 2^x by FMA-pipe arithmetic, for the share of a softmax's
// exponentials that is taken off the special-function unit (MUFU).
//
// Why: an H100 SM retires 16 MUFU.EX2 a clock and 4096 bf16 tensor-core FLOPs a clock. A score
// costs 4 x head_dim tensor FLOPs in the forward (Q K^T and P V), so at head dim 64 the tensor
// cores and the exponentials run at the same rate (16 scores a clock) and at head dim 32 the
// exponentials are the bound (twice the tensor rate). FlashAttention-4 (Blackwell) computes part
// of the exponentials with a polynomial on the FMA units instead; this is that piece.
//
// x = n + f with n = round(x) and f in [-1/2, 1/2]: 2^f by a degree-4 polynomial (relative error
// under 3e-6 in float32, fitted here by reweighted least squares on the relative error: far below
// bf16's 4e-3 and fp16's 5e-4 resolution of P), then n added to its exponent bits. Results below
// 2^-125, x = -inf included, are 0, as MUFU.EX2.FTZ flushes those below 2^-126: a score masked
// to -inf contributes exactly nothing. NaN stays NaN. x of 128 and above would overflow the
// exponent; softmax weights stay below 2^9 (OnlineSoftmax::kSlack). About ten instructions a
// value (four FFMA, four FADD and compares, an integer shift and add, two selects) against one
// MUFU: worth it only for a share of the scores (OnlineSoftmax's kPolyEvery).
// Host and device code (the host tests its accuracy: tests/core/exp2_poly_test.cpp).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/window.h"  // NATTN_HD

namespace nattn::cuda {

NATTN_HD int32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_int(x);
#else
  int32_t i;
  std::memcpy(&i, &x, sizeof i);
  return i;
#endif
}

NATTN_HD float bits_float(int32_t i) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(i);
#else
  float x;
  std::memcpy(&x, &i, sizeof x);
  return x;
#endif
}

// a + b rounded to nearest, never reassociated or contracted by the compiler (the rounding
// trick below depends on it).
NATTN_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  volatile float s = a + b;
  return s;
#endif
}

NATTN_HD float exp2_poly(float x) {
  // 1.5 * 2^23: adding it rounds x to an integer held in the sum's low mantissa bits.
  constexpr float kRound = 12582912.f;
  const float xc = x < -126.f ? -126.f : x;  // -inf too
  const float t = add_rn(xc, kRound);
  const float n = add_rn(t, -kRound);
  const float f = xc - n;  // in [-1/2, 1/2]
  float p = fmaf(0.009570068679749966f, f, 0.055917806923389435f);
  p = fmaf(p, f, 0.240247443318367f);
  p = fmaf(p, f, 0.6931218504905701f);
  p = fmaf(p, f, 0.9999992847442627f);
  // n sits in t's low mantissa bits (two's complement modulo 2^9): shifted to the exponent field
  // it adds n to p's exponent, modulo 2^32.
  const float r = bits_float(float_bits(p) + int32_t(uint32_t(float_bits(t)) << 23));
  if (x < -125.f) return 0.f;
  return x == x ? r : x;
}

}  // namespace nattn::cuda
