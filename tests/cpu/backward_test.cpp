// Layer: tests. Reference backward against finite differences and the dense analytic backward.
// Finite differences are central, of the dense double forward, for loss = sum(out * w) +
// sum(lse * u) (so dlse is exercised), for every parameter class.
#include <gtest/gtest.h>

#include <functional>
#include <vector>

#include "support/call_check.h"
#include "support/problems.h"

namespace nattn_test {
namespace {

using nattn::DType;
using nattn::Problem;

using Backward = SeededTest;

// The library's float64 backward with dout = w and dlse = u against (L(x+h) - L(x-h)) / 2h.
void check_finite_differences(const Problem& p, Rng& rng) {
  CallConfig c;
  c.problem = p;
  c.dtype = DType::kFloat64;
  c.with_dlse = true;
  SCOPED_TRACE(c.describe());
  const CallTensors t = make_backward_call(c, rng);
  const nattn::Status s = run_backward(c, t);
  ASSERT_TRUE(s.ok()) << s.message();
  const std::vector<double> w = t.dout.read(), u = t.dlse.read();
  DenseInputs x = t.dense_inputs();
  auto loss = [&] {
    const DenseForward f = dense_forward(sizes_of(c), mask_of(c), x);
    double l = 0;
    for (size_t i = 0; i < w.size(); ++i) l += f.out[i] * w[i];
    for (size_t i = 0; i < u.size(); ++i) l += f.lse[i] * u[i];
    return l;
  };
  auto numeric = [&](std::vector<double>* param) {
    std::vector<double> g(param->size());
    const double h = 1e-5;
    for (size_t i = 0; i < param->size(); ++i) {
      const double x0 = (*param)[i];
      (*param)[i] = x0 + h;
      const double up = loss();
      (*param)[i] = x0 - h;
      const double down = loss();
      (*param)[i] = x0;
      g[i] = (up - down) / (2 * h);
    }
    return g;
  };
  // The backward reads lse rounded to float32, so each probability it uses is off by ~1e-7
  // relative; sums over queries may cancel, hence a bound relative to the largest gradient.
  const Tolerance tol{5e-6, 1e-6};
  expect_close(t.dq.read(), numeric(&x.q), tol, "dq");
  expect_close(t.dk.read(), numeric(&x.k), tol, "dk");
  expect_close(t.dv.read(), numeric(&x.v), tol, "dv");
  if (p.num_additional > 0) {
    expect_close(t.dka.read(), numeric(&x.ka), tol, "d_additional_k");
    expect_close(t.dva.read(), numeric(&x.va), tol, "d_additional_v");
  }
}

// The parameter classes: each window parameter alone, causal, grouped heads, Dv != D,
// additional keys, explicit scale.
std::vector<Problem> parameter_classes() {
  std::vector<Problem> ps;
  ps.push_back(make_problem(1, {9, 1, 1}, nattn::Window::uniform(3)));
  ps.push_back(make_problem(1, {9, 1, 1}, nattn::Window::uniform(4)));
  ps.push_back(make_problem(1, {11, 1, 1}, nattn::Window::uniform(4, 3)));
  ps.push_back(make_problem(1, {11, 1, 1}, nattn::Window::uniform(3, 1, 3)));
  ps.push_back(make_problem(1, {10, 1, 1}, nattn::Window::uniform(4, 2, 1, true)));
  ps.push_back(make_problem(2, {5, 6, 1}, make_window({2, 3, 2}, {2, 1, 1}, {2, 1, 1}, {false, true, false})));
  ps.push_back(make_problem(3, {3, 4, 5}, make_window({2, 2, 3}, {1, 2, 3}, {1, 2, 1}, {true, false, false})));
  Problem grouped = make_problem(1, {7, 1, 1}, nattn::Window::uniform(3));
  grouped.heads_q = 4;
  grouped.heads_kv = 2;
  ps.push_back(grouped);
  Problem dv = make_problem(2, {4, 5, 1}, make_window({3, 2, 2}));
  dv.head_dim = 2;
  dv.head_dim_v = 5;
  ps.push_back(dv);
  Problem extra = make_problem(1, {8, 1, 1}, nattn::Window::uniform(3, 1, 2, true));
  extra.num_additional = 3;
  extra.heads_q = 2;
  extra.batch = 2;
  ps.push_back(extra);
  Problem scaled = make_problem(1, {7, 1, 1}, nattn::Window::uniform(5, 2));
  scaled.scale = 1.7;
  scaled.num_additional = 1;
  ps.push_back(scaled);
  Problem zero = scaled;
  zero.scale = 0.0;
  ps.push_back(zero);
  return ps;
}

TEST_F(Backward, MatchesFiniteDifferences) {
  for (const Problem& p : parameter_classes()) check_finite_differences(p, rng);
}

TEST_F(Backward, MatchesDenseAnalyticBackward) {
  for (const Problem& p : parameter_classes())
    for (bool with_dlse : {false, true}) {
      CallConfig c;
      c.problem = p;
      c.with_dlse = with_dlse;
      check_backward(c, rng);
    }
}

TEST_F(Backward, EveryDtypeAndStridedViews) {
  Problem p = make_problem(2, {7, 6, 1}, make_window({3, 4, 2}, {2, 1, 1}, {2, 1, 1}, {false, true, false}));
  p.heads_q = 4;
  p.heads_kv = 2;
  p.head_dim = 8;
  p.head_dim_v = 6;
  p.num_additional = 2;
  p.batch = 2;
  for (DType dt : {DType::kFloat32, DType::kFloat64, DType::kFloat16, DType::kBFloat16})
    for (bool strided : {false, true}) {
      CallConfig c;
      c.problem = p;
      c.dtype = dt;
      c.strided = strided;
      c.with_dlse = strided;
      check_backward(c, rng);
    }
}

}  // namespace
}  // namespace nattn_test
