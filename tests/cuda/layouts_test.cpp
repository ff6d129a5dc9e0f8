// Layer: tests. Tensors of one call with different layouts from each other: each must be read
// with its own strides (a kernel that reuses one tensor's strides for another reads the wrong
// elements only when the layouts differ, which random layouts rarely produce).
#include <gtest/gtest.h>

#include <vector>

#include "device_tensor.h"
#include "nattn/nattn.h"

namespace nattn_test {
namespace {

using nattn::DType;

// Row-major strides over `shape` with the innermost (head-dim) stride `dim_stride`.
std::vector<int64_t> strides_with_dim_stride(const std::vector<int64_t>& shape, int64_t dim_stride) {
  std::vector<int64_t> s(shape.size());
  int64_t step = dim_stride;
  for (size_t d = shape.size(); d-- > 0;) {
    s[d] = step;
    step *= shape[d];
  }
  return s;
}

nattn::Problem problem_with_additional(int64_t head_dim) {
  nattn::Problem p;
  p.rank = 2;
  p.batch = 2;
  p.extent = {9, 11, 1};
  p.window = nattn::Window::uniform(3);
  p.heads_q = 4;
  p.heads_kv = 2;
  p.head_dim = p.head_dim_v = head_dim;
  p.num_additional = 7;
  return p;
}

class CudaLayouts : public CudaTest {};

// Additional keys and values whose head-dim stride (3) differs from k's and v's (1), in every
// dtype (float32/float64 run the generic kernels, 16-bit ones a fused family through copies).
TEST_F(CudaLayouts, AdditionalKeysAndValuesUseTheirOwnStrides) {
  for (const DType dtype : {DType::kFloat32, DType::kFloat64, DType::kFloat16, DType::kBFloat16}) {
    const nattn::Problem p = problem_with_additional(32);
    SCOPED_TRACE(describe_problem(p) + ", " + nattn::dtype_name(dtype));
    for (const bool backward : {false, true}) {
      SCOPED_TRACE(backward ? "backward" : "forward");
      const std::vector<int64_t> ka_shape{p.batch, p.num_additional, p.heads_kv, p.head_dim};
      const std::vector<int64_t> va_shape{p.batch, p.num_additional, p.heads_kv, p.head_dim_v};
      DeviceTensor ka(ka_shape, dtype, strides_with_dim_stride(ka_shape, 3), 0);
      DeviceTensor va(va_shape, dtype, strides_with_dim_stride(va_shape, 3), 0);
      ka.fill_random(rng);
      va.fill_random(rng);
      if (backward) {
        DeviceBackward c = make_device_backward(p, dtype, false, false, rng);
        c.ka = std::move(ka);
        c.va = std::move(va);
        finish_device_backward(c, false, false, rng);  // out and lse of these inputs
        const nattn::Status s = nattn::backward(p, c.views(), cuda_options());
        ASSERT_TRUE(s.ok()) << s.message();
        ASSERT_TRUE(device_synchronized());
        expect_backward_matches_reference(c);
      } else {
        DeviceForward c = make_device_forward(p, dtype, false, true, rng);
        c.ka = std::move(ka);
        c.va = std::move(va);
        const nattn::Status s = nattn::forward(p, c.views(), cuda_options());
        ASSERT_TRUE(s.ok()) << s.message();
        ASSERT_TRUE(device_synchronized());
        expect_forward_matches_reference(c);
      }
    }
  }
}

}  // namespace
}  // namespace nattn_test
