// Layer: tests. attention_forward/backward against the dense oracle (mask: all keys, or keys <= query).
#include <gtest/gtest.h>

#include "support/call_check.h"
#include "support/problems.h"

namespace nattn_test {
namespace {

using nattn::DType;

CallConfig dense_config(int64_t n, bool causal, int64_t hq = 1, int64_t hkv = 1) {
  CallConfig c;
  c.dense = true;
  c.problem = make_problem(1, {n, 1, 1}, nattn::Window::uniform(n, 1, 1, causal));
  c.problem.heads_q = hq;
  c.problem.heads_kv = hkv;
  return c;
}

using DenseAttention = SeededTest;

TEST_F(DenseAttention, ForwardAndBackward) {
  for (bool causal : {false, true})
    for (int64_t n : {1, 2, 17}) {
      CallConfig c = dense_config(n, causal);
      check_forward(c, rng);
      check_backward(c, rng);
    }
}

TEST_F(DenseAttention, GroupedHeadsDvScaleAndBatch) {
  for (bool causal : {false, true}) {
    CallConfig c = dense_config(13, causal, 6, 2);
    c.problem.batch = 2;
    c.problem.head_dim = 5;
    c.problem.head_dim_v = 7;
    c.problem.scale = 0.8;
    c.with_dlse = true;
    check_forward(c, rng);
    check_backward(c, rng);
  }
}

TEST_F(DenseAttention, EveryDtypeWithStridedViews) {
  for (DType dt : {DType::kFloat32, DType::kFloat64, DType::kFloat16, DType::kBFloat16}) {
    CallConfig c = dense_config(11, dt == DType::kFloat16 || dt == DType::kFloat64, 4, 1);
    c.dtype = dt;
    c.strided = true;
    c.problem.head_dim = 8;
    check_forward(c, rng);
    check_backward(c, rng);
  }
}

}  // namespace
}  // namespace nattn_test
