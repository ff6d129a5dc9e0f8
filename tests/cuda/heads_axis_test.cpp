// Layer: tests. The CUDA backend's heads-as-grid-axis rewrite (core/heads_axis.h, decided by
// cuda/planner.cu heads_axis_pays): where it is planned (host only, no device needed), and on a
// device that NAT/DiNAT-sized calls planned with it match the reference backend, forward and
// backward, with the plan saying so.
#include <gtest/gtest.h>

#include <string>

#include "cuda/planner.h"
#include "device_tensor.h"
#include "nattn/nattn.h"

namespace nattn_test {
namespace {

// One NAT stage's attention: batch 4, a square grid, window 7, head dim 32.
nattn::Problem nat_stage(int64_t side, int64_t heads, int64_t dilation = 1) {
  nattn::Problem p;
  p.rank = 2;
  p.batch = 4;
  p.extent = {side, side, 1};
  p.heads_q = p.heads_kv = heads;
  p.head_dim = p.head_dim_v = 32;
  p.window = nattn::Window::uniform(7, 1, dilation);
  return p;
}

TEST(HeadsAxisPays, WhereBoxesHoldSeveralHeads) {
  const nattn::Options o;
  EXPECT_TRUE(nattn::cuda::heads_axis_pays(nat_stage(7, 16), o));   // 49 tokens a head: two heads a box
  EXPECT_FALSE(nattn::cuda::heads_axis_pays(nat_stage(56, 2), o));  // large grids: nothing to gain
  EXPECT_FALSE(nattn::cuda::heads_axis_pays(nat_stage(28, 4), o));
  nattn::Problem gqa = nat_stage(7, 16);
  gqa.heads_kv = 8;  // grouped heads: 8 kv heads as the axis, 2 query heads each
  EXPECT_TRUE(nattn::cuda::heads_axis_pays(gqa, o));
  gqa.heads_kv = 1;
  EXPECT_FALSE(nattn::cuda::heads_axis_pays(gqa, o));
  nattn::Problem padded = nat_stage(7, 16);
  padded.head_dim = padded.head_dim_v = 48;  // batch > 1 on a 3-D grid: sm90 zero-fills only 32/64/128/256
  EXPECT_FALSE(nattn::cuda::heads_axis_pays(padded, o));
  padded.batch = 1;
  EXPECT_TRUE(nattn::cuda::heads_axis_pays(padded, o));
  nattn::Options forced;
  forced.choice.own_tile = {8, 16, 1};  // forced boxes name the call's own axes
  forced.choice.walk_tile = {8, 16, 1};
  EXPECT_FALSE(nattn::cuda::heads_axis_pays(nat_stage(7, 16), forced));
}

class HeadsAxisOnDevice : public CudaTest {};

TEST_F(HeadsAxisOnDevice, NatStagesMatchTheReference) {
  nattn::Problem gqa = nat_stage(7, 12);
  gqa.heads_kv = 4;
  for (const nattn::Problem& p : {nat_stage(7, 16), nat_stage(7, 6, 1), nat_stage(14, 8, 2), gqa}) {
    SCOPED_TRACE(describe_problem(p));
    const bool packed = nattn::cuda::heads_axis_pays(p, cuda_options());
    {
      DeviceForward c = make_device_forward(p, nattn::DType::kBFloat16, rng.coin(), true, rng);
      nattn::Plan plan;
      ASSERT_TRUE(nattn::explain_forward(p, c.views(), cuda_options(), &plan).ok());
      EXPECT_EQ(plan.to_json().find("heads as grid axis") != std::string::npos, packed) << plan.to_json();
      const nattn::Status s = nattn::forward(p, c.views(), cuda_options());
      ASSERT_TRUE(s.ok()) << s.message();
      expect_forward_matches_reference(c);
    }
    DeviceBackward c = make_device_backward(p, nattn::DType::kBFloat16, rng.coin(), rng.coin(), rng);
    nattn::Plan plan;
    ASSERT_TRUE(nattn::explain_backward(p, c.views(), cuda_options(), &plan).ok());
    EXPECT_EQ(plan.to_json().find("heads as grid axis") != std::string::npos, packed) << plan.to_json();
    const nattn::Status s = nattn::backward(p, c.views(), cuda_options());
    ASSERT_TRUE(s.ok()) << s.message();
    expect_backward_matches_reference(c);
  }
}

}  // namespace
}  // namespace nattn_test
