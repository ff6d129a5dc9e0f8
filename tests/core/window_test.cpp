// Layer: tests. src/core/window.h against SPEC.md's worked examples and spec_mask for all L <= 40.
#include "core/window.h"

#include <gtest/gtest.h>

#include <vector>

#include "core/axes.h"
#include "support/axis_sweep.h"
#include "support/spec_mask.h"

namespace nattn_test {
namespace {

using nattn::window::Axis;
using nattn::window::Range;

// The axis indices query i attends to, from the header under test.
std::vector<int64_t> library_keys(const Axis& a, int64_t i) {
  const int64_t g = nattn::window::group_of(a, i);
  const Range r = nattn::window::group_window(a, g, nattn::window::position_of(a, i));
  std::vector<int64_t> keys;
  for (int64_t t = r.begin; t < r.end; ++t) keys.push_back(nattn::window::index_of(a, g, t));
  return keys;
}

std::vector<int64_t> spec_keys(const SpecAxis& a, int64_t L, int64_t i) {
  std::vector<int64_t> keys;
  for (int64_t j = 0; j < L; ++j)
    if (spec_attends(a, L, i, j)) keys.push_back(j);
  return keys;
}

struct Example {
  SpecAxis axis;  // kernel_size, stride, dilation, is_causal
  int64_t query;
  std::vector<int64_t> keys;
};

// SPEC.md "Worked examples (L = 10, one axis)", row by row.
const std::vector<Example>& worked_examples() {
  static const std::vector<Example> ex = [] {
    std::vector<Example> e = {
        {{3, 1, 1, false}, 0, {0, 1, 2}},    {{3, 1, 1, false}, 5, {4, 5, 6}},    {{3, 1, 1, false}, 9, {7, 8, 9}},
        {{4, 1, 1, false}, 5, {3, 4, 5, 6}}, {{4, 1, 1, false}, 0, {0, 1, 2, 3}}, {{4, 1, 1, false}, 9, {6, 7, 8, 9}},
        {{4, 2, 1, false}, 4, {3, 4, 5, 6}}, {{4, 2, 1, false}, 5, {3, 4, 5, 6}}, {{4, 2, 1, false}, 8, {6, 7, 8, 9}},
        {{4, 2, 1, false}, 9, {6, 7, 8, 9}}, {{3, 1, 2, false}, 0, {0, 2, 4}},    {{3, 1, 2, false}, 1, {1, 3, 5}},
        {{3, 1, 2, false}, 8, {4, 6, 8}},    {{3, 1, 2, false}, 9, {5, 7, 9}},    {{3, 1, 1, true}, 0, {0}},
        {{3, 1, 1, true}, 1, {0, 1}},        {{3, 1, 1, true}, 5, {3, 4, 5}},     {{4, 2, 1, true}, 4, {2, 3, 4}},
        {{4, 2, 1, true}, 5, {2, 3, 4, 5}},
    };
    for (int64_t i = 0; i < 5; ++i) e.push_back({{5, 5, 1, false}, i, {0, 1, 2, 3, 4}});
    for (int64_t i = 5; i < 10; ++i) e.push_back({{5, 5, 1, false}, i, {5, 6, 7, 8, 9}});
    return e;
  }();
  return ex;
}

TEST(Window, WorkedExamplesOfSpec) {
  for (const Example& e : worked_examples()) {
    const AxisCase c{10, e.axis};
    SCOPED_TRACE(c.describe() + " query " + std::to_string(e.query));
    EXPECT_EQ(library_keys(c.lib(), e.query), e.keys);
    EXPECT_EQ(spec_keys(e.axis, 10, e.query), e.keys) << "the oracle itself disagrees with SPEC.md";
  }
}

TEST(Window, MatchesSpecForEveryAxisUpTo40) {
  int64_t cases = 0;
  for_each_axis_case(40, [&](const AxisCase& c) {
    ++cases;
    for (int64_t i = 0; i < c.L; ++i) {
      if (library_keys(c.lib(), i) != spec_keys(c.spec, c.L, i)) {
        ADD_FAILURE() << c.describe() << " query " << i;
        return;
      }
    }
  });
  EXPECT_GT(cases, 30000);  // the sweep really ran
}

// The Problem -> Axis bridge picks each axis's own parameters.
TEST(Window, ProblemAxesMatchSpec) {
  nattn::Problem p;
  p.rank = 3;
  p.extent = {9, 14, 11};
  p.window.kernel_size = {3, 4, 5};
  p.window.stride = {2, 4, 1};
  p.window.dilation = {3, 1, 2};
  p.window.is_causal = {false, true, false};
  for (int a = 0; a < 3; ++a) {
    const Axis ax = nattn::axis(p, a);
    for (int64_t i = 0; i < p.extent[a]; ++i)
      EXPECT_EQ(library_keys(ax, i), spec_keys(spec_axis(p, a), p.extent[a], i)) << "axis " << a << " query " << i;
  }
}

TEST(Window, WindowProperties) {
  for_each_axis_case(40, [&](const AxisCase& c) {
    const Axis a = c.lib();
    const int64_t k = c.spec.kernel_size, s = c.spec.stride;
    for (int64_t g = 0; g < c.spec.dilation; ++g) {
      const int64_t Lg = nattn::window::group_length(a, g);
      Range prev{0, 0};
      for (int64_t p = 0; p < Lg; ++p) {
        const Range r = nattn::window::group_window(a, g, p);
        const bool ok_size = c.spec.is_causal ? (r.size() >= 1 && r.size() <= k && r.end == p + 1) : r.size() == k;
        const bool ok_bounds = r.begin >= 0 && r.end <= Lg && r.contains(p);
        const bool ok_monotone = p == 0 || (prev.begin <= r.begin && prev.end <= r.end);
        // Queries of one stride group share the window start (non-causal: the whole window).
        const Range lead = nattn::window::group_window(a, g, (p / s) * s);
        const bool ok_group = lead.begin == r.begin && (c.spec.is_causal || lead.end == r.end);
        if (!(ok_size && ok_bounds && ok_monotone && ok_group)) {
          ADD_FAILURE() << c.describe() << " group " << g << " position " << p << " window [" << r.begin << ", "
                        << r.end << "): size " << ok_size << " bounds " << ok_bounds << " monotone " << ok_monotone
                        << " stride group " << ok_group;
          return;
        }
        prev = r;
      }
    }
  });
}

TEST(Window, GroupLengthsPartitionTheAxis) {
  for_each_axis_case(40, [&](const AxisCase& c) {
    int64_t total = 0;
    for (int64_t g = 0; g < c.spec.dilation; ++g) {
      int64_t brute = 0;
      for (int64_t i = 0; i < c.L; ++i) brute += i % c.spec.dilation == g;
      EXPECT_EQ(nattn::window::group_length(c.lib(), g), brute) << c.describe();
      total += brute;
    }
    EXPECT_EQ(total, c.L);
  });
}

}  // namespace
}  // namespace nattn_test
