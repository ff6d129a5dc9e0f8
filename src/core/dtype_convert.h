// Layer: core. Host conversions between storage dtypes and double (round to nearest even).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace nattn::convert {

struct half_bits {
  uint16_t bits;
};
struct bf16_bits {
  uint16_t bits;
};

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

inline double to_double(float x) { return x; }
inline double to_double(double x) { return x; }
inline double to_double(bf16_bits x) { return bits_to_float(uint32_t(x.bits) << 16); }
inline double to_double(half_bits x) {
  const uint32_t sign = uint32_t(x.bits & 0x8000u) << 16;
  uint32_t exp = (x.bits >> 10) & 0x1f;
  uint32_t man = x.bits & 0x3ffu;
  if (exp == 0x1f) return bits_to_float(sign | 0x7f800000u | (man << 13));  // inf / nan
  if (exp == 0) {
    if (man == 0) return bits_to_float(sign);
    double v = std::ldexp(double(man), -24);  // subnormal
    return sign ? -v : v;
  }
  return bits_to_float(sign | ((exp + 112) << 23) | (man << 13));
}

// double -> float rounded to odd (toward zero, last bit set when inexact). Rounding that float
// to bf16/half then equals rounding x directly; plain float(x) would round twice and miss
// the nearest value when x lies just off a midpoint.
inline float to_float_odd(double x) {
  float f = float(x);
  if (std::isfinite(x) && double(f) != x) {
    if (std::fabs(double(f)) > std::fabs(x)) f = std::nextafter(f, 0.0f);
    f = bits_to_float(float_to_bits(f) | 1u);
  }
  return f;
}

template <class T>
T from_double(double x);
template <>
inline float from_double<float>(double x) {
  return float(x);
}
template <>
inline double from_double<double>(double x) {
  return x;
}
template <>
inline bf16_bits from_double<bf16_bits>(double x) {
  const uint32_t u = float_to_bits(to_float_odd(x));
  if ((u & 0x7fffffffu) > 0x7f800000u) return {uint16_t((u >> 16) | 0x40)};  // quiet nan
  const uint32_t rounded = u + 0x7fffu + ((u >> 16) & 1u);
  return {uint16_t(rounded >> 16)};
}
template <>
inline half_bits from_double<half_bits>(double x) {
  const float f = to_float_odd(x);
  const uint32_t u = float_to_bits(f);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return {uint16_t(sign | 0x7e00u)};
  if (a >= 0x477ff000u) return {uint16_t(sign | 0x7c00u)};  // rounds past 65504: inf
  if (a < 0x38800000u) {                                    // below the smallest normal half: subnormal or zero
    const double m = std::nearbyint(std::ldexp(double(bits_to_float(a)), 24));  // ties-to-even
    return {uint16_t(sign | uint16_t(m))};
  }
  const uint32_t e = (a >> 23) - 112;
  uint32_t m = a & 0x7fffffu;
  uint32_t h = (e << 10) | (m >> 13);
  const uint32_t rest = m & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
  return {uint16_t(sign | h)};
}

}  // namespace nattn::convert
