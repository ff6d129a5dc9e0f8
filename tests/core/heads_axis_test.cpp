// Layer: tests. Heads as a grid axis (core/heads_axis.h): which calls the rewrite is exact for,
// the rewritten problem and views, and 80 random calls run rewritten (reference backend) against
// the dense oracle of the call as it is, forward and backward.
#include "core/heads_axis.h"

#include <gtest/gtest.h>

#include "support/call_check.h"

namespace nattn_test {
namespace {

nattn::Problem two_d(int64_t heads) {
  nattn::Problem p;
  p.rank = 2;
  p.batch = 2;
  p.extent = {7, 9, 1};
  p.heads_q = p.heads_kv = heads;
  p.head_dim = p.head_dim_v = 8;
  p.window = nattn::Window::uniform(3);
  return p;
}

TEST(HeadsAxis, AppliesOnlyWhereExact) {
  EXPECT_TRUE(nattn::heads_axis_applies(two_d(4)));
  EXPECT_FALSE(nattn::heads_axis_applies(two_d(1)));  // nothing to pack
  nattn::Problem gqa = two_d(4);
  gqa.heads_kv = 2;  // grouped heads: the kv heads become the axis, two query heads each
  EXPECT_TRUE(nattn::heads_axis_applies(gqa));
  gqa.heads_kv = 1;  // one kv head: nothing to pack
  EXPECT_FALSE(nattn::heads_axis_applies(gqa));
  nattn::Problem extra = two_d(4);
  extra.num_additional = 3;  // every query of a head sees its head's additional keys only
  EXPECT_FALSE(nattn::heads_axis_applies(extra));
  nattn::Problem placed = two_d(4);
  placed.placement.key_extent = {5, 9, 0};
  EXPECT_FALSE(nattn::heads_axis_applies(placed));
  nattn::Problem three_d = two_d(4);
  three_d.rank = 3;  // no fourth axis
  EXPECT_FALSE(nattn::heads_axis_applies(three_d));
}

TEST(HeadsAxis, RewritesTheProblemAndTheViews) {
  nattn::Problem p = two_d(4);
  p.heads_kv = 2;
  p.window.stride = {1, 2, 1};
  p.window.dilation = {2, 1, 1};
  p.window.is_causal = {false, true, false};
  const nattn::Problem h = nattn::heads_as_axis(p);
  EXPECT_EQ(h.rank, 3);
  EXPECT_EQ(h.heads_q, 2);  // the query heads of one kv head
  EXPECT_EQ(h.heads_kv, 1);
  EXPECT_EQ(h.extent, (std::array<int64_t, 3>{2, 7, 9}));  // the kv heads
  EXPECT_EQ(h.window.kernel_size, (std::array<int64_t, 3>{1, 3, 3}));
  EXPECT_EQ(h.window.stride, (std::array<int64_t, 3>{1, 1, 2}));
  EXPECT_EQ(h.window.dilation, (std::array<int64_t, 3>{1, 2, 1}));
  EXPECT_EQ(h.window.is_causal, (std::array<bool, 3>{false, false, true}));
  // Query side [B, X1, X2, 4, C] contiguous -> [B, 2, X1, X2, 2, C]: query head 2a + i is
  // head i at position a (kv head a) of the new axis.
  char storage[8];
  auto expect_view = [](const nattn::TensorView& v, std::vector<int64_t> shape, std::vector<int64_t> stride) {
    ASSERT_EQ(v.ndim, int(shape.size()));
    for (int i = 0; i < v.ndim; ++i) {
      EXPECT_EQ(v.shape[i], shape[size_t(i)]) << "dim " << i;
      EXPECT_EQ(v.stride[i], stride[size_t(i)]) << "dim " << i;
    }
  };
  const nattn::TensorView q = nattn::TensorView::contiguous(storage, nattn::DType::kFloat32, {2, 7, 9, 4, 8});
  const nattn::TensorView v = nattn::heads_as_axis(q, p);
  EXPECT_EQ(v.data, q.data);
  expect_view(v, {2, 2, 7, 9, 2, 8}, {2016, 16, 288, 32, 8, 1});
  // Key side [B, X1, X2, 2, C] -> [B, 2, X1, X2, 1, C].
  const nattn::TensorView k = nattn::TensorView::contiguous(storage, nattn::DType::kFloat32, {2, 7, 9, 2, 8});
  expect_view(nattn::heads_as_axis(k, p), {2, 2, 7, 9, 1, 8}, {1008, 8, 144, 16, 8, 1});
  const nattn::TensorView lse = nattn::TensorView::contiguous(storage, nattn::DType::kFloat32, {2, 7, 9, 4});
  expect_view(nattn::heads_as_axis(lse, p), {2, 2, 7, 9, 2}, {252, 2, 36, 4, 1});
  EXPECT_FALSE(nattn::heads_as_axis(nattn::TensorView{}, p).defined());
}

// A random call the rewrite applies to: rank 1 or 2, 2-4 kv heads, 1-3 query heads each, no
// additional keys.
CallConfig random_config(Rng& rng) {
  CallConfig c = random_call_config(rng, 2);
  nattn::Problem& p = c.problem;
  p.heads_kv = rng.integer(2, 4);
  p.heads_q = p.heads_kv * rng.integer(1, 3);
  p.num_additional = 0;
  c.heads_axis = true;
  return c;
}

class HeadsAxisCall : public ::testing::TestWithParam<int> {};

TEST_P(HeadsAxisCall, MatchesTheOracleOfTheCallAsItIs) {
  Rng rng;
  SCOPED_TRACE(rng.trace());
  const CallConfig c = random_config(rng);
  ASSERT_TRUE(nattn::heads_axis_applies(c.problem));
  check_forward(c, rng);
  check_backward(c, rng);
}

INSTANTIATE_TEST_SUITE_P(Reference, HeadsAxisCall, ::testing::Range(0, 80));

}  // namespace
}  // namespace nattn_test
