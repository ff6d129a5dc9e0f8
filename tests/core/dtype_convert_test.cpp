// Layer: tests. Storage conversions (src/core/dtype_convert.h) against the IEEE definitions.
// Every binary16/bfloat16 bit pattern decodes to its value, and doubles round to the nearest
// representable value, ties to even. The test helpers store through these conversions too,
// so they are checked here against an independent decoding.
#include "core/dtype_convert.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>

#include "support/test_tensor.h"

namespace nattn_test {
namespace {

using nattn::convert::bf16_bits;
using nattn::convert::from_double;
using nattn::convert::half_bits;
using nattn::convert::to_double;

// A binary format with `e_bits` exponent and `m_bits` fraction bits, decoded from its bits.
double decode(uint32_t bits, int e_bits, int m_bits) {
  const uint32_t m = bits & ((1u << m_bits) - 1), e = (bits >> m_bits) & ((1u << e_bits) - 1);
  const double sign = (bits >> (e_bits + m_bits)) & 1 ? -1.0 : 1.0;
  const int bias = (1 << (e_bits - 1)) - 1;
  if (e == (1u << e_bits) - 1) return m ? NAN : sign * INFINITY;
  if (e == 0) return sign * std::ldexp(double(m), 1 - bias - m_bits);  // subnormal
  return sign * std::ldexp(double(m + (1u << m_bits)), int(e) - bias - m_bits);
}

template <class Bits>
void check_format(int e_bits, int m_bits, Rng& rng) {
  for (uint32_t b = 0; b < 65536; ++b) {
    const double want = decode(b, e_bits, m_bits);
    const double got = to_double(Bits{uint16_t(b)});
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(got)) << std::hex << b;
      ASSERT_TRUE(std::isnan(to_double(from_double<Bits>(want))));
      continue;
    }
    ASSERT_EQ(got, want) << std::hex << b;
    ASSERT_EQ(std::signbit(got), std::signbit(want)) << std::hex << b;
    ASSERT_EQ(from_double<Bits>(want).bits, b) << std::hex << b;  // exact values round-trip
  }
  // Between two neighbours a < b (positive, finite): below the midpoint rounds to a, above to
  // b, on it to the one with an even last bit; also a hair off the midpoint.
  const uint32_t max_finite = ((1u << e_bits) - 1) << m_bits;
  for (int trial = 0; trial < 200000; ++trial) {
    const uint32_t a = uint32_t(rng.integer(0, max_finite - 2)), b = a + 1;
    const double va = decode(a, e_bits, m_bits), vb = decode(b, e_bits, m_bits), mid = (va + vb) / 2;
    const double t = rng.uniform(0.0, 1.0), x = va + t * (vb - va);
    const uint32_t nearest = x < mid ? a : x > mid ? b : (a % 2 == 0 ? a : b);
    ASSERT_EQ(from_double<Bits>(x).bits, nearest) << std::hex << a << " x " << x;
    ASSERT_EQ(from_double<Bits>(-x).bits, nearest | (1u << (e_bits + m_bits))) << std::hex << a;
    ASSERT_EQ(from_double<Bits>(mid).bits, a % 2 == 0 ? a : b) << std::hex << a << " midpoint";
    ASSERT_EQ(from_double<Bits>(std::nextafter(mid, va)).bits, a) << std::hex << a << " just below the midpoint";
    ASSERT_EQ(from_double<Bits>(std::nextafter(mid, vb)).bits, b) << std::hex << a << " just above the midpoint";
  }
}

TEST(DtypeConvert, Float16) {
  Rng rng;
  SCOPED_TRACE(rng.trace());
  check_format<half_bits>(5, 10, rng);
  EXPECT_EQ(from_double<half_bits>(65519.99).bits, 0x7bff);  // below the midpoint to infinity: 65504
  EXPECT_EQ(from_double<half_bits>(65520.0).bits, 0x7c00);   // the midpoint rounds to even: inf
  EXPECT_EQ(from_double<half_bits>(1e300).bits, 0x7c00);
}

TEST(DtypeConvert, BFloat16) {
  Rng rng;
  SCOPED_TRACE(rng.trace());
  check_format<bf16_bits>(8, 7, rng);
  EXPECT_EQ(from_double<bf16_bits>(1e300).bits, 0x7f80);
}

}  // namespace
}  // namespace nattn_test
