// Layer: tests. The sm80 rows for consumer GPUs (sm86/sm89 let a block opt into 99 KB = 101376
// bytes of shared memory): with the test hook NATTN_SMEM_LIMIT=101376 (read once per process,
// so ctest runs this suite in its own process with it set: tests/CMakeLists.txt), every fused
// forward head dim (32, 64, 128, 256) and backward head dim (32, 64, 128) is planned on the sm80
// family with kernels that fit the limit, and matches the CPU reference. Without the hook, a
// device with Hopper's shared memory keeps the first (fastest) row of each head dim.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "device_tensor.h"
#include "nattn/nattn.h"

namespace nattn_test {
namespace {

using nattn::DType;

constexpr int64_t kConsumerOptin = 101376;  // sm86/sm89: cudaDevAttrMaxSharedMemoryPerBlockOptin

// The limit forced by NATTN_SMEM_LIMIT, 0 when unset.
int64_t forced_limit() {
  const char* e = std::getenv("NATTN_SMEM_LIMIT");
  return e == nullptr ? 0 : std::atoll(e);
}

const nattn::KernelConfigInfo* row_of(const std::vector<nattn::KernelConfigInfo>& rows, int id) {
  for (const nattn::KernelConfigInfo& r : rows)
    if (r.id == id) return &r;
  return nullptr;
}

// The first (fastest) sm80 row of a role, dtype and head dim: what a device with enough shared
// memory runs (configs.h lists siblings fastest first). -1 if none.
int first_row(const std::vector<nattn::KernelConfigInfo>& rows, const std::string& role, const std::string& dtype,
              int head_dim) {
  for (const nattn::KernelConfigInfo& r : rows)
    if (r.family == "sm80" && r.role == role && r.dtype == dtype && r.head_dim == head_dim) return r.id;
  return -1;
}

// Whether every sm80 row of these roles, dtype and head dim is built.
bool built(const std::vector<nattn::KernelConfigInfo>& rows, const std::vector<std::string>& roles,
           const std::string& dtype, int head_dim) {
  bool any = false;
  for (const nattn::KernelConfigInfo& r : rows)
    for (const std::string& role : roles)
      if (r.family == "sm80" && r.role == role && r.dtype == dtype && r.head_dim == head_dim) {
        if (!r.built) return false;
        any = true;
      }
  return any;
}

// A random problem whose max(D, Dv) pads to `head_dim` (above the next smaller fused head dim).
nattn::Problem random_problem(Rng& rng, int head_dim) {
  nattn::Problem p;
  p.rank = int(rng.integer(1, 3));
  for (int a = 0; a < p.rank; ++a) {
    p.window.kernel_size[a] = rng.integer(2, p.rank == 1 ? 24 : p.rank == 2 ? 9 : 5);
    p.window.dilation[a] = rng.integer(1, 2);
    p.window.stride[a] = rng.integer(1, p.window.kernel_size[a]);
    p.window.is_causal[a] = rng.coin(0.25);
    p.extent[a] = p.window.kernel_size[a] * p.window.dilation[a] + rng.integer(0, p.rank == 1 ? 150 : 10);
  }
  p.batch = rng.integer(1, 2);
  p.heads_kv = rng.integer(1, 2);
  p.heads_q = p.heads_kv * rng.integer(1, 2);
  p.num_additional = rng.coin(0.3) ? rng.integer(1, 40) : 0;
  const int64_t padded = 8 * rng.integer(head_dim / 16 + 1, head_dim / 8);  // (head_dim / 2, head_dim]
  const int64_t other = rng.coin() ? padded : 8 * rng.integer(1, padded / 8);
  const bool d_is_max = rng.coin();
  p.head_dim = d_is_max ? padded : other;
  p.head_dim_v = d_is_max ? other : padded;
  return p;
}

// The plan's sm80 kernels of `roles` fit `limit` and are rows of the call's dtype and head dim;
// where a faster sibling was passed over, the sm80 verdict says so.
void expect_plan_fits(const nattn::Plan& plan, const std::vector<std::string>& roles, const std::string& dtype,
                      int head_dim, int64_t limit) {
  const std::vector<nattn::KernelConfigInfo> rows = nattn::kernel_configs();
  EXPECT_EQ(plan.family, "sm80");
  std::string verdict;
  for (const nattn::FamilyVerdict& f : plan.families)
    if (f.family == "sm80" && f.chosen) verdict = f.reason;
  for (const std::string& role : roles) {
    int seen = 0;
    for (const nattn::PlannedKernel& k : plan.kernels) {
      if (k.role != role) continue;
      ++seen;
      EXPECT_LE(k.smem_bytes, limit) << role << " kernel, config " << k.config_id;
      const nattn::KernelConfigInfo* r = row_of(rows, k.config_id);
      ASSERT_NE(r, nullptr) << role << " kernel has no row";
      EXPECT_EQ(r->family, "sm80");
      EXPECT_EQ(r->dtype, dtype);
      EXPECT_EQ(r->head_dim, head_dim);
      const int first = first_row(rows, role, dtype, head_dim);
      if (k.config_id != first)
        EXPECT_NE(verdict.find("config " + std::to_string(first) + " needs"), std::string::npos)
            << "the plan must say why config " << first << " was passed over: " << verdict;
    }
    EXPECT_EQ(seen, 1) << "plan kernels of role " << role;
  }
}

class CudaConsumerSmem : public CudaTest, public ::testing::WithParamInterface<DType> {};

TEST_P(CudaConsumerSmem, EveryFusedHeadDimFits99KB) {
  const int64_t limit = forced_limit();
  if (limit <= 0) GTEST_SKIP() << "needs NATTN_SMEM_LIMIT (ctest runs it with 101376: tests/CMakeLists.txt)";
  if (cuda_compute_capability() < 80) GTEST_SKIP() << "the sm80 family needs compute capability 8.0";
  ASSERT_GE(limit, kConsumerOptin) << "below sm86/sm89's 101376 bytes the fused rows are not meant to fit";
  const DType dtype = GetParam();
  const std::string dt = nattn::dtype_name(dtype);
  const std::vector<nattn::KernelConfigInfo> rows = nattn::kernel_configs();
  for (const bool backward : {false, true}) {
    const std::vector<std::string> roles =
        backward ? std::vector<std::string>{"backward_dq", "backward_dkdv"} : std::vector<std::string>{"forward"};
    for (const int hd : backward ? std::vector<int>{32, 64, 128} : std::vector<int>{32, 64, 128, 256}) {
      if (!built(rows, roles, dt, hd)) {
        ADD_FAILURE() << "the sm80 " << roles.front() << " rows of head dim " << hd
                      << " are not built (NATTN_HEAD_DIMS): this suite needs all of them";
        continue;
      }
      for (int trial = 0; trial < 3; ++trial) {
        const nattn::Problem p = random_problem(rng, hd);
        SCOPED_TRACE(std::string(backward ? "backward" : "forward") + " hd" + std::to_string(hd) + ", trial " +
                     std::to_string(trial) + ": " + describe_problem(p) + ", " + dt);
        nattn::Options o = cuda_options();
        o.choice.family = "sm80";  // on Hopper the sm90 family would plan some of these first
        const bool strided = rng.coin(0.25);
        nattn::Plan plan;
        if (backward) {
          DeviceBackward c = make_device_backward(p, dtype, strided, rng.coin(0.33), rng);
          const nattn::Status planned = nattn::explain_backward(p, c.views(), o, &plan);
          ASSERT_TRUE(planned.ok()) << planned.message();
          SCOPED_TRACE("plan " + plan.to_json());
          expect_plan_fits(plan, roles, dt, hd, limit);
          const nattn::Status s = nattn::backward(p, c.views(), o);
          ASSERT_TRUE(s.ok()) << s.message();
          ASSERT_TRUE(device_synchronized());
          expect_backward_matches_reference(c);
        } else {
          DeviceForward c = make_device_forward(p, dtype, strided, rng.coin(0.75), rng);
          const nattn::Status planned = nattn::explain_forward(p, c.views(), o, &plan);
          ASSERT_TRUE(planned.ok()) << planned.message();
          SCOPED_TRACE("plan " + plan.to_json());
          expect_plan_fits(plan, roles, dt, hd, limit);
          const nattn::Status s = nattn::forward(p, c.views(), o);
          ASSERT_TRUE(s.ok()) << s.message();
          ASSERT_TRUE(device_synchronized());
          expect_forward_matches_reference(c);
        }
        if (HasFailure()) return;  // one failing problem is enough to report
      }
    }
  }
}

// Without the hook, a device with Hopper's shared memory (227 KB; the largest sm80 row needs
// 170 KB) runs the first row of every head dim: the 99 KB rows change nothing there.
TEST_P(CudaConsumerSmem, LargeSharedMemoryKeepsTheFirstRows) {
  if (forced_limit() > 0) GTEST_SKIP() << "NATTN_SMEM_LIMIT is set";
  if (cuda_compute_capability() < 80) GTEST_SKIP() << "the sm80 family needs compute capability 8.0";
  int optin = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0), cudaSuccess);
  if (optin < 200 * 1024) GTEST_SKIP() << "device allows " << optin << " bytes per block (not a Hopper)";
  const DType dtype = GetParam();
  const std::string dt = nattn::dtype_name(dtype);
  const std::vector<nattn::KernelConfigInfo> rows = nattn::kernel_configs();
  for (const bool backward : {false, true}) {
    const std::vector<std::string> roles =
        backward ? std::vector<std::string>{"backward_dq", "backward_dkdv"} : std::vector<std::string>{"forward"};
    for (const int hd : backward ? std::vector<int>{32, 64, 128} : std::vector<int>{32, 64, 128, 256}) {
      if (!built(rows, roles, dt, hd)) continue;
      const nattn::Problem p = random_problem(rng, hd);
      SCOPED_TRACE(std::string(backward ? "backward" : "forward") + " hd" + std::to_string(hd) + ": " +
                   describe_problem(p));
      nattn::Options o = cuda_options();
      o.choice.family = "sm80";
      nattn::Plan plan;
      if (backward) {
        DeviceBackward c = make_device_backward(p, dtype, false, false, rng);
        ASSERT_TRUE(nattn::explain_backward(p, c.views(), o, &plan).ok());
      } else {
        DeviceForward c = make_device_forward(p, dtype, false, false, rng);
        ASSERT_TRUE(nattn::explain_forward(p, c.views(), o, &plan).ok());
      }
      for (const std::string& role : roles)
        for (const nattn::PlannedKernel& k : plan.kernels)
          if (k.role == role) EXPECT_EQ(k.config_id, first_row(rows, role, dt, hd)) << role;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaConsumerSmem, ::testing::Values(DType::kFloat16, DType::kBFloat16),
                         [](const ::testing::TestParamInfo<DType>& info) {
                           return std::string(nattn::dtype_name(info.param));
                         });

}  // namespace
}  // namespace nattn_test
