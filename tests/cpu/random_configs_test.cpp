// Layer: tests. 320 random configurations, forward and backward, against the dense oracle.
// Ranks 1-3, odd extents, every window parameter per axis, grouped heads, Dv != D, additional
// keys, every dtype, strided views, heads as a grid axis. Each configuration draws a fresh seed
// and prints it with the configuration on failure.
#include <gtest/gtest.h>

#include "core/heads_axis.h"
#include "support/call_check.h"

namespace nattn_test {
namespace {

using nattn::DType;

constexpr int kConfigs = 320;

CallConfig random_config(Rng& rng) {
  CallConfig c;
  nattn::Problem& p = c.problem;
  p.rank = int(rng.integer(1, 3));
  const int64_t max_extent = p.rank == 1 ? 41 : p.rank == 2 ? 13 : 7;
  for (size_t a = 0; a < size_t(p.rank); ++a) {
    const int64_t L = 2 * rng.integer(1, (max_extent - 1) / 2) + 1;  // odd, 3 .. max_extent
    const int64_t d = rng.coin(0.6) ? 1 : rng.integer(1, L / 2);
    const int64_t k = rng.integer(2, L / d);
    p.extent[a] = L;
    p.window.kernel_size[a] = k;
    p.window.dilation[a] = d;
    p.window.stride[a] = rng.coin(0.5) ? 1 : rng.integer(1, k);
    p.window.is_causal[a] = rng.coin(0.3);
  }
  p.batch = rng.integer(1, 2);
  p.heads_kv = rng.integer(1, 2);
  p.heads_q = p.heads_kv * rng.integer(1, 3);
  p.head_dim = rng.integer(1, 8);
  p.head_dim_v = rng.coin() ? p.head_dim : rng.integer(1, 8);
  p.num_additional = rng.coin(0.6) ? 0 : rng.integer(1, 4);
  if (rng.coin(0.3)) p.scale = rng.coin(0.1) ? 0.0 : rng.uniform(-2.0, 2.0);
  c.dtype = rng.pick(std::vector<DType>{DType::kFloat32, DType::kFloat64, DType::kFloat16, DType::kBFloat16});
  c.strided = rng.coin();
  c.with_lse = rng.coin(0.8);
  c.with_dlse = rng.coin();
  // Half of the calls that can run with their heads as a grid axis do (the CUDA backend's
  // rewrite for small grids, cuda/planner.cu), checked against the oracle of the call as it is.
  c.heads_axis = !c.dense && nattn::heads_axis_applies(p) && rng.coin();
  return c;
}

class RandomConfig : public ::testing::TestWithParam<int> {};

TEST_P(RandomConfig, ForwardAndBackwardMatchDenseOracle) {
  Rng rng;
  SCOPED_TRACE(rng.trace());
  const CallConfig c = random_config(rng);
  check_forward(c, rng);
  check_backward(c, rng);
}

INSTANTIATE_TEST_SUITE_P(Cpu, RandomConfig, ::testing::Range(0, kConfigs));

}  // namespace
}  // namespace nattn_test
