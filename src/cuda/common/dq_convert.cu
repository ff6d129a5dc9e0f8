// Layer: cuda/common. The fast backward's dQ conversion (see dq_convert.h). Two paths, both
// memory-bound: dQ rows that store as 16-byte vectors take G threads per row of 8 columns each
// (row_pass.cuh); any other stride takes one thread per 8 columns of a row, so a warp still
// reads 1 KB of the workspace in one go.
#include "cuda/check.h"
#include "cuda/common/configs.h"
#include "cuda/common/dq_convert.h"
#include "cuda/common/element.cuh"
#include "cuda/common/row_pass.cuh"

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

// G threads per row, each converting 8 columns per step: two float4 loads, one 16-byte store.
// The workspace is read once (streaming loads keep it from displacing the L2's other lines).
template <class T, int G>
__global__ void __launch_bounds__(kThreads) dq_convert_vec_kernel(BackwardParams p, bool nest) {
  const Geometry& g = p.g;
  const int64_t r = int64_t(blockIdx.x) * (kThreads / G) + threadIdx.x / G;
  if (r >= g.batch * g.tokens * g.heads_q) return;
  const float* src = p.dq_accum + r * p.sdq_accum.head;
  T* dst = static_cast<T*>(p.dq) + rows::row_offset(g, p.sdq, nest, g.heads_q, r);
  for (int64_t c = int64_t(threadIdx.x % G) * kCols; c < g.head_dim; c += int64_t(G) * kCols) {
    const float4 a = __ldcs(reinterpret_cast<const float4*>(src + c));
    const float4 b = __ldcs(reinterpret_cast<const float4*>(src + c + 4));
    const float f[kCols] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
    *reinterpret_cast<uint4*>(dst + c) = rows::pack8<T>(f);
  }
}

template <class T, int G>
void launch_vec(const BackwardParams& p, bool nest, int64_t rows, cudaStream_t s) {
  const int64_t per_block = kThreads / G;
  dq_convert_vec_kernel<T, G><<<unsigned((rows + per_block - 1) / per_block), kThreads, 0, s>>>(p, nest);
}

template <class T>
Status launch(const BackwardParams& p, cudaStream_t s) {
  const Geometry& g = p.g;
  const int64_t rows = g.batch * g.tokens * g.heads_q;
  // The vector path also needs the workspace's rows in whole float4 pairs (8 columns).
  if (rows::rows_vectorize(p.dq, g, p.sdq, g.head_dim, sizeof(T)) && p.sdq_accum.head % kCols == 0) {
    const bool nest = rows::rows_nest(g, p.sdq, g.heads_q);
    rows::with_threads_per_row(rows::threads_per_row(g.head_dim, kCols),
                               [&](auto G) { launch_vec<T, decltype(G)::value>(p, nest, rows, s); });
    return check_launch("backward dQ conversion");
  }
  const int64_t items = rows * ((g.head_dim + kCols - 1) / kCols);
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
