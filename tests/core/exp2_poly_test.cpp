// Layer: tests. The FMA-pipe 2^x of the softmax (cuda/common/fragment/exp2_poly.h) against
// std::exp2 in double: relative error over the range softmax weights take, exact zeros where
// MUFU.EX2.FTZ flushes (and for -inf), NaN propagation.
#include "cuda/common/fragment/exp2_poly.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "support/test_tensor.h"

namespace nattn_test {
namespace {

using nattn::cuda::exp2_poly;

// Relative error against the exact 2^x (double) of the float input.
double rel_error(float x) {
  const double want = std::exp2(double(x));
  return std::abs(double(exp2_poly(x)) - want) / want;
}

TEST(Exp2Poly, RelativeErrorBelow3e6OverTheSoftmaxRange) {
  // Every float in steps of 2^-12 over [-125, 9), and the half-integers (the rounding's ties).
  double worst = 0;
  float at = 0;
  for (int i = -125 * 4096; i < 9 * 4096; ++i) {
    const float x = float(i) / 4096.f;
    const double e = rel_error(x);
    if (e > worst) worst = e, at = x;
  }
  for (int i = -250; i < 18; ++i) worst = std::max(worst, rel_error(float(i) / 2.f + 0.f));
  EXPECT_LT(worst, 3e-6) << "worst at x = " << at;
}

class Exp2PolyRandom : public SeededTest {};

TEST_F(Exp2PolyRandom, RandomInputsMatchExp2) {
  for (int i = 0; i < 200000; ++i) {
    const float x = float(rng.uniform(-125.0, 9.0));
    ASSERT_LT(rel_error(x), 3e-6) << "x = " << x;
  }
}

TEST(Exp2Poly, FlushesBelow2ToTheMinus125AndMasksExactly) {
  EXPECT_EQ(exp2_poly(-std::numeric_limits<float>::infinity()), 0.f);
  EXPECT_EQ(exp2_poly(-1e30f), 0.f);
  EXPECT_EQ(exp2_poly(-125.5f), 0.f);
  EXPECT_EQ(exp2_poly(std::nextafter(-125.f, -200.f)), 0.f);
  EXPECT_GT(exp2_poly(-125.f), 0.f);
  EXPECT_EQ(exp2_poly(0.f), exp2_poly(-0.f));
  EXPECT_NEAR(exp2_poly(0.f), 1.0, 3e-6);
}

TEST(Exp2Poly, NanStaysNan) { EXPECT_TRUE(std::isnan(exp2_poly(std::numeric_limits<float>::quiet_NaN()))); }

}  // namespace
}  // namespace nattn_test
