// Layer: tests. The persistent variant of the sm90 backward kernels (forced by
// NATTN_SM90_BWD_PERSISTENT=1, read once per process, so ctest runs this suite in its own
// process with it set:
// tests/CMakeLists.txt): on a Hopper device the deterministic dQ and dK/dV kernels and the fast
// dK/dV kernel of head dims 64 and 128 are planned as persistent CTAs (at most one per SM, the plan's sm90 verdict says
// so) and match the CPU reference on short walks (1-D windows, small 2-D windows), random
// problems (dilation, causal axes, additional keys, GQA) and more work items than SMs, so that
// CTAs run several items each (the stage ring, the column parity and the barriers' phases go on
// across items). Without the switch the plan chooses them for short walks only, and calls that
// do not ask for determinism take the fast kernel except where the pair runs persistent on walks
// of at most 16 boxes or two CTAs per SM.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "device_tensor.h"
#include "nattn/nattn.h"

namespace nattn_test {
namespace {

using nattn::DType;

bool switch_on() {
  const char* e = std::getenv("NATTN_SM90_BWD_PERSISTENT");
  return e != nullptr && std::strcmp(e, "1") == 0;
}

int sm_count() {
  int n = 0;
  return cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, 0) == cudaSuccess ? n : 0;
}

// Kernels and heads per head dim: max(D, Dv) pads to head_dim (above half of it).
nattn::Problem with_heads(nattn::Problem p, Rng& rng, int head_dim, int64_t batch, int64_t heads_kv, int64_t group) {
  p.batch = batch;
  p.heads_kv = heads_kv;
  p.heads_q = heads_kv * group;
  const int64_t padded = 8 * rng.integer(head_dim / 16 + 1, head_dim / 8);  // (head_dim / 2, head_dim]
  const int64_t other = rng.coin() ? padded : 8 * rng.integer(1, padded / 8);
  const bool d_is_max = rng.coin();
  p.head_dim = d_is_max ? padded : other;
  p.head_dim_v = d_is_max ? other : padded;
  return p;
}

// Short walks with more items than an H100 has SMs (132): a 1-D window over 2048-3072 tokens
// (16-24 boxes of 128) and a small 2-D window over a 48 x 48 grid (18 boxes), each x heads x batch.
std::vector<nattn::Problem> problems(Rng& rng, int head_dim) {
  std::vector<nattn::Problem> out;
  {
    nattn::Problem p;
    p.rank = 1;
    p.extent[0] = 2048 + 128 * rng.integer(0, 8) + rng.integer(0, 100);
    p.window.kernel_size[0] = 2 * rng.integer(3, 32) + 1;
    out.push_back(with_heads(p, rng, head_dim, 3, 4, 2));  // dQ 24 x 8 x 3 items, dK/dV 16 x 4 x 3 at least
  }
  {
    nattn::Problem p;
    p.rank = 2;
    for (int a = 0; a < 2; ++a) {
      p.extent[a] = 48;
      p.window.kernel_size[a] = 2 * rng.integer(1, 3) + 1;  // 3, 5 or 7
    }
    out.push_back(with_heads(p, rng, head_dim, 2, 8, 1));  // 18 x 8 x 2 items per kernel
  }
  for (int trial = 0; trial < 3; ++trial) {  // random: dilation, stride, causal, additional keys
    nattn::Problem p;
    p.rank = int(rng.integer(1, 3));
    for (int a = 0; a < p.rank; ++a) {
      p.window.kernel_size[a] = rng.integer(2, p.rank == 1 ? 40 : p.rank == 2 ? 9 : 5);
      p.window.dilation[a] = rng.integer(1, 2);
      p.window.stride[a] = rng.integer(1, p.window.kernel_size[a]);
      p.window.is_causal[a] = rng.coin(0.25);
      p.extent[a] = p.window.kernel_size[a] * p.window.dilation[a] + rng.integer(0, p.rank == 1 ? 1500 : 20);
    }
    p.num_additional = rng.coin(0.4) ? rng.integer(1, 100) : 0;
    // A 3-D grid pads the head dim with the TMA only for batch 1 (sm90 can_implement).
    const int64_t batch = p.rank == 3 ? 1 : rng.integer(1, 3);
    out.push_back(with_heads(p, rng, head_dim, batch, rng.integer(2, 6), rng.integer(1, 2)));
  }
  return out;
}

// A square problem: every axis of `rank` with the same extent, kernel size and stride.
nattn::Problem square_problem(int rank, int64_t extent, int64_t kernel, int64_t stride, int64_t batch, int64_t heads,
                              int head_dim) {
  nattn::Problem p;
  p.rank = rank;
  for (int a = 0; a < rank; ++a) {
    p.extent[a] = extent;
    p.window.kernel_size[a] = kernel;
    p.window.stride[a] = stride;
  }
  p.batch = batch;
  p.heads_q = p.heads_kv = heads;
  p.head_dim = p.head_dim_v = head_dim;
  return p;
}

// Forces the deterministic pair (its sm90 backward_dq row of the dtype and padded head dim):
// deterministic calls take the fast kernel's ordered variant wherever the pair runs no variant
// of its own (family.cu Sm90Family::backward_roles), and these tests are about the pair's.
void force_pair(nattn::Options& o, DType dtype, int head_dim) {
  for (const nattn::KernelConfigInfo& r : nattn::kernel_configs())
    if (r.family == "sm90" && r.role == "backward_dq" && r.dtype == nattn::dtype_name(dtype) &&
        r.head_dim == head_dim && r.ctas_per_sm == 1 && r.built) {
      o.choice.config_ids = {r.id};
      return;
    }
  ADD_FAILURE() << "no sm90 backward_dq row of head dim " << head_dim;
}

// The sm90 fast row (backward_dkdv_dq) of the dtype and padded head dim, or -1.
int fast_row(DType dtype, int head_dim) {
  for (const nattn::KernelConfigInfo& r : nattn::kernel_configs())
    if (r.family == "sm90" && r.role == "backward_dkdv_dq" && r.dtype == nattn::dtype_name(dtype) &&
        r.head_dim == head_dim && r.built)
      return r.id;
  return -1;
}

// The reason the chosen family gives in the plan (its notes name persistent launches).
std::string chosen_verdict(const nattn::Plan& plan) {
  for (const nattn::FamilyVerdict& f : plan.families)
    if (f.chosen) return f.reason;
  return "";
}

class CudaSm90Persistent : public CudaTest, public ::testing::WithParamInterface<DType> {};

// Under the switch, on a Hopper device (else skipped): problems(rng, hd) at head dims 64 and 128
// with the options options(hd) gives: each is planned on sm90 with every backward kernel (the
// roles named backward_*) persistent (at most one CTA per SM, the verdict's note naming it) and
// of a role role_ok accepts, at least min_kernels of them, and computes the reference's
// gradients. Stops at the first failing problem.
template <class Options, class RoleOk>
void expect_persistent_runs(DType dtype, Rng& rng, Options&& options, RoleOk&& role_ok, int min_kernels) {
  if (!switch_on()) GTEST_SKIP() << "needs NATTN_SM90_BWD_PERSISTENT=1 (ctest runs it so: tests/CMakeLists.txt)";
  if (cuda_compute_capability() != 90) GTEST_SKIP() << "the sm90 family needs a Hopper device";
  const int sms = sm_count();
  ASSERT_GT(sms, 0);
  for (const int hd : {64, 128}) {
    const std::vector<nattn::Problem> ps = problems(rng, hd);
    for (size_t i = 0; i < ps.size(); ++i) {
      const nattn::Problem& p = ps[i];
      SCOPED_TRACE("hd" + std::to_string(hd) + ", problem " + std::to_string(i) + ": " + describe_problem(p) + ", " +
                   nattn::dtype_name(dtype));
      const nattn::Options o = options(hd);
      DeviceBackward c = make_device_backward(p, dtype, rng.coin(0.25), rng.coin(0.33), rng);
      nattn::Plan plan;
      const nattn::Status planned = nattn::explain_backward(p, c.views(), o, &plan);
      ASSERT_TRUE(planned.ok()) << planned.message();
      SCOPED_TRACE("plan " + plan.to_json());
      ASSERT_EQ(plan.family, "sm90");
      const std::string verdict = chosen_verdict(plan);  // sm90's (asserted above)
      int persistent = 0;
      for (const nattn::PlannedKernel& k : plan.kernels) {
        if (k.role.rfind("backward_", 0) != 0) continue;  // the Delta pass, the dQ conversion
        EXPECT_TRUE(role_ok(k.role)) << k.role;
        EXPECT_NE(verdict.find(k.role + ": persistent CTAs"), std::string::npos) << k.role << ": " << verdict;
        EXPECT_EQ(k.grid[1], 1) << k.role;
        EXPECT_EQ(k.grid[2], 1) << k.role;
        EXPECT_LE(k.grid[0], sms) << k.role;
        ++persistent;
      }
      EXPECT_GE(persistent, min_kernels);
      const nattn::Status s = nattn::backward(p, c.views(), o);
      ASSERT_TRUE(s.ok()) << s.message();
      ASSERT_TRUE(device_synchronized());
      expect_backward_matches_reference(c);
      if (::testing::Test::HasFailure()) return;  // one failing problem is enough to report
    }
  }
}

TEST_P(CudaSm90Persistent, MatchesTheReference) {
  const DType dtype = GetParam();
  expect_persistent_runs(
      dtype, rng,
      [&](int hd) {
        nattn::Options o = cuda_options();
        o.choice.family = "sm90";
        o.deterministic = true;
        force_pair(o, dtype, hd);
        return o;
      },
      [](const std::string& role) { return role.rfind("backward_dkdv_dq", 0) != 0; }, 2);
}

// The fast kernel's persistent variant (forced by the switch; opt-in until measured: family.cu
// backward_persistent_forced): the same problems through a forced fast row, not deterministic,
// run as persistent CTAs (the neighborhood's launch and the additional keys',
// backward_dkdv_dq_additional) and match the reference. Items run on across CTAs' stage rings
// and dS parities, and their dQ partials meet in the float32 workspace.
TEST_P(CudaSm90Persistent, FastKernelMatchesTheReference) {
  const DType dtype = GetParam();
  expect_persistent_runs(
      dtype, rng,
      [&](int hd) {
        nattn::Options o = cuda_options();
        o.choice.family = "sm90";
        const int row = fast_row(dtype, hd);
        EXPECT_GE(row, 0) << "no sm90 fast row of head dim " << hd;
        o.choice.config_ids = {row};
        return o;
      },
      [](const std::string& role) {
        return role.rfind("backward_dkdv_dq", 0) == 0 && role.find("ordered") == std::string::npos;
      },
      1);
}

// Without the switch the plan follows the walk (family.cu persistent_pays_backward, from the
// 2026-12-05 A/B on an H100): short walks (a NAT-sized 2-D window, a short 1-D one) run
// persistent, long 2-D walks (window 31 over 128 x 128: ~30 walked boxes per item, measured 3-4%
// slower persistent; flux-2d-s16's ~130, 9% slower) keep one CTA per item.
TEST_P(CudaSm90Persistent, DefaultFollowsTheWalk) {
  if (std::getenv("NATTN_SM90_BWD_PERSISTENT") != nullptr) GTEST_SKIP() << "NATTN_SM90_BWD_PERSISTENT is set";
  if (cuda_compute_capability() != 90) GTEST_SKIP() << "the sm90 family needs a Hopper device";
  struct Case {
    int rank;
    int64_t extent, kernel, stride, batch, heads;
    int head_dim;
    bool persistent;
  };
  const Case cases[] = {{2, 56, 7, 1, 4, 4, 64, true},
                        {1, 4096, 127, 1, 1, 4, 128, true},
                        {2, 128, 31, 1, 1, 4, 128, false},
                        {2, 256, 80, 16, 1, 2, 128, false}};
  for (const Case& cs : cases) {
    const nattn::Problem p = square_problem(cs.rank, cs.extent, cs.kernel, cs.stride, cs.batch, cs.heads, cs.head_dim);
    SCOPED_TRACE(describe_problem(p));
    nattn::Options o = cuda_options();
    o.choice.family = "sm90";
    o.deterministic = true;
    force_pair(o, GetParam(), cs.head_dim);
    DeviceBackward c = make_device_backward(p, GetParam(), false, false, rng);
    nattn::Plan plan;
    ASSERT_TRUE(nattn::explain_backward(p, c.views(), o, &plan).ok());
    const std::string verdict = chosen_verdict(plan);
    for (const nattn::PlannedKernel& k : plan.kernels) {
      if (k.role != "backward_dq" && k.role != "backward_dkdv") continue;
      EXPECT_EQ(verdict.find(k.role + ": persistent CTAs") != std::string::npos, cs.persistent)
          << k.role << ": " << verdict;
      if (!cs.persistent && k.role == "backward_dq") EXPECT_EQ(k.grid[1], p.heads_q);
    }
    if (cs.persistent) {  // and it computes what the reference does
      ASSERT_TRUE(nattn::backward(p, c.views(), o).ok());
      ASSERT_TRUE(device_synchronized());
      expect_backward_matches_reference(c);
    }
  }
}

// Calls that do not ask for determinism take the fast kernel (backward_dkdv_dq, then
// dq_convert) except where the deterministic pair runs its own variants, which measured faster
// there (family.cu Sm90Family::backward_roles): persistent CTAs on walks of at most 16 boxes
// (the first two cases above) and two CTAs per SM at head dim 32. The fast plan then computes
// what the reference does.
struct ModeCase {
  int rank;
  int64_t extent, kernel, stride, heads;
  int head_dim;
  bool pair;
};
// The 64 x 64 grid with window 31 walks ~30 query boxes per key box (2-D: not persistent);
// it alone runs against the reference (the CPU reference of larger grids takes minutes).
// The 1-D window of 2048 walks ~35 boxes per item: the pair runs persistent there (1-D walks
// up to 48) but the fast kernel measured faster (2026-12-06), so it is fast.
const ModeCase kModeCases[] = {{2, 56, 7, 1, 4, 64, true},       {1, 4096, 127, 1, 4, 128, true},
                               {2, 56, 7, 1, 4, 32, true},       {2, 64, 31, 1, 2, 128, false},
                               {2, 256, 80, 16, 2, 128, false},  {1, 8192, 8192, 1, 2, 64, false},
                               {1, 8192, 2048, 1, 2, 128, false}};

// A case's problem, sm90 options (deterministic or not) and device tensors.
struct ModeRun {
  nattn::Problem p;
  nattn::Options o;
  DeviceBackward c;
};
ModeRun mode_run(const ModeCase& cs, bool deterministic, DType dtype, Rng& rng) {
  ModeRun r{square_problem(cs.rank, cs.extent, cs.kernel, cs.stride, 1, cs.heads, cs.head_dim), cuda_options(), {}};
  r.o.choice.family = "sm90";
  r.o.deterministic = deterministic;
  r.c = make_device_backward(r.p, dtype, false, false, rng);
  return r;
}

std::vector<std::string> backward_roles(const nattn::Plan& plan) {
  std::vector<std::string> roles;
  for (const nattn::PlannedKernel& k : plan.kernels)
    if (k.role != "delta") roles.push_back(k.role);
  return roles;
}

TEST_P(CudaSm90Persistent, DefaultModeTakesTheFastKernelUnlessThePairRunsItsVariants) {
  for (const char* v : {"NATTN_SM90_BACKWARD", "NATTN_SM90_BWD_PERSISTENT", "NATTN_SM90_BWD_TWO_CTAS"})
    if (std::getenv(v) != nullptr) GTEST_SKIP() << v << " is set";
  if (cuda_compute_capability() != 90) GTEST_SKIP() << "the sm90 family needs a Hopper device";
  for (const ModeCase& cs : kModeCases) {
    auto [p, o, c] = mode_run(cs, false, GetParam(), rng);
    SCOPED_TRACE(describe_problem(p));
    nattn::Plan plan;
    ASSERT_TRUE(nattn::explain_backward(p, c.views(), o, &plan).ok());
    SCOPED_TRACE("plan " + plan.to_json());
    const std::vector<std::string> want = cs.pair ? std::vector<std::string>{"backward_dq", "backward_dkdv"}
                                                  : std::vector<std::string>{"backward_dkdv_dq", "dq_convert"};
    EXPECT_EQ(backward_roles(plan), want);
    // The fast plan's float32 dQ workspace is part of the call's workspace.
    const int64_t accum = p.batch * p.extent[0] * (p.rank > 1 ? p.extent[1] : 1) * p.heads_q * cs.head_dim * 4;
    if (!cs.pair) EXPECT_GE(plan.workspace_bytes, accum);
    if (!cs.pair && cs.extent <= 64) {
      ASSERT_TRUE(nattn::backward(p, c.views(), o).ok());
      ASSERT_TRUE(device_synchronized());
      expect_backward_matches_reference(c);
    }
  }
}

// Deterministic calls take the pair (it measured faster than the ordered fast kernel:
// family.cu Sm90Family::backward_roles); a forced fast row plans its ordered variant
// (backward_dkdv_dq_ordered, then dq_convert), whose workspace holds the float32 dQ partials and a
// counter per query head and aligned box of 64 queries, and which computes what the reference
// does, bitwise the same twice.
TEST_P(CudaSm90Persistent, DeterministicTakesThePairOrAForcedFastRowsOrderedVariant) {
  for (const char* v : {"NATTN_SM90_BWD_PERSISTENT", "NATTN_SM90_BWD_TWO_CTAS", "NATTN_SM90_DETERMINISTIC"})
    if (std::getenv(v) != nullptr) GTEST_SKIP() << v << " is set";
  if (cuda_compute_capability() != 90) GTEST_SKIP() << "the sm90 family needs a Hopper device";
  for (const ModeCase& cs : kModeCases) {
    auto [p, o, c] = mode_run(cs, true, GetParam(), rng);
    SCOPED_TRACE(describe_problem(p));
    nattn::Plan plan;
    ASSERT_TRUE(nattn::explain_backward(p, c.views(), o, &plan).ok());
    EXPECT_EQ(backward_roles(plan), (std::vector<std::string>{"backward_dq", "backward_dkdv"})) << plan.to_json();
    const int row = fast_row(GetParam(), cs.head_dim);
    ASSERT_GE(row, 0) << "no sm90 fast row of head dim " << cs.head_dim;
    o.choice.config_ids = {row};
    ASSERT_TRUE(nattn::explain_backward(p, c.views(), o, &plan).ok());
    SCOPED_TRACE("plan " + plan.to_json());
    EXPECT_EQ(backward_roles(plan), (std::vector<std::string>{"backward_dkdv_dq_ordered", "dq_convert"}));
    const int64_t tokens = p.extent[0] * (p.rank > 1 ? p.extent[1] : 1);
    EXPECT_GE(plan.workspace_bytes, p.batch * p.heads_q * (tokens * cs.head_dim + tokens / 64) * 4);
    if (cs.extent > 64) continue;  // the CPU reference of larger grids takes minutes
    ASSERT_TRUE(nattn::backward(p, c.views(), o).ok());
    ASSERT_TRUE(device_synchronized());
    expect_backward_matches_reference(c);
    std::vector<std::vector<double>> first;
    for (DeviceTensor* t : {&c.dq, &c.dk, &c.dv}) {
      t->download();
      first.push_back(t->read());
    }
    ASSERT_TRUE(nattn::backward(p, c.views(), o).ok());
    ASSERT_TRUE(device_synchronized());
    size_t i = 0;
    for (DeviceTensor* t : {&c.dq, &c.dk, &c.dv}) {
      t->download();
      EXPECT_TRUE(t->read() == first[i++]) << "gradient " << i << " differs between two runs";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaSm90Persistent, ::testing::Values(DType::kFloat16, DType::kBFloat16),
                         [](const ::testing::TestParamInfo<DType>& info) {
                           return std::string(nattn::dtype_name(info.param));
                         });

}  // namespace
}  // namespace nattn_test
