// Layer: tests. Reference forward against dense masked attention in double, one parameter class at a time.
#include <gtest/gtest.h>

#include <vector>

#include "support/call_check.h"
#include "support/problems.h"

namespace nattn_test {
namespace {

using nattn::DType;
using nattn::Problem;

void check(const Problem& p, Rng& rng, DType dtype = DType::kFloat32, bool strided = false, bool with_lse = true) {
  CallConfig c;
  c.problem = p;
  c.dtype = dtype;
  c.strided = strided;
  c.with_lse = with_lse;
  check_forward(c, rng);
}

using Forward = SeededTest;

TEST_F(Forward, KernelSizeAlone) {
  for (int64_t k : {2, 3, 4, 5, 8, 13}) check(make_problem(1, {13, 1, 1}, nattn::Window::uniform(k)), rng);
}

TEST_F(Forward, StrideAlone) {
  for (int64_t s = 1; s <= 5; ++s) check(make_problem(1, {17, 1, 1}, nattn::Window::uniform(5, s)), rng);
}

TEST_F(Forward, DilationAlone) {
  for (int64_t d : {1, 2, 3, 5}) check(make_problem(1, {17, 1, 1}, nattn::Window::uniform(3, 1, d)), rng);
}

TEST_F(Forward, CausalAlone) {
  for (int64_t k : {2, 3, 6}) check(make_problem(1, {11, 1, 1}, nattn::Window::uniform(k, 1, 1, true)), rng);
  check(make_problem(1, {15, 1, 1}, nattn::Window::uniform(4, 3, 2, true)), rng);
}

TEST_F(Forward, CausalPerAxis) {
  for (int a = 0; a < 3; ++a) {
    std::array<bool, 3> causal{false, false, false};
    causal[size_t(a)] = true;
    check(make_problem(3, {5, 6, 7}, make_window({3, 2, 4}, {1, 2, 3}, {1, 2, 1}, causal)), rng);
  }
  check(make_problem(2, {9, 8, 1}, make_window({3, 4, 2}, {3, 1, 1}, {2, 1, 1}, {true, true, false})), rng);
}

TEST_F(Forward, EvenKernels) {
  check(make_problem(2, {9, 10, 1}, make_window({4, 6, 2})), rng);
  check(make_problem(2, {11, 13, 1}, make_window({2, 8, 2}, {2, 4, 1})), rng);
}

TEST_F(Forward, DilationWithUnevenGroups) {
  check(make_problem(2, {11, 13, 1}, make_window({3, 4, 2}, {1, 1, 1}, {3, 2, 1})), rng);
  check(make_problem(3, {7, 9, 8}, make_window({2, 3, 2}, {2, 1, 2}, {3, 3, 4})), rng);
}

// stride == kernel_size is blocked attention: with extents divisible by the kernel, a query
// sees exactly the keys of its own block.
TEST_F(Forward, StrideEqualsKernelIsBlocked) {
  const Problem p = make_problem(2, {12, 9, 1}, make_window({4, 3, 2}, {4, 3, 1}));
  const TokenMask m = spec_mask(p);
  for (int64_t q = 0; q < m.tokens; ++q)
    for (int64_t k = 0; k < m.tokens; ++k)
      ASSERT_EQ(m(q, k), (q / 9) / 4 == (k / 9) / 4 && (q % 9) / 3 == (k % 9) / 3) << q << " " << k;
  check(p, rng);
  check(make_problem(1, {13, 1, 1}, nattn::Window::uniform(5, 5)), rng);  // last block shifted left
}

// kernel_size == extent, non-causal on every axis, is full self-attention.
TEST_F(Forward, KernelEqualsExtentIsFullAttention) {
  const Problem p = make_problem(3, {3, 4, 5}, make_window({3, 4, 5}));
  EXPECT_EQ(spec_mask(p).allowed, dense_mask(60, false).allowed);
  check(p, rng);
  const Problem causal = make_problem(1, {9, 1, 1}, nattn::Window::uniform(9, 1, 1, true));
  EXPECT_EQ(spec_mask(causal).allowed, dense_mask(9, true).allowed);
  check(causal, rng);
}

TEST_F(Forward, GroupedHeads) {
  for (auto [hq, hkv] : {std::pair{6, 2}, std::pair{4, 1}, std::pair{3, 3}}) {
    Problem p = make_problem(2, {7, 9, 1}, make_window({3, 5, 2}, {2, 1, 1}));
    p.heads_q = hq;
    p.heads_kv = hkv;
    p.batch = 2;
    check(p, rng);
  }
}

TEST_F(Forward, ValueHeadDimDiffers) {
  for (auto [d, dv] : {std::pair{5, 9}, std::pair{8, 2}, std::pair{1, 3}}) {
    Problem p = make_problem(1, {13, 1, 1}, nattn::Window::uniform(4, 2));
    p.head_dim = d;
    p.head_dim_v = dv;
    check(p, rng);
  }
}

TEST_F(Forward, AdditionalKeysAndValues) {
  for (int64_t na : {1, 3, 8}) {
    Problem p = make_problem(2, {5, 7, 1}, make_window({3, 2, 2}, {1, 2, 1}, {1, 2, 1}, {true, false, false}));
    p.num_additional = na;
    p.heads_q = 4;
    p.heads_kv = 2;
    p.head_dim_v = 6;
    check(p, rng);
  }
}

TEST_F(Forward, ExplicitScale) {
  for (double scale : {0.0, 0.37, -1.5, 8.0}) {
    Problem p = make_problem(2, {6, 7, 1}, make_window({3, 4, 2}));
    p.scale = scale;
    p.num_additional = 2;
    check(p, rng);
  }
}

TEST_F(Forward, EveryDtype) {
  for (DType dt : {DType::kFloat32, DType::kFloat64, DType::kFloat16, DType::kBFloat16}) {
    Problem p = make_problem(2, {7, 8, 1}, make_window({3, 4, 2}, {2, 1, 1}, {2, 1, 1}, {false, true, false}));
    p.heads_q = 4;
    p.heads_kv = 2;
    p.head_dim = 16;
    p.head_dim_v = 8;
    p.num_additional = 3;
    check(p, rng, dt);
    check(p, rng, dt, /*strided=*/true);
  }
}

TEST_F(Forward, NonContiguousInputsAndOutputs) {
  for (int trial = 0; trial < 8; ++trial) {
    Problem p = make_problem(3, {5, 4, 7}, make_window({2, 3, 4}, {2, 1, 3}, {2, 1, 1}));
    p.batch = 2;
    p.heads_q = 2;
    p.num_additional = 1;
    check(p, rng, trial % 2 ? DType::kFloat32 : DType::kBFloat16, /*strided=*/true);
  }
}

TEST_F(Forward, LseIsOptional) {
  Problem p = make_problem(2, {7, 5, 1}, make_window({3, 3, 2}));
  p.num_additional = 2;
  check(p, rng, DType::kFloat32, false, /*with_lse=*/false);
  check(p, rng, DType::kFloat16, true, /*with_lse=*/false);
}

// q, k and v as views of one packed [B, X1, X2, 3, H, D] buffer: inputs may share memory.
TEST_F(Forward, PackedQkvInputs) {
  CallConfig c;
  c.problem = make_problem(2, {5, 6, 1}, make_window({3, 2, 2}, {2, 1, 1}));
  c.problem.heads_q = c.problem.heads_kv = 2;
  CallTensors t = make_forward_call(c, rng);
  TestTensor packed({1, 5, 6, 3, 2, 4}, DType::kFloat32, Layout::kPadded, rng);
  packed.fill_random(rng);
  nattn::TensorView views[3];
  for (int i = 0; i < 3; ++i) {
    const nattn::TensorView all = packed.view();
    nattn::TensorView& v = views[i];
    v = all;
    v.ndim = 5;
    v.data = static_cast<float*>(all.data) + i * all.stride[3];
    for (int d = 3; d < 5; ++d) {
      v.shape[d] = all.shape[d + 1];
      v.stride[d] = all.stride[d + 1];
    }
  }
  for (int i = 0; i < 3; ++i) (i == 0 ? t.q : i == 1 ? t.k : t.v).write(read_view(views[i]));
  nattn::ForwardTensors f = t.forward_views();
  f.q = views[0];
  f.k = views[1];
  f.v = views[2];
  const nattn::Status s = nattn::forward(c.problem, f);
  ASSERT_TRUE(s.ok()) << s.message();
  expect_fully_written(t.out, "out");
  const DenseForward want = dense_forward(sizes_of(c), mask_of(c), t.dense_inputs());
  expect_close(t.out.read(), want.out, storage_tolerance(DType::kFloat32), "out");
  expect_close(t.lse.read(), want.lse, lse_tolerance(), "lse");
}

// Large scores: the softmax must stay finite and exact (no overflow of exp).
TEST_F(Forward, LargeScoresStayFinite) {
  Problem p = make_problem(1, {9, 1, 1}, nattn::Window::uniform(3));
  p.scale = 900.0;
  check(p, rng, DType::kFloat64);
}

}  // namespace
}  // namespace nattn_test
