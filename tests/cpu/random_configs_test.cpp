// Layer: tests. 320 random configurations, forward and backward, against the dense oracle.
// Ranks 1-3, odd extents, every window parameter per axis, grouped heads, Dv != D, additional
// keys, every dtype, strided views, heads as a grid axis. Each configuration draws a fresh seed
// and prints it with the configuration on failure.
#include <gtest/gtest.h>

#include "core/heads_axis.h"
#include "support/call_check.h"

namespace nattn_test {
namespace {

constexpr int kConfigs = 320;

CallConfig random_config(Rng& rng) {
  CallConfig c = random_call_config(rng, 3);
  // Half of the calls that can run with their heads as a grid axis do (the CUDA backend's
  // rewrite for small grids, cuda/planner.cu), checked against the oracle of the call as it is.
  c.heads_axis = !c.dense && nattn::heads_axis_applies(c.problem) && rng.coin();
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
