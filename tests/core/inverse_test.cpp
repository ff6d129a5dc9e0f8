// Layer: tests. The inverse map (which queries see a key) against a brute-force scan, L <= 40.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "core/window.h"
#include "support/axis_sweep.h"
#include "support/spec_mask.h"

namespace nattn_test {
namespace {

using nattn::window::Range;

TEST(Inverse, MatchesBruteForceForEveryAxisUpTo40) {
  for_each_axis_case(40, [&](const AxisCase& c) {
    const nattn::window::Axis a = c.lib();
    for (int64_t j = 0; j < c.L; ++j) {
      const int64_t g = nattn::window::group_of(a, j);
      const Range r = nattn::window::group_inverse(a, g, nattn::window::position_of(a, j));
      // Every query attending j (scan all queries); all lie in j's dilation group.
      std::vector<int64_t> want, got;
      for (int64_t i = 0; i < c.L; ++i)
        if (spec_attends(c.spec, c.L, i, j)) want.push_back(i);
      for (int64_t p = r.begin; p < r.end; ++p) got.push_back(nattn::window::index_of(a, g, p));
      if (got != want) {
        ADD_FAILURE() << c.describe() << " key " << j << ": inverse [" << r.begin << ", " << r.end << ") in group " << g
                      << ", " << want.size() << " queries attend it";
        return;
      }
    }
  });
}

// The 32-bit searches (tiles::query_union's device path, window::fits32) give what the 64-bit
// ones do, on groups up to the fits32 limit, where brute force cannot go: both are checked
// against the windows themselves (first_attending: the first query whose window ends past t;
// last_attending_end: the first whose window starts past t).
TEST(Inverse, ThirtyTwoBitSearchesMatchSixtyFourBitOnLargeGroups) {
  std::mt19937_64 gen(20261205);
  const auto pick = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(gen); };
  for (int trial = 0; trial < 2000; ++trial) {
    const int64_t Lg = pick(1, 3) == 1 ? pick(1, 64) : pick(1, (int64_t(1) << 29) - 1);
    const int64_t k = pick(1, std::min<int64_t>(Lg, trial % 2 ? 64 : Lg));
    const int64_t s = pick(1, k);
    const bool causal = pick(0, 1) == 1;
    const int64_t t = pick(0, Lg - 1);
    ASSERT_TRUE(nattn::window::fits32(Lg, k, s));
    const int64_t first = nattn::window::first_attending<int64_t>(t, Lg, k, s, causal);
    const int64_t last = nattn::window::last_attending_end<int64_t>(t, Lg, k, s, causal);
    const auto I = [](int64_t x) { return int32_t(x); };
    EXPECT_EQ(first, nattn::window::first_attending<int32_t>(I(t), I(Lg), I(k), I(s), causal));
    EXPECT_EQ(last, nattn::window::last_attending_end<int32_t>(I(t), I(Lg), I(k), I(s), causal));
    // The searches' own definitions, from the windows.
    const Range at_first = nattn::window::group_window(first, Lg, k, s, causal);
    EXPECT_TRUE(first == Lg || at_first.end > t);
    if (first > 0) EXPECT_LE(nattn::window::group_window(first - 1, Lg, k, s, causal).end, t);
    EXPECT_TRUE(last == Lg || nattn::window::group_window(last, Lg, k, s, causal).begin > t);
    if (last > 0) EXPECT_LE(nattn::window::group_window(last - 1, Lg, k, s, causal).begin, t);
    if (HasFailure()) {
      ADD_FAILURE() << "Lg " << Lg << " k " << k << " s " << s << " causal " << causal << " t " << t;
      return;
    }
  }
}

}  // namespace
}  // namespace nattn_test
