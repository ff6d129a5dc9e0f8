// Layer: tests. The inverse map (which queries see a key) against a brute-force scan, L <= 40.
#include <gtest/gtest.h>

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

}  // namespace
}  // namespace nattn_test
