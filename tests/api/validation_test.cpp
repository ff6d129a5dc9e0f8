// Layer: tests. Every invalid-input class: kInvalidArgument, a precise message, nothing written.
// Messages name the argument, its value and the rule; every output (and input) byte stays as it was.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "support/call_check.h"
#include "support/problems.h"

namespace nattn_test {
namespace {

using nattn::DType;
using nattn::Problem;
using nattn::StatusCode;

void expect_invalid(const nattn::Status& s, const std::vector<std::string>& parts) {
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.message();
  for (const std::string& part : parts)
    EXPECT_NE(s.message().find(part), std::string::npos)
        << "message \"" << s.message() << "\" lacks \"" << part << "\"";
}

// A valid forward and backward call (rank 2, grouped heads, Dv != D, additional keys).
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

struct Case {
  std::string name;
  std::vector<std::string> message;  // argument, value, rule
  std::function<void(Problem&, nattn::ForwardTensors&)> forward;
};

std::vector<Case> forward_cases() {
  const int64_t huge = int64_t(1) << 40;
  using F = nattn::ForwardTensors;
  return {
      {"rank 0", {"rank = 0", "must be 1, 2 or 3"}, [](Problem& p, F&) { p.rank = 0; }},
      {"rank 4", {"rank = 4", "must be 1, 2 or 3"}, [](Problem& p, F&) { p.rank = 4; }},
      {"negative batch", {"batch = -1", ">= 0"}, [](Problem& p, F&) { p.batch = -1; }},
      {"zero extent", {"extent[1] = 0", ">= 1"}, [](Problem& p, F&) { p.extent[1] = 0; }},
      {"heads not divisible", {"heads_q = 3", "multiple of heads_kv = 2"}, [](Problem& p, F&) { p.heads_q = 3; }},
      {"zero kv heads", {"heads_kv = 0", ">= 1"}, [](Problem& p, F&) { p.heads_kv = 0; }},
      {"zero q heads", {"heads_q = 0", ">= 1"}, [](Problem& p, F&) { p.heads_q = 0; }},
      {"zero head_dim", {"head_dim = 0", ">= 1"}, [](Problem& p, F&) { p.head_dim = 0; }},
      {"zero head_dim_v", {"head_dim_v = 0", ">= 1"}, [](Problem& p, F&) { p.head_dim_v = 0; }},
      {"kernel 1", {"kernel_size[0] = 1", ">= 2"}, [](Problem& p, F&) { p.window.kernel_size[0] = 1; }},
      {"kernel past extent",
       {"kernel_size[1] = 7", "<= extent", "extent[1] = 6"},
       [](Problem& p, F&) {
         p.window.kernel_size[1] = 7;
         p.window.stride[1] = 1;
       }},
      {"kernel * dilation past extent",
       {"kernel_size[1] = 3", "dilation[1] = 3", "extent[1] = 6"},
       [](Problem& p, F&) { p.window.dilation[1] = 3; }},
      {"stride 0", {"stride[0] = 0", "1 <= stride <= kernel_size"}, [](Problem& p, F&) { p.window.stride[0] = 0; }},
      {"stride past kernel", {"stride[1] = 4", "kernel_size[1] = 3"}, [](Problem& p, F&) { p.window.stride[1] = 4; }},
      {"dilation 0", {"dilation[1] = 0", ">= 1"}, [](Problem& p, F&) { p.window.dilation[1] = 0; }},
      {"nan scale", {"scale = nan", "finite"}, [](Problem& p, F&) { p.scale = std::nan(""); }},
      {"infinite scale",
       {"scale = inf", "finite"},
       [](Problem& p, F&) { p.scale = std::numeric_limits<double>::infinity(); }},
      {"negative num_additional",
       {"num_additional = -1", ">= 0"},
       [](Problem& p, F& t) {
         p.num_additional = -1;
         t.additional_k = t.additional_v = {};
       }},
      {"additional keys missing",
       {"additional_k = absent", "num_additional = 2"},
       [](Problem&, F& t) { t.additional_k = {}; }},
      {"additional values missing",
       {"additional_v = absent", "num_additional = 2"},
       [](Problem&, F& t) { t.additional_v = {}; }},
      {"additional tensors without num_additional",
       {"additional_k", "must be absent when num_additional = 0"},
       [](Problem& p, F&) { p.num_additional = 0; }},
      {"wrong ndim", {"q.ndim = 4", "expected 5 dimensions"}, [](Problem&, F& t) { t.q.ndim = 4; }},
      {"wrong q shape",
       {"q.shape = [2, 5, 6, 4, 5]", "expected [2, 5, 6, 4, 4]"},
       [](Problem&, F& t) { t.q.shape[4] = 5; }},
      {"wrong k shape", {"k.shape", "expected [2, 5, 6, 2, 4]"}, [](Problem&, F& t) { t.k.shape[3] = 4; }},
      {"wrong v shape", {"v.shape", "expected [2, 5, 6, 2, 3]"}, [](Problem&, F& t) { t.v.shape[4] = 4; }},
      {"wrong out shape", {"out.shape", "expected [2, 5, 6, 4, 3]"}, [](Problem&, F& t) { t.out.shape[1] = 6; }},
      {"wrong lse shape", {"lse.shape", "expected [2, 5, 6, 4]"}, [](Problem&, F& t) { t.lse.shape[0] = 1; }},
      {"wrong additional_k shape",
       {"additional_k.shape", "expected [2, 2, 2, 4]"},
       [](Problem&, F& t) { t.additional_k.shape[1] = 3; }},
      {"wrong additional_v shape",
       {"additional_v.shape", "expected [2, 2, 2, 3]"},
       [](Problem&, F& t) { t.additional_v.shape[3] = 4; }},
      {"dtype mismatch",
       {"k.dtype = float64", "must match q.dtype (float32)"},
       [](Problem&, F& t) { t.k.dtype = DType::kFloat64; }},
      {"out dtype mismatch",
       {"out.dtype = bfloat16", "must match q.dtype"},
       [](Problem&, F& t) { t.out.dtype = DType::kBFloat16; }},
      {"lse not float32",
       {"lse.dtype = float16", "must be float32"},
       [](Problem&, F& t) { t.lse.dtype = DType::kFloat16; }},
      {"device mismatch",
       {"v.device = cuda:0", "must match q.device (cpu)"},
       [](Problem&, F& t) { t.v.device = {nattn::DeviceType::kCUDA, 0}; }},
      {"device index mismatch",
       {"out.device = cuda:1", "must match q.device (cuda:0)"},
       [](Problem&, F& t) {
         for (nattn::TensorView* v : {&t.q, &t.k, &t.v, &t.out, &t.lse, &t.additional_k, &t.additional_v})
           v->device = {nattn::DeviceType::kCUDA, 0};
         t.out.device.index = 1;
       }},
      {"cpu index mismatch",
       {"k.device = cpu:1", "must match q.device (cpu)"},
       [](Problem&, F& t) { t.k.device.index = 1; }},
      {"null data", {"k.data = null", "data pointer"}, [](Problem&, F& t) { t.k.data = nullptr; }},
      {"negative stride", {"q.stride[2] = -1", ">= 0"}, [](Problem&, F& t) { t.q.stride[2] = -1; }},
      {"output stride 0",
       {"out.stride", "must not map two indices to one element"},
       [](Problem&, F& t) { t.out.stride[1] = 0; }},
      {"lse overlapping itself",
       {"lse.stride", "must not map two indices to one element"},
       [](Problem&, F& t) { t.lse.stride[3] = 0; }},
      {"output aliasing an input",
       {"out.data = overlapping q", "must not share memory"},
       [](Problem&, F& t) { t.out.data = t.q.data; }},
      {"output aliasing another output",
       {"overlapping", "out", "lse"},
       [](Problem&, F& t) { t.lse.data = t.out.data; }},
      {"64-bit offset overflow",
       {"q.shape", "overflow 64-bit"},
       [huge](Problem& p, F& t) {
         p.batch = huge;
         t.q.shape[0] = huge;
         t.q.stride[0] = huge * 8;
       }},
      {"64-bit offset overflow in an output",
       {"out.shape", "overflow 64-bit"},
       [huge](Problem& p, F& t) {
         p.batch = huge;
         for (nattn::TensorView* v : {&t.q, &t.k, &t.v, &t.out, &t.lse, &t.additional_k, &t.additional_v}) {
           v->shape[0] = huge;
           v->stride[0] = 0;  // a broadcast input is fine; an output is not
         }
         t.out.stride[0] = int64_t(1) << 30;
       }},
  };
}

using Validation = SeededTest;

// Runs `mutate` on a valid call's problem and views, then checks the rejection.
void expect_forward_rejected(Rng& rng, const Case& c, bool dense = false) {
  SCOPED_TRACE(c.name);
  CallConfig cfg = baseline();
  if (dense) {
    cfg.dense = true;
    cfg.problem = make_problem(1, {7, 1, 1}, nattn::Window::uniform(7));
  }
  const CallTensors t = make_forward_call(cfg, rng);
  const auto inputs = {&t.q, &t.k, &t.v, &t.ka, &t.va};
  std::vector<std::vector<unsigned char>> before;
  for (const TestTensor* x : inputs) before.push_back(x->bytes());
  Problem p = cfg.problem;
  nattn::ForwardTensors views = t.forward_views();
  c.forward(p, views);
  nattn::Status s;
  if (dense) {
    cfg.problem = p;
    s = nattn::attention_forward(attention_problem(cfg), views);
  } else {
    s = nattn::forward(p, views);
  }
  expect_invalid(s, c.message);
  EXPECT_TRUE(t.out.all_poisoned()) << "out was written";
  EXPECT_TRUE(t.lse.all_poisoned()) << "lse was written";
  size_t i = 0;
  for (const TestTensor* x : inputs) EXPECT_TRUE(x->bytes() == before[i++]) << "an input was written";
}

TEST_F(Validation, EveryForwardErrorNamesArgumentValueAndRule) {
  for (const Case& c : forward_cases()) expect_forward_rejected(rng, c);
}

TEST_F(Validation, ZeroBatchIsANoOp) {
  CallConfig c = baseline();
  c.problem.batch = 0;
  const CallTensors f = make_forward_call(c, rng);
  EXPECT_TRUE(nattn::forward(c.problem, f.forward_views()).ok());
  EXPECT_TRUE(f.out.all_poisoned() && f.lse.all_poisoned());
  const CallTensors b = make_backward_call(c, rng);
  EXPECT_TRUE(nattn::backward(c.problem, b.backward_views()).ok());
  for (const TestTensor* x : {&b.dq, &b.dk, &b.dv, &b.dka, &b.dva}) EXPECT_TRUE(x->all_poisoned());
}

std::vector<std::pair<Case, std::function<void(Problem&, nattn::BackwardTensors&)>>> backward_cases() {
  using B = nattn::BackwardTensors;
  auto none = [](Problem&, nattn::ForwardTensors&) {};
  return {
      {{"backward without lse", {"lse = absent", "backward needs"}, none}, [](Problem&, B& t) { t.lse = {}; }},
      {{"lse not float32", {"lse.dtype = float64", "must be float32"}, none},
       [](Problem&, B& t) { t.lse.dtype = DType::kFloat64; }},
      {{"dlse not float32", {"dlse.dtype = bfloat16", "must be float32"}, none},
       [](Problem&, B& t) { t.dlse.dtype = DType::kBFloat16; }},
      {{"wrong dout shape", {"dout.shape", "expected [2, 5, 6, 4, 3]"}, none},
       [](Problem&, B& t) { t.dout.shape[4] = 4; }},
      {{"wrong dlse shape", {"dlse.shape", "expected [2, 5, 6, 4]"}, none},
       [](Problem&, B& t) { t.dlse.shape[3] = 2; }},
      {{"wrong dk shape", {"dk.shape", "expected [2, 5, 6, 2, 4]"}, none}, [](Problem&, B& t) { t.dk.shape[3] = 4; }},
      {{"wrong dq shape", {"dq.shape", "expected [2, 5, 6, 4, 4]"}, none}, [](Problem&, B& t) { t.dq.shape[2] = 5; }},
      {{"wrong dv shape", {"dv.shape", "expected [2, 5, 6, 2, 3]"}, none}, [](Problem&, B& t) { t.dv.shape[4] = 2; }},
      {{"wrong out shape", {"out.shape", "expected [2, 5, 6, 4, 3]"}, none},
       [](Problem&, B& t) { t.out.shape[0] = 3; }},
      {{"wrong lse shape", {"lse.shape", "expected [2, 5, 6, 4]"}, none}, [](Problem&, B& t) { t.lse.shape[1] = 4; }},
      {{"wrong additional_v shape", {"additional_v.shape", "expected [2, 2, 2, 3]"}, none},
       [](Problem&, B& t) { t.additional_v.shape[1] = 1; }},
      {{"wrong d_additional_k shape", {"d_additional_k.shape", "expected [2, 2, 2, 4]"}, none},
       [](Problem&, B& t) { t.d_additional_k.shape[3] = 3; }},
      {{"wrong d_additional_v shape", {"d_additional_v.shape", "expected [2, 2, 2, 3]"}, none},
       [](Problem&, B& t) { t.d_additional_v.shape[2] = 1; }},
      {{"dq dtype mismatch", {"dq.dtype = float16", "must match q.dtype"}, none},
       [](Problem&, B& t) { t.dq.dtype = DType::kFloat16; }},
      {{"d_additional_k missing", {"d_additional_k = absent", "num_additional = 2"}, none},
       [](Problem&, B& t) { t.d_additional_k = {}; }},
      {{"d_additional_v missing", {"d_additional_v = absent", "num_additional = 2"}, none},
       [](Problem&, B& t) { t.d_additional_v = {}; }},
      {{"gradient aliasing an input", {"dq.data = overlapping q"}, none}, [](Problem&, B& t) { t.dq.data = t.q.data; }},
      {{"gradient aliasing forward's out", {"dv.data = overlapping out"}, none},
       [](Problem&, B& t) { t.dv.data = t.out.data; }},
      {{"gradients aliasing each other", {"overlapping", "dk", "dv"}, none},
       [](Problem&, B& t) { t.dv.data = t.dk.data; }},  // dv is the smaller: it stays inside dk
      {{"gradient stride 0", {"d_additional_v.stride", "must not map two indices"}, none},
       [](Problem&, B& t) { t.d_additional_v.stride[1] = 0; }},
      {{"null gradient", {"dk.data = null"}, none}, [](Problem&, B& t) { t.dk.data = nullptr; }},
      {{"kernel past extent", {"kernel_size[0] = 6", "extent[0] = 5"}, none},
       [](Problem& p, B&) { p.window.kernel_size[0] = 6; }},
  };
}

TEST_F(Validation, EveryBackwardErrorNamesArgumentValueAndRule) {
  for (const auto& [c, mutate] : backward_cases()) {
    SCOPED_TRACE(c.name);
    CallConfig cfg = baseline();
    cfg.with_dlse = true;
    const CallTensors t = make_backward_call(cfg, rng);
    Problem p = cfg.problem;
    nattn::BackwardTensors views = t.backward_views();
    mutate(p, views);
    expect_invalid(nattn::backward(p, views), c.message);
    for (const TestTensor* x : {&t.dq, &t.dk, &t.dv, &t.dka, &t.dva})
      EXPECT_TRUE(x->all_poisoned()) << "a gradient was written";
  }
}

TEST_F(Validation, DenseAttentionErrors) {
  using F = nattn::ForwardTensors;
  const std::vector<Case> cases = {
      {"zero length", {"seq_len = 0", ">= 1"}, [](Problem& p, F&) { p.extent[0] = 0; }},
      {"additional tensors", {"additional_k", "must be absent"}, [](Problem&, F& t) { t.additional_k = t.q; }},
      {"heads not divisible",
       {"heads_q = 3", "multiple of heads_kv"},
       [](Problem& p, F&) {
         p.heads_q = 3;
         p.heads_kv = 2;
       }},
      {"wrong k shape", {"k.shape", "expected [1, 7, 1, 4]"}, [](Problem&, F& t) { t.k.shape[1] = 6; }},
  };
  for (const Case& c : cases) expect_forward_rejected(rng, c, /*dense=*/true);
}

// Valid calls that no built-in backend can run are kUnsupported, and write nothing either.
TEST_F(Validation, UnsupportedBackendWritesNothing) {
  for (const nattn::BackendInfo& b : nattn::backends())
    if (b.kind == nattn::BackendKind::kCuda && b.available) GTEST_SKIP() << "a CUDA backend is available here";
  CallConfig c = baseline();
  const CallTensors t = make_forward_call(c, rng);
  nattn::Options o;
  o.backend = nattn::BackendKind::kCuda;
  nattn::Status s = nattn::forward(c.problem, t.forward_views(), o);
  EXPECT_EQ(s.code(), StatusCode::kUnsupported) << s.message();
  nattn::ForwardTensors on_gpu = t.forward_views();
  for (nattn::TensorView* v :
       {&on_gpu.q, &on_gpu.k, &on_gpu.v, &on_gpu.additional_k, &on_gpu.additional_v, &on_gpu.out, &on_gpu.lse})
    v->device = {nattn::DeviceType::kCUDA, 0};
  s = nattn::forward(c.problem, on_gpu);
  EXPECT_EQ(s.code(), StatusCode::kUnsupported) << s.message();
  EXPECT_NE(s.message().find("reference"), std::string::npos) << s.message();  // each backend's reason
  EXPECT_TRUE(t.out.all_poisoned() && t.lse.all_poisoned());
}

// merge_attentions: outs [B, N, H, Dv] and float32 lses [B, N, H].
TEST_F(Validation, MergeErrors) {
  struct MergeCall {
    std::vector<TestTensor> outs, lses;
    TestTensor out, lse;
  };
  auto make = [&] {
    MergeCall m;
    for (int i = 0; i < 2; ++i) {
      m.outs.emplace_back(std::vector<int64_t>{2, 3, 2, 4}, DType::kFloat32, Layout::kPadded, rng);
      m.lses.emplace_back(std::vector<int64_t>{2, 3, 2}, DType::kFloat32, Layout::kPadded, rng);
      m.outs.back().fill_random(rng);
      m.lses.back().fill_random(rng);
    }
    m.out = TestTensor({2, 3, 2, 4}, DType::kFloat32, Layout::kPadded, rng);
    m.lse = TestTensor({2, 3, 2}, DType::kFloat32, Layout::kPadded, rng);
    return m;
  };
  using V = std::vector<nattn::TensorView>;
  struct MergeCase {
    std::string name;
    std::vector<std::string> message;
    std::function<void(V&, V&, nattn::TensorView&, nattn::TensorView&)> mutate;
  };
  const std::vector<MergeCase> cases = {
      {"no partials",
       {"outs = an empty list", "at least one"},
       [](V& o, V& l, auto&, auto&) {
         o.clear();
         l.clear();
       }},
      {"count mismatch",
       {"lses = 1 tensors", "one per partial output (2)"},
       [](V&, V& l, auto&, auto&) { l.pop_back(); }},
      {"ndim 1", {"outs[0].ndim = 1", ">= 2"}, [](V& o, V&, auto&, auto&) { o[0].ndim = 1; }},
      {"shape mismatch",
       {"outs[1].shape = [2, 3, 2, 5]", "expected [2, 3, 2, 4]"},
       [](V& o, V&, auto&, auto&) { o[1].shape[3] = 5; }},
      {"lse shape mismatch",
       {"lses[0].shape", "expected [2, 3, 2]"},
       [](V&, V& l, auto&, auto&) { l[0].shape[2] = 1; }},
      {"dtype mismatch",
       {"outs[1].dtype = float16", "must match outs[0].dtype"},
       [](V& o, V&, auto&, auto&) { o[1].dtype = DType::kFloat16; }},
      {"lse not float32",
       {"lses[1].dtype = float64", "must be float32"},
       [](V&, V& l, auto&, auto&) { l[1].dtype = DType::kFloat64; }},
      {"out lse not float32",
       {"lse.dtype = bfloat16", "must be float32"},
       [](V&, V&, auto&, nattn::TensorView& lse) { lse.dtype = DType::kBFloat16; }},
      {"device mismatch",
       {"out.device = cuda:0", "must match outs[0].device (cpu)"},
       [](V&, V&, nattn::TensorView& out, auto&) { out.device = {nattn::DeviceType::kCUDA, 0}; }},
      {"out aliasing a partial",
       {"out.data = overlapping outs[0]"},
       [](V& o, V&, nattn::TensorView& out, auto&) { out.data = o[0].data; }},
      {"lse aliasing out",
       {"overlapping", "out", "lse"},
       [](V&, V&, nattn::TensorView& out, nattn::TensorView& lse) { lse.data = out.data; }},
      {"out stride 0",
       {"out.stride", "must not map two indices"},
       [](V&, V&, nattn::TensorView& out, auto&) { out.stride[2] = 0; }},
      {"null partial", {"outs[0].data = null"}, [](V& o, V&, auto&, auto&) { o[0].data = nullptr; }},
  };
  for (const MergeCase& c : cases) {
    SCOPED_TRACE(c.name);
    MergeCall m = make();
    V outs, lses;
    for (const TestTensor& x : m.outs) outs.push_back(x.view());
    for (const TestTensor& x : m.lses) lses.push_back(x.view());
    nattn::TensorView out = m.out.view(), lse = m.lse.view();
    c.mutate(outs, lses, out, lse);
    expect_invalid(nattn::merge_attentions(outs, lses, out, lse), c.message);
    EXPECT_TRUE(m.out.all_poisoned() && m.lse.all_poisoned()) << "merge wrote an output";
  }
}

}  // namespace
}  // namespace nattn_test
