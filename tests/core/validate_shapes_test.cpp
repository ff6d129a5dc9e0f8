// Layer: tests. Validation::kShapes (the C ABI's nattn_check_*_shapes): every check that needs no
// memory, with kFull's messages; null data and outputs sharing memory pass; each tensor's number
// of dims is reported before the problem's rules.
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "core/validate.h"
#include "support/call_check.h"
#include "support/problems.h"

namespace nattn_test {
namespace {

using nattn::Validation;

CallConfig baseline() {
  CallConfig c;
  c.problem = make_problem(2, {5, 6, 1}, make_window({3, 3, 2}));
  c.problem.batch = 2;
  c.problem.heads_q = 4;
  c.problem.heads_kv = 2;
  c.problem.head_dim_v = 3;
  c.problem.num_additional = 2;
  return c;
}

using ValidateShapes = SeededTest;

TEST_F(ValidateShapes, NullDataAndAliasingAreLeftToFullValidation) {
  const CallConfig c = baseline();
  const CallTensors f = make_forward_call(c, rng);
  nattn::ForwardTensors t = f.forward_views();
  ASSERT_TRUE(nattn::validate_forward(c.problem, t, false, Validation::kShapes).ok());
  t.out.data = t.q.data;
  EXPECT_TRUE(nattn::validate_forward(c.problem, t, false, Validation::kShapes).ok());
  EXPECT_NE(nattn::validate_forward(c.problem, t).message().find("out.data = overlapping q"), std::string::npos);
  for (nattn::TensorView* v : {&t.q, &t.k, &t.v, &t.additional_k, &t.additional_v, &t.out, &t.lse}) v->data = nullptr;
  EXPECT_TRUE(nattn::validate_forward(c.problem, t, false, Validation::kShapes).ok());
  EXPECT_NE(nattn::validate_forward(c.problem, t).message().find("q.data = null"), std::string::npos);

  const CallTensors b = make_backward_call(c, rng);
  nattn::BackwardTensors bt = b.backward_views();
  bt.dq.data = bt.dout.data;
  EXPECT_TRUE(nattn::validate_backward(c.problem, bt, false, Validation::kShapes).ok());
  EXPECT_FALSE(nattn::validate_backward(c.problem, bt).ok());
  bt.dk.data = nullptr;
  EXPECT_TRUE(nattn::validate_backward(c.problem, bt, false, Validation::kShapes).ok());

  const std::vector<nattn::TensorView> outs{f.out.view(), f.out.view()}, lses{f.lse.view(), f.lse.view()};
  const nattn::TensorView lse = b.lse.view();
  // The merged out written over a partial: only full validation sees it.
  EXPECT_TRUE(nattn::validate_merge(outs, lses, outs[0], lse, Validation::kShapes).ok());
  EXPECT_NE(nattn::validate_merge(outs, lses, outs[0], lse).message().find("out.data = overlapping outs[0]"),
            std::string::npos);
}

struct Case {
  std::string name, message;
  std::function<void(nattn::Problem&, nattn::ForwardTensors&)> mutate;
};

TEST_F(ValidateShapes, RejectsWithTheFullValidationMessage) {
  using F = nattn::ForwardTensors;
  using P = nattn::Problem;
  const std::vector<Case> cases{
      {"kernel past extent", "kernel_size[1] = 7 is invalid: kernel_size * dilation must be <= extent",
       [](P& p, F&) { p.window.kernel_size[1] = 7; }},
      {"heads", "heads_q = 3 is invalid: must be a multiple of heads_kv = 2", [](P& p, F&) { p.heads_q = 3; }},
      {"k shape", "k.shape = [2, 5, 6, 2, 5] is invalid: expected [2, 5, 6, 2, 4]", [](P&, F& t) { t.k.shape[4] = 5; }},
      {"dtype", "v.dtype = float64 is invalid: must match q.dtype (float32)",
       [](P&, F& t) { t.v.dtype = nattn::DType::kFloat64; }},
      {"device", "k.device = cuda:0 is invalid: must match q.device (cpu)",
       [](P&, F& t) { t.k.device = {nattn::DeviceType::kCUDA, 0}; }},
      {"output stride 0", "must not map two indices to one element", [](P&, F& t) { t.out.stride[1] = 0; }},
      {"negative stride", "q.stride[2] = -1 is invalid", [](P&, F& t) { t.q.stride[2] = -1; }},
      {"additional missing", "additional_v = absent is invalid: required when num_additional = 2",
       [](P&, F& t) { t.additional_v = {}; }},
      // The number of dims first, named by layout, even when the problem breaks a rule too.
      {"ndim before problem rules", "q.ndim = 4 is invalid: expected 5 dimensions [batch, X1, X2, heads_q, head_dim]",
       [](P& p, F& t) {
         t.q.ndim = 4;
         p.window.kernel_size[0] = 9;
       }},
      {"additional ndim",
       "additional_k.ndim = 3 is invalid: expected 4 dimensions [batch, num_additional, heads_kv, head_dim]",
       [](P&, F& t) { t.additional_k.ndim = 3; }},
  };
  const CallConfig c = baseline();
  const CallTensors f = make_forward_call(c, rng);
  for (const Case& k : cases) {
    SCOPED_TRACE(k.name);
    nattn::Problem p = c.problem;
    nattn::ForwardTensors t = f.forward_views();
    k.mutate(p, t);
    const nattn::Status shapes = nattn::validate_forward(p, t, false, Validation::kShapes);
    const nattn::Status full = nattn::validate_forward(p, t);
    EXPECT_EQ(shapes.code(), nattn::StatusCode::kInvalidArgument);
    EXPECT_EQ(shapes.message(), full.message());
    EXPECT_NE(shapes.message().find(k.message), std::string::npos) << shapes.message();
  }
}

TEST_F(ValidateShapes, DenseLayoutNamesTheSequence) {
  CallConfig c;
  c.dense = true;
  c.problem = make_problem(1, {7, 1, 1}, nattn::Window::uniform(7));
  const CallTensors f = make_forward_call(c, rng);
  nattn::ForwardTensors t = f.forward_views();
  t.k.ndim = 5;
  const nattn::Status s = nattn::validate_forward(c.problem, t, true, Validation::kShapes);
  EXPECT_NE(s.message().find("k.ndim = 5 is invalid: expected 4 dimensions [batch, seq_len, heads_kv, head_dim]"),
            std::string::npos)
      << s.message();
}

}  // namespace
}  // namespace nattn_test
