// Layer: cuda/common. The fast backward's dQ conversion (see dq_convert.h): one thread per
// eight columns of a query row, so a warp reads 1 KB of the workspace in one go (memory-bound).
#include "cuda/check.h"
#include "cuda/common/configs.h"
#include "cuda/common/dq_convert.h"
#include "cuda/common/element.cuh"

namespace nattn::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kCols = 8;  // columns per thread

template <class T>
__global__ void dq_convert_kernel(BackwardParams p) {
  const Geometry& g = p.g;
  const int64_t chunks = (g.head_dim + kCols - 1) / kCols;
  const int64_t item = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (item >= g.batch * g.tokens * g.heads_q * chunks) return;
  const int64_t row = item / chunks, col0 = (item % chunks) * kCols;
  const int64_t h = row % g.heads_q, token = (row / g.heads_q) % g.tokens, b = row / (g.heads_q * g.tokens);
  int64_t c[3];
  generic::coords_in(g, g.extent, token, c);
  const float* src = p.dq_accum + row * p.sdq_accum.head + col0;  // rows of dq_accum_cols(g) floats
  T* dst = generic::row_of<T>(g, p.dq, p.sdq, b, c, h) + col0 * p.sdq.dim;
#pragma unroll
  for (int j = 0; j < kCols; ++j)
    if (col0 + j < g.head_dim) dst[j * p.sdq.dim] = generic::from_acc<T>(src[j]);
}

template <class T>
Status launch(const BackwardParams& p, cudaStream_t s) {
  const int64_t items = p.g.batch * p.g.tokens * p.g.heads_q * ((p.g.head_dim + kCols - 1) / kCols);
  dq_convert_kernel<T><<<unsigned((items + kThreads - 1) / kThreads), kThreads, 0, s>>>(p);
  return check_launch("backward dQ conversion");
}

}  // namespace

int64_t dq_accum_cols(const Geometry& g) {
  const int64_t hd = g.head_dim > g.head_dim_v ? g.head_dim : g.head_dim_v;
  const int padded = padded_head_dim(Family::kSm90, Role::kBackwardDkdvDq, int(hd));
  return padded > 0 ? padded : g.head_dim;
}

size_t dq_accum_bytes(const Geometry& g) {
  return size_t(g.batch * g.tokens * g.heads_q * dq_accum_cols(g)) * sizeof(float);
}

Status run_dq_convert(const BackwardParams& p, DType dtype, cudaStream_t s) {
  switch (dtype) {
    case DType::kFloat16: return launch<__half>(p, s);
    case DType::kBFloat16: return launch<__nv_bfloat16>(p, s);
    default: return Status::Invalid("the dQ conversion takes float16/bfloat16");
  }
}

}  // namespace nattn::cuda
