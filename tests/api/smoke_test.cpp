// Layer: tests. Smoke test: the library runs a small forward through the public API.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "nattn/nattn.h"

TEST(Smoke, ForwardRuns) {
  nattn::Problem p;
  p.rank = 1;
  p.extent = {10, 1, 1};
  p.head_dim = p.head_dim_v = 4;
  p.window = nattn::Window::uniform(3);
  std::vector<float> q(40, 0.5f), k(40, 0.25f), v(40), o(40, NAN), lse(10, NAN);
  for (size_t i = 0; i < v.size(); ++i) v[i] = float(i % 7);
  nattn::ForwardTensors t;
  t.q = nattn::TensorView::contiguous(q.data(), nattn::DType::kFloat32, {1, 10, 1, 4});
  t.k = nattn::TensorView::contiguous(k.data(), nattn::DType::kFloat32, {1, 10, 1, 4});
  t.v = nattn::TensorView::contiguous(v.data(), nattn::DType::kFloat32, {1, 10, 1, 4});
  t.out = nattn::TensorView::contiguous(o.data(), nattn::DType::kFloat32, {1, 10, 1, 4});
  t.lse = nattn::TensorView::contiguous(lse.data(), nattn::DType::kFloat32, {1, 10, 1});
  nattn::Status s = nattn::forward(p, t);
  ASSERT_TRUE(s.ok()) << s.message();
  // Uniform scores: out is the mean of the 3 window values; query 0 sees keys {0,1,2}.
  EXPECT_NEAR(o[0], (v[0] + v[4] + v[8]) / 3.0, 1e-5);
  EXPECT_NEAR(lse[0], std::log(3.0) + 4 * 0.5 * 0.25 * 0.5, 1e-5);
}
