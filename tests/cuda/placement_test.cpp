// Layer: tests. Placed boxes (SPEC.md "Placed boxes": cross-attention, shards of a larger grid)
// on the fused sm80 family, forced through Options::choice and asserted through the plan, on
// random problems (ranks 1-3, stride, dilation, causal, grouped heads, additional keys, key
// boxes that miss some queries' windows) and cross-attention (N != Nk, causal or not), forward
// and backward, against the CPU reference backend (float64) on the same inputs.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "device_tensor.h"
#include "nattn/nattn.h"

namespace nattn_test {
namespace {

using nattn::DType;

// Head dims of the built sm80 forward rows of a dtype (empty: none built).
std::vector<int> sm80_head_dims(DType dtype) {
  std::vector<int> dims;
  for (const nattn::KernelConfigInfo& r : nattn::kernel_configs())
    if (r.family == "sm80" && r.built && r.role == "forward" && r.dtype == nattn::dtype_name(dtype))
      dims.push_back(r.head_dim);
  return dims;
}

// The largest head dim of the built sm80 backward rows of a dtype (0: none built). The fused
// backward takes head dims up to 128: past them a forced sm80 backward is refused, not run.
int sm80_backward_head_dim(DType dtype) {
  int most = 0;
  for (const nattn::KernelConfigInfo& r : nattn::kernel_configs())
    if (r.family == "sm80" && r.built && r.role == "backward_dq" && r.dtype == nattn::dtype_name(dtype))
      most = std::max(most, r.head_dim);
  return most;
}

// A random placed problem: a global grid per axis, a query box and a key box inside it (the key
// box often the query box plus a halo, sometimes one that misses some windows entirely).
nattn::Problem random_placed(Rng& rng) {
  nattn::Problem p;
  p.rank = int(rng.integer(1, 3));
  const int64_t max_kernel = p.rank == 1 ? 24 : p.rank == 2 ? 9 : 5;
  const int64_t max_extra = p.rank == 1 ? 200 : p.rank == 2 ? 14 : 5;
  for (int a = 0; a < p.rank; ++a) {
    p.window.dilation[a] = rng.integer(1, p.rank == 1 ? 3 : 2);
    p.window.kernel_size[a] = rng.integer(2, max_kernel);
    p.window.stride[a] = rng.integer(1, p.window.kernel_size[a]);
    p.window.is_causal[a] = rng.coin(0.25);
    const int64_t G = p.window.kernel_size[a] * p.window.dilation[a] + rng.integer(0, max_extra);
    p.placement.global_extent[a] = G;
    p.extent[a] = rng.integer(1, G);
    p.placement.query_origin[a] = rng.integer(0, G - p.extent[a]);
    if (rng.coin(0.5)) {  // a halo: the query box widened by up to a window on each side
      const int64_t reach = p.window.kernel_size[a] * p.window.dilation[a];
      const int64_t lo = std::max<int64_t>(0, p.placement.query_origin[a] - rng.integer(0, reach));
      const int64_t hi = std::min(G, p.placement.query_origin[a] + p.extent[a] + rng.integer(0, reach));
      p.placement.key_origin[a] = lo;
      p.placement.key_extent[a] = hi - lo;
    } else {
      p.placement.key_extent[a] = rng.integer(1, G);
      p.placement.key_origin[a] = rng.integer(0, G - p.placement.key_extent[a]);
    }
  }
  // Every axis can draw the whole grid for both boxes (an H100 run hit it in 1 of ~500 draws):
  // a grid one larger along axis 0 keeps the problem placed.
  if (!p.placed()) p.placement.global_extent[0] += 1;
  p.batch = rng.integer(1, 2);
  p.heads_kv = rng.integer(1, 2);
  p.heads_q = p.heads_kv * rng.integer(1, 3);  // grouped-query heads
  p.num_additional = rng.coin(0.3) ? rng.integer(1, 70) : 0;
  if (rng.coin(0.2)) p.scale = rng.uniform(0.05, 0.5);
  return p;
}

// Cross-attention, N queries and Nk keys, as SPEC.md "Dense attention and cross-attention"
// defines it: the 1-D placed problem with G = max(N, Nk), kernel_size G, both boxes at 0.
nattn::Problem cross_problem(int64_t n, int64_t nk, bool causal) {
  nattn::Problem p;
  p.rank = 1;
  p.extent = {n, 1, 1};
  const int64_t G = std::max(n, nk);
  p.placement.global_extent = {G, 0, 0};
  p.placement.key_extent = {nk, 0, 0};
  p.window = nattn::Window::uniform(G, 1, 1, causal);
  return p;
}

nattn::Problem random_cross(Rng& rng) {
  const int64_t n = rng.pick(std::vector<int64_t>{1, 17, 65, 96, 300, 1000});
  int64_t nk = rng.pick(std::vector<int64_t>{1, 17, 77, 130, 333, 1000});
  if (nk == n) nk += 1;
  nattn::Problem p = cross_problem(n, nk, rng.coin());
  p.batch = rng.integer(1, 2);
  p.heads_kv = rng.integer(1, 2);
  p.heads_q = p.heads_kv * rng.integer(1, 3);
  return p;
}

class CudaSm80Placement : public CudaTest {
 protected:
  // Runs a placed problem forward and backward on the forced sm80 family; the plan must say
  // sm80 ran it, and the results match the reference.
  void run(nattn::Problem p) {
    if (cuda_compute_capability() < 80) GTEST_SKIP() << "the sm80 family needs compute capability 8.0";
    const DType dtype = rng.coin() ? DType::kFloat16 : DType::kBFloat16;
    const std::vector<int> dims = sm80_head_dims(dtype);
    if (dims.empty()) GTEST_SKIP() << "no " << nattn::dtype_name(dtype) << " sm80 rows are built (NATTN_HEAD_DIMS)";
    const int hd = int(rng.pick(std::vector<int64_t>(dims.begin(), dims.end())));
    p.head_dim = 8 * rng.integer(1, hd / 8);
    p.head_dim_v = rng.coin() ? p.head_dim : 8 * rng.integer(1, hd / 8);
    ASSERT_TRUE(p.placed()) << "the test problem must be placed";
    const bool strided = rng.coin(0.25);
    SCOPED_TRACE(describe_problem(p) + ", " + nattn::dtype_name(dtype) + (strided ? ", strided" : ""));
    nattn::Options o = cuda_options();
    o.choice.family = "sm80";
    nattn::Plan plan;
    {
      DeviceForward c = make_device_forward(p, dtype, strided, true, rng);
      const nattn::Status s = nattn::explain_forward(p, c.views(), o, &plan);
      if (s.code() == nattn::StatusCode::kUnsupported && s.message().find("shared memory") != std::string::npos)
        GTEST_SKIP() << s.message();
      ASSERT_TRUE(s.ok()) << s.message();
      EXPECT_EQ(plan.family, "sm80") << plan.to_json();
      ASSERT_TRUE(nattn::forward(p, c.views(), o).ok());
      ASSERT_TRUE(device_synchronized());
      expect_forward_matches_reference(c);
    }
    if (std::max(p.head_dim, p.head_dim_v) > sm80_backward_head_dim(dtype)) return;  // forward only
    {
      DeviceBackward c = make_device_backward(p, dtype, strided, rng.coin(0.33), rng);
      const nattn::Status s = nattn::explain_backward(p, c.views(), o, &plan);
      if (s.code() == nattn::StatusCode::kUnsupported && s.message().find("shared memory") != std::string::npos)
        GTEST_SKIP() << s.message();
      ASSERT_TRUE(s.ok()) << s.message();
      EXPECT_EQ(plan.family, "sm80") << plan.to_json();
      ASSERT_TRUE(nattn::backward(p, c.views(), o).ok());
      ASSERT_TRUE(device_synchronized());
      expect_backward_matches_reference(c);
    }
  }
};

TEST_F(CudaSm80Placement, RandomPlacedBoxesMatchReference) {
  for (int trial = 0; trial < 40 && !HasFailure() && !IsSkipped(); ++trial) {
    SCOPED_TRACE("trial " + std::to_string(trial));
    run(random_placed(rng));
  }
}

TEST_F(CudaSm80Placement, CrossAttentionMatchesReference) {
  for (int trial = 0; trial < 16 && !HasFailure() && !IsSkipped(); ++trial) {
    SCOPED_TRACE("trial " + std::to_string(trial));
    run(random_cross(rng));
  }
}

// Without the choice, a placed call runs fused (not the generic kernels: cross-attention is a
// common call): the forward on sm90 where the device is Hopper, else sm80.
TEST_F(CudaSm80Placement, PlacedCallsAreNotHandedToGeneric) {
  if (cuda_compute_capability() < 80) GTEST_SKIP() << "the sm80 family needs compute capability 8.0";
  if (sm80_head_dims(DType::kBFloat16).empty()) GTEST_SKIP() << "no bfloat16 sm80 rows are built";
  nattn::Problem p = cross_problem(96, 17, false);
  p.head_dim = p.head_dim_v = sm80_head_dims(DType::kBFloat16).front();
  DeviceForward c = make_device_forward(p, DType::kBFloat16, false, true, rng);
  nattn::Plan plan;
  const nattn::Status s = nattn::explain_forward(p, c.views(), cuda_options(), &plan);
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_NE(plan.family, "generic") << plan.to_json();
  if (cuda_compute_capability() / 10 != 9) EXPECT_EQ(plan.family, "sm80") << plan.to_json();
}

}  // namespace
}  // namespace nattn_test
