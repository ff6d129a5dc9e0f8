// Layer: cuda/common. The Delta pre-pass (see delta.h): one thread per query row, any dtype
// and stride (memory-bound; out and dout are read once).
#include "cuda/check.h"
#include "cuda/common/delta.h"
#include "cuda/common/element.cuh"
#include "cuda/common/fragment/softmax.cuh"

namespace nattn::cuda {
namespace {

constexpr int kThreads = 128;

template <class T>
__global__ void delta_kernel(BackwardParams p) {
  using A = generic::Acc<T>;
  const Geometry& g = p.g;
  generic::GridItem it;
  if (!generic::grid_item(g, g.heads_q, &it)) return;
  const T* o = generic::row_of<const T>(g, p.out, p.so, it.b, it.c, it.h);
  const T* dO = generic::row_of<const T>(g, p.dout, p.sdo, it.b, it.c, it.h);
  A d = generic::dot<T, A>(o, p.so.dim, dO, p.sdo.dim, g.head_dim_v);
  if (p.dlse) d -= A(*generic::row_of<const float>(g, p.dlse, p.sdlse, it.b, it.c, it.h));
  // The row's lse in the log2 domain beside it (BackwardParams::rows); a row without keys
  // (placed boxes: lse = -inf) gets +inf, so its P is 0 wherever a kernel reads it.
  const float lse = *generic::row_of<const float>(g, p.lse, p.slse, it.b, it.c, it.h);
  const float lse2 = lse == -INFINITY ? INFINITY : lse * kLog2e;
  // (row_of steps in elements of its type: the row's first float, then its four as one store.)
  float* row = generic::row_of<float>(g, p.rows, p.srows, it.b, it.c, it.h);
  *reinterpret_cast<float4*>(row) = make_float4(lse2, float(d), 0.f, 0.f);
}

template <class T>
Status launch(const BackwardParams& p, cudaStream_t s) {
  const int64_t rows = p.g.batch * p.g.tokens * p.g.heads_q;
  delta_kernel<T><<<unsigned((rows + kThreads - 1) / kThreads), kThreads, 0, s>>>(p);
  return check_launch("backward delta");
}

}  // namespace

Status run_delta(const BackwardParams& p, DType dtype, cudaStream_t s) {
  switch (dtype) {
    case DType::kFloat32: return launch<float>(p, s);
    case DType::kFloat64: return launch<double>(p, s);
    case DType::kFloat16: return launch<__half>(p, s);
    case DType::kBFloat16: return launch<__nv_bfloat16>(p, s);
  }
  return Status::Invalid("dtype is invalid");
}

}  // namespace nattn::cuda
