// Layer: tests. Element offsets past 2^31 give exactly the results of a compact layout.
// Tensors sit in a huge buffer that is never value-initialised, so only touched pages are mapped.
#include <gtest/gtest.h>

#include <memory>
#include <vector>

#include "support/call_check.h"
#include "support/problems.h"

namespace nattn_test {
namespace {

using nattn::DType;

constexpr int64_t kAxisStride = int64_t(1) << 30;  // the first spatial axis has extent 3: offsets reach 2^31
constexpr int64_t kBufferElements = (int64_t(1) << 31) + (int64_t(1) << 16);

// Storage of `n` elements of T, deliberately not value-initialised so the OS maps pages lazily.
template <class T>
std::unique_ptr<T[]> huge_buffer() {
  return std::unique_ptr<T[]>(new T[size_t(kBufferElements)]);
}

// A view with `like`'s shape whose dim 1 steps by 2^30 elements (the rest compact), starting
// `start` elements into `base`; holds `like`'s values when `copy_values`.
nattn::TensorView far_view(void* base, const TestTensor& like, int64_t start, bool copy_values) {
  nattn::TensorView v = like.view();
  int64_t step = 1;
  for (int d = v.ndim - 1; d >= 2; --d) {
    v.stride[d] = step;
    step *= v.shape[d];
  }
  EXPECT_LE(step, 4096);
  EXPECT_EQ(v.shape[0], 1);
  EXPECT_EQ(v.shape[1], 3);
  v.stride[1] = kAxisStride;
  v.stride[0] = 0;
  v.data = static_cast<unsigned char*>(base) + start * nattn::dtype_size(v.dtype);
  if (copy_values) write_view(v, like.read());
  return v;
}

CallConfig config(DType dtype) {
  CallConfig c;
  c.problem = make_problem(2, {3, 5, 1}, make_window({2, 3, 2}, {1, 2, 1}, {1, 1, 1}, {false, true, false}));
  c.problem.heads_q = 2;
  c.problem.head_dim_v = 3;
  c.dtype = dtype;
  c.with_dlse = true;
  return c;
}

using LargeOffsets = SeededTest;

TEST_F(LargeOffsets, ForwardInputsPast2To31) {
  const CallConfig c = config(DType::kFloat32);
  const CallTensors t = make_forward_call(c, rng);
  ASSERT_TRUE(run_forward(c, t).ok());
  auto big = huge_buffer<float>();
  nattn::ForwardTensors far = t.forward_views();
  far.q = far_view(big.get(), t.q, 0, true);  // inputs may share one buffer
  far.k = far_view(big.get(), t.k, 8192, true);
  far.v = far_view(big.get(), t.v, 16384, true);
  TestTensor out(t.out.shape(), c.dtype, Layout::kContiguous, rng),
      lse(t.lse.shape(), DType::kFloat32, Layout::kContiguous, rng);
  far.out = out.view();
  far.lse = lse.view();
  const nattn::Status s = nattn::forward(c.problem, far);
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(out.read(), t.out.read());
  EXPECT_EQ(lse.read(), t.lse.read());
}

TEST_F(LargeOffsets, ForwardOutputPast2To31) {
  const CallConfig c = config(DType::kFloat16);
  const CallTensors t = make_forward_call(c, rng);
  ASSERT_TRUE(run_forward(c, t).ok());
  auto big = huge_buffer<uint16_t>();
  nattn::ForwardTensors far = t.forward_views();
  TestTensor lse(t.lse.shape(), DType::kFloat32, Layout::kContiguous, rng);
  far.out = far_view(big.get(), t.out, 0, false);
  far.lse = lse.view();
  const nattn::Status s = nattn::forward(c.problem, far);
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(read_view(far.out), t.out.read());
  EXPECT_EQ(lse.read(), t.lse.read());
}

TEST_F(LargeOffsets, BackwardPast2To31) {
  const CallConfig c = config(DType::kBFloat16);
  const CallTensors t = make_backward_call(c, rng);
  ASSERT_TRUE(run_backward(c, t).ok());
  auto in = huge_buffer<uint16_t>();
  auto grad = huge_buffer<uint16_t>();
  nattn::BackwardTensors far = t.backward_views();
  far.k = far_view(in.get(), t.k, 0, true);
  far.dout = far_view(in.get(), t.dout, 8192, true);
  TestTensor dq(t.dq.shape(), c.dtype, Layout::kContiguous, rng), dv(t.dv.shape(), c.dtype, Layout::kContiguous, rng);
  far.dk = far_view(grad.get(), t.dk, 0, false);
  far.dq = dq.view();
  far.dv = dv.view();
  const nattn::Status s = nattn::backward(c.problem, far);
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(read_view(far.dk), t.dk.read());
  EXPECT_EQ(dq.read(), t.dq.read());
  EXPECT_EQ(dv.read(), t.dv.read());
}

}  // namespace
}  // namespace nattn_test
