// Layer: tests. Work counts (SPEC.md "Counting work") against brute-force pair counts.
#include <gtest/gtest.h>

#include <array>

#include "nattn/problem.h"
#include "support/spec_mask.h"
#include "support/test_tensor.h"

namespace nattn_test {
namespace {

nattn::Problem random_problem(Rng& rng) {
  nattn::Problem p;
  p.rank = int(rng.integer(1, 3));
  for (int a = 0; a < p.rank; ++a) {
    p.extent[size_t(a)] = rng.integer(2, p.rank == 1 ? 40 : p.rank == 2 ? 12 : 7);
    const int64_t k = rng.integer(2, p.extent[size_t(a)]);
    p.window.kernel_size[size_t(a)] = k;
    p.window.stride[size_t(a)] = rng.integer(1, k);
    p.window.dilation[size_t(a)] = rng.integer(1, p.extent[size_t(a)] / k);
    p.window.is_causal[size_t(a)] = rng.coin();
  }
  p.batch = rng.integer(1, 3);
  p.heads_kv = rng.integer(1, 3);
  p.heads_q = p.heads_kv * rng.integer(1, 3);
  p.head_dim = p.head_dim_v = rng.integer(1, 128);
  p.num_additional = rng.coin() ? 0 : rng.integer(1, 5);
  return p;
}

int64_t brute_pairs(const nattn::Problem& p) {
  const TokenMask m = spec_mask(p);
  int64_t n = 0;
  for (char c : m.allowed) n += c;
  return n + m.tokens * p.num_additional;
}

TEST(Counting, MatchesBruteForceOnRandomProblems) {
  Rng rng;
  SCOPED_TRACE(rng.trace());
  for (int trial = 0; trial < 200; ++trial) {
    const nattn::Problem p = random_problem(rng);
    const int64_t pairs = brute_pairs(p);
    const double n = double(p.tokens());
    const double scale = 4.0 * double(p.batch * p.heads_q * p.head_dim);  // SPEC.md, Dv == D
    ASSERT_EQ(nattn::attended_pairs(p), pairs) << "trial " << trial;
    EXPECT_DOUBLE_EQ(nattn::forward_flops(p), scale * double(pairs));
    // Dense attention attends every key: N^2 pairs, plus the additional keys of every query.
    EXPECT_DOUBLE_EQ(nattn::dense_forward_flops(p), scale * n * (n + double(p.num_additional)));
    EXPECT_DOUBLE_EQ(nattn::flopwise_speedup_limit(p), n * (n + double(p.num_additional)) / double(pairs));
  }
}

TEST(Counting, SpeedupLimitIsDenseOverUsefulWithoutAdditionalKeys) {
  nattn::Problem p;
  p.rank = 1;
  p.extent = {10, 1, 1};
  p.window = nattn::Window::uniform(3);
  // SPEC.md example k=3, L=10: every query attends 3 keys, so 30 pairs of 100.
  EXPECT_EQ(nattn::attended_pairs(p), 30);
  EXPECT_DOUBLE_EQ(nattn::flopwise_speedup_limit(p), 100.0 / 30.0);
  p.window = nattn::Window::uniform(10);  // kernel == extent: full attention
  EXPECT_DOUBLE_EQ(nattn::flopwise_speedup_limit(p), 1.0);
}

// Different value head dim: QK^T costs 2*D and PV 2*Dv per pair (problem.h).
TEST(Counting, ValueHeadDimCountsSeparately) {
  nattn::Problem p;
  p.rank = 2;
  p.extent = {9, 7, 1};
  p.window = nattn::Window::uniform(3, 2);
  p.head_dim = 16;
  p.head_dim_v = 48;
  EXPECT_DOUBLE_EQ(nattn::forward_flops(p), 2.0 * (16 + 48) * double(brute_pairs(p)));
}

// Benchmark-sized grids: the per-axis brute counts multiply (the neighborhood is a product).
TEST(Counting, BenchmarkSizedProblems) {
  struct Case {
    int rank;
    std::array<int64_t, 3> extent, kernel, stride;
  };
  const Case cases[] = {
      {1, {8192, 1, 1}, {2048, 2, 2}, {256, 1, 1}},
      {2, {256, 256, 1}, {80, 80, 2}, {16, 16, 1}},
      {3, {30, 48, 80}, {18, 24, 24}, {16, 8, 8}},
      {3, {16, 44, 80}, {12, 32, 32}, {1, 1, 1}},
  };
  for (const Case& c : cases) {
    nattn::Problem p;
    p.rank = c.rank;
    p.extent = c.extent;
    p.window.kernel_size = c.kernel;
    p.window.stride = c.stride;
    int64_t pairs = 1;
    for (int a = 0; a < p.rank; ++a) {
      int64_t axis_pairs = 0;
      const int64_t L = p.extent[size_t(a)];
      for (int64_t i = 0; i < L; ++i)
        for (int64_t j = 0; j < L; ++j) axis_pairs += spec_attends(spec_axis(p, a), L, i, j);
      pairs *= axis_pairs;
    }
    EXPECT_EQ(nattn::attended_pairs(p), pairs) << "rank " << c.rank << " extent " << c.extent[0];
  }
}

}  // namespace
}  // namespace nattn_test
