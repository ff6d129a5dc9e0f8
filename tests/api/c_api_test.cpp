// Layer: tests. The C ABI (c_api.h): results, enum checks, error messages, nothing written on error.
#include "nattn/c_api.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "support/call_check.h"
#include "support/problems.h"

namespace nattn_test {
namespace {

nattn_tensor to_c(const nattn::TensorView& v) {
  nattn_tensor c{};
  c.data = v.data;
  c.dtype = int32_t(v.dtype);
  c.ndim = v.ndim;
  for (int i = 0; i < v.ndim; ++i) {
    c.shape[i] = v.shape[i];
    c.stride[i] = v.stride[i];
  }
  c.device_type = int32_t(v.device.type);
  c.device_index = v.device.index;
  return c;
}

nattn_problem to_c(const nattn::Problem& p) {
  nattn_problem c{};
  c.rank = p.rank;
  c.batch = p.batch;
  c.heads_q = p.heads_q;
  c.heads_kv = p.heads_kv;
  c.head_dim = p.head_dim;
  c.head_dim_v = p.head_dim_v;
  for (int a = 0; a < 3; ++a) {
    c.extent[a] = p.extent[size_t(a)];
    c.kernel_size[a] = p.window.kernel_size[size_t(a)];
    c.stride[a] = p.window.stride[size_t(a)];
    c.dilation[a] = p.window.dilation[size_t(a)];
    c.is_causal[a] = p.window.is_causal[size_t(a)];
  }
  c.has_scale = p.scale.has_value();
  c.scale = p.scale.value_or(0.0);
  c.num_additional = p.num_additional;
  return c;
}

std::vector<nattn_tensor> forward_slots(const nattn::ForwardTensors& t) {
  std::vector<nattn_tensor> s(NATTN_FWD_COUNT);
  s[NATTN_FWD_Q] = to_c(t.q);
  s[NATTN_FWD_K] = to_c(t.k);
  s[NATTN_FWD_V] = to_c(t.v);
  s[NATTN_FWD_AK] = to_c(t.additional_k);
  s[NATTN_FWD_AV] = to_c(t.additional_v);
  s[NATTN_FWD_OUT] = to_c(t.out);
  s[NATTN_FWD_LSE] = to_c(t.lse);
  return s;
}

CallConfig config() {
  CallConfig c;
  c.problem = make_problem(2, {5, 7, 1}, make_window({3, 4, 2}, {1, 2, 1}, {1, 1, 1}, {true, false, false}));
  c.problem.heads_q = 2;
  c.problem.num_additional = 1;
  c.problem.scale = 0.6;
  return c;
}

using CApi = SeededTest;

TEST_F(CApi, ForwardMatchesTheCppApi) {
  const CallConfig c = config();
  const CallTensors t = make_forward_call(c, rng);
  CallTensors cpp = make_forward_call(c, rng);
  for (TestTensor* x : {&cpp.q, &cpp.k, &cpp.v, &cpp.ka, &cpp.va}) x->poison();
  cpp.q.write(t.q.read());
  cpp.k.write(t.k.read());
  cpp.v.write(t.v.read());
  cpp.ka.write(t.ka.read());
  cpp.va.write(t.va.read());
  ASSERT_TRUE(nattn::forward(c.problem, cpp.forward_views()).ok());
  const nattn_problem p = to_c(c.problem);
  const std::vector<nattn_tensor> slots = forward_slots(t.forward_views());
  char err[256] = "untouched";
  ASSERT_EQ(nattn_forward(&p, slots.data(), nullptr, err, sizeof err), 0) << err;
  EXPECT_STREQ(err, "");
  EXPECT_EQ(t.out.read(), cpp.out.read());
  EXPECT_EQ(t.lse.read(), cpp.lse.read());
}

TEST_F(CApi, BadEnumValuesAreRejected) {
  const CallConfig c = config();
  const CallTensors t = make_forward_call(c, rng);
  const nattn_problem p = to_c(c.problem);
  struct Bad {
    const char* expect;
    int slot;
    void (*mutate)(nattn_tensor*);
  };
  const Bad cases[] = {
      {"q.dtype = 9", NATTN_FWD_Q, [](nattn_tensor* x) { x->dtype = 9; }},
      {"v.dtype = -1", NATTN_FWD_V, [](nattn_tensor* x) { x->dtype = -1; }},
      {"out.device = 5", NATTN_FWD_OUT, [](nattn_tensor* x) { x->device_type = 5; }},
      {"k.ndim = 7", NATTN_FWD_K, [](nattn_tensor* x) { x->ndim = 7; }},
      {"lse.ndim = -2", NATTN_FWD_LSE, [](nattn_tensor* x) { x->ndim = -2; }},
  };
  for (const Bad& b : cases) {
    SCOPED_TRACE(b.expect);
    std::vector<nattn_tensor> slots = forward_slots(t.forward_views());
    b.mutate(&slots[size_t(b.slot)]);
    char err[256] = "";
    EXPECT_EQ(nattn_forward(&p, slots.data(), nullptr, err, sizeof err), int(nattn::StatusCode::kInvalidArgument));
    EXPECT_NE(std::string(err).find(b.expect), std::string::npos) << err;
    EXPECT_NE(std::string(err).find("is invalid"), std::string::npos) << err;
  }
  const std::vector<nattn_tensor> slots = forward_slots(t.forward_views());
  const nattn_options bad_backend{7, 0, nullptr};
  char err[256] = "";
  EXPECT_EQ(nattn_forward(&p, slots.data(), &bad_backend, err, sizeof err), int(nattn::StatusCode::kInvalidArgument));
  EXPECT_NE(std::string(err).find("backend = 7"), std::string::npos) << err;
  EXPECT_EQ(nattn_backend_available(42, err, sizeof err), 0);
  EXPECT_NE(std::string(err).find("backend = 42"), std::string::npos) << err;
  EXPECT_TRUE(t.out.all_poisoned() && t.lse.all_poisoned());
}

// A bad partial of a merge is named with its index.
TEST_F(CApi, MergeNamesTheBadPartial) {
  const CallTensors t = make_forward_call(config(), rng);
  const nattn_tensor out = to_c(t.out.view()), lse = to_c(t.lse.view());
  nattn_tensor outs[2] = {to_c(t.q.view()), to_c(t.q.view())}, lses[2] = {lse, lse};
  outs[1].dtype = 9;
  char err[256] = "";
  EXPECT_EQ(nattn_merge(2, outs, lses, &out, &lse, err, sizeof err), int(nattn::StatusCode::kInvalidArgument));
  EXPECT_NE(std::string(err).find("outs[1].dtype = 9"), std::string::npos) << err;
  outs[1] = outs[0];
  lses[0].device_type = -3;
  EXPECT_EQ(nattn_merge(2, outs, lses, &out, &lse, err, sizeof err), int(nattn::StatusCode::kInvalidArgument));
  EXPECT_NE(std::string(err).find("lses[0].device = -3"), std::string::npos) << err;
  EXPECT_TRUE(t.out.all_poisoned() && t.lse.all_poisoned());
}

TEST_F(CApi, MessagesAreCopiedAndTruncated) {
  nattn::Problem bad = config().problem;
  bad.window.stride[1] = 9;
  const nattn_problem p = to_c(bad);
  const std::string full = "stride[1] = 9 is invalid: must satisfy 1 <= stride <= kernel_size (kernel_size[1] = 4)";
  char err[256];
  std::memset(err, 'x', sizeof err);
  EXPECT_EQ(nattn_check_problem(&p, err, sizeof err), int(nattn::StatusCode::kInvalidArgument));
  EXPECT_EQ(std::string(err), full);
  std::memset(err, 'x', sizeof err);
  EXPECT_EQ(nattn_check_problem(&p, err, 10), int(nattn::StatusCode::kInvalidArgument));
  EXPECT_EQ(std::string(err), full.substr(0, 9));  // 9 characters and the NUL
  EXPECT_EQ(err[10], 'x');                         // nothing past err_len
  EXPECT_EQ(nattn_check_problem(&p, nullptr, 0), int(nattn::StatusCode::kInvalidArgument));
  err[0] = 'x';
  EXPECT_EQ(nattn_check_problem(&p, err, 1), int(nattn::StatusCode::kInvalidArgument));
  EXPECT_EQ(err[0], '\0');
}

TEST_F(CApi, ErrorsWriteNothing) {
  CallConfig c = config();
  c.with_dlse = true;
  const CallTensors t = make_backward_call(c, rng);
  nattn_problem p = to_c(c.problem);
  p.heads_kv = 3;  // 2 % 3 != 0
  const nattn::BackwardTensors v = t.backward_views();
  const nattn::TensorView views[NATTN_BWD_COUNT] = {
      v.q,    v.k,  v.v,  v.additional_k, v.additional_v,   v.out,           v.lse, v.dout,
      v.dlse, v.dq, v.dk, v.dv,           v.d_additional_k, v.d_additional_v};
  std::vector<nattn_tensor> slots;
  for (const nattn::TensorView& x : views) slots.push_back(to_c(x));
  char err[256] = "";
  EXPECT_EQ(nattn_backward(&p, slots.data(), nullptr, err, sizeof err), int(nattn::StatusCode::kInvalidArgument));
  EXPECT_NE(std::string(err).find("heads_q = 2"), std::string::npos) << err;
  for (const TestTensor* x : {&t.dq, &t.dk, &t.dv, &t.dka, &t.dva}) EXPECT_TRUE(x->all_poisoned());
  EXPECT_EQ(nattn_merge(0, nullptr, nullptr, &slots[NATTN_BWD_DQ], &slots[NATTN_BWD_LSE], err, sizeof err),
            int(nattn::StatusCode::kInvalidArgument));
  EXPECT_NE(std::string(err).find("outs = an empty list"), std::string::npos) << err;
}

TEST_F(CApi, BackendsAndVersion) {
  char reason[256] = "x";
  EXPECT_EQ(nattn_backend_available(int(nattn::BackendKind::kReference), reason, sizeof reason), 1);
  EXPECT_STREQ(reason, "");
  if (nattn_backend_available(int(nattn::BackendKind::kCuda), reason, sizeof reason) == 0) {
    EXPECT_GT(std::strlen(reason), 0u) << "an unavailable backend must say why";
  }
  EXPECT_GT(std::strlen(nattn_version()), 0u);
}

// Releasing the workspace pools succeeds with or without pools (tests/cuda/plan_test.cpp checks
// what it releases on a device).
TEST_F(CApi, ReleaseCachedWorkspaceSucceeds) {
  char err[256] = "untouched";
  EXPECT_EQ(nattn_release_cached_workspace(err, sizeof err), 0) << err;
  EXPECT_EQ(nattn_release_cached_workspace(nullptr, 0), 0);
}

TEST_F(CApi, HostTraceCountsCallsWhileOnAndReadsBackJson) {
  const CallConfig c = config();
  const CallTensors t = make_forward_call(c, rng);
  const nattn_problem p = to_c(c.problem);
  const std::vector<nattn_tensor> slots = forward_slots(t.forward_views());
  char err[256] = "";
  ASSERT_EQ(nattn_host_trace(1, nullptr, 0, err, sizeof err), 0) << err;
  for (int i = 0; i < 3; ++i) ASSERT_EQ(nattn_forward(&p, slots.data(), nullptr, err, sizeof err), 0) << err;
  ASSERT_EQ(nattn_host_trace(0, nullptr, 0, err, sizeof err), 0) << err;
  ASSERT_EQ(nattn_forward(&p, slots.data(), nullptr, err, sizeof err), 0) << err;  // off: not counted
  char json[2048];
  ASSERT_EQ(nattn_host_trace(2, json, sizeof json, err, sizeof err), 0) << err;
  const std::string j = json;
  EXPECT_NE(j.find("\"call\": {\"calls\": 3,"), std::string::npos) << j;
  EXPECT_NE(j.find("\"validate\": {\"calls\": 3,"), std::string::npos) << j;
  EXPECT_NE(j.find("\"launch\": {\"calls\": 0, \"ns\": 0}"), std::string::npos) << j;  // no CUDA phases
  // A buffer too small says how many bytes the text needs; a bad action names itself.
  char tiny[4];
  EXPECT_EQ(nattn_host_trace(2, tiny, sizeof tiny, err, sizeof err), int(nattn::StatusCode::kInvalidArgument));
  EXPECT_NE(std::string(err).find("json_len = 4 is invalid"), std::string::npos) << err;
  EXPECT_EQ(nattn_host_trace(3, nullptr, 0, err, sizeof err), int(nattn::StatusCode::kInvalidArgument));
  EXPECT_NE(std::string(err).find("action = 3 is invalid"), std::string::npos) << err;
}

}  // namespace
}  // namespace nattn_test
