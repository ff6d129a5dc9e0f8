// Layer: cuda/common. The Delta pre-pass (see delta.h), which also zeroes the fast mode's dQ
// workspace (its kernels add into it). Two paths, both memory-bound (out and dout read once):
// 16-bit rows that load as 16-byte vectors take G threads per row (row_pass.cuh); every other
// dtype and stride takes one thread per row.
#include "cuda/check.h"
#include "cuda/common/delta.h"
#include "cuda/common/element.cuh"
#include "cuda/common/fragment/softmax.cuh"
#include "cuda/common/row_pass.cuh"

namespace nattn::cuda {
namespace {

constexpr int kThreads = 128;     // the generic path
constexpr int kVecThreads = 256;  // the vector path
constexpr int kPer = 8;           // columns per 16-byte vector of a 16-bit dtype

// Which of the pass's tensors have nested rows (rows::rows_nest), decided on the host.
struct Nest {
  bool out = false, dout = false, lse = false, dlse = false;
};

// Row r's four floats (BackwardParams::rows, contiguous): lse in the log2 domain beside Delta;
// a row without keys (placed boxes: lse = -inf) gets +inf, so its P is 0 wherever a kernel
// reads it. Then the row of the dQ workspace zeroed, `lane` of `lanes` threads sharing it.
__device__ __forceinline__ void finish_row(const BackwardParams& p, const Nest& n, int64_t r, float delta, int lane,
                                           int lanes) {
  const Geometry& g = p.g;
  if (lane == 0) {
    if (p.dlse) delta -= p.dlse[rows::row_offset(g, p.sdlse, n.dlse, g.heads_q, r)];
    const float lse = p.lse[rows::row_offset(g, p.slse, n.lse, g.heads_q, r)];
    const float lse2 = lse == -INFINITY ? INFINITY : lse * kLog2e;
    reinterpret_cast<float4*>(p.rows)[r] = make_float4(lse2, delta, 0.f, 0.f);
  }
  if (p.dq_accum) {  // [rows, cols] contiguous (dq_convert.h)
    const int64_t cols = p.sdq_accum.head;
    float* z = p.dq_accum + r * cols;
    if (cols % 4 == 0) {
      for (int64_t i = lane; i < cols / 4; i += lanes)
        reinterpret_cast<float4*>(z)[i] = make_float4(0.f, 0.f, 0.f, 0.f);
    } else {
      for (int64_t i = lane; i < cols; i += lanes) z[i] = 0.f;
    }
  }
}

template <class T>
__global__ void delta_kernel(BackwardParams p, Nest n) {
  using A = generic::Acc<T>;
  const Geometry& g = p.g;
  generic::GridItem it;
  if (!generic::grid_item(g, g.heads_q, &it)) return;
  const T* o = generic::row_of<const T>(g, p.out, p.so, it.b, it.c, it.h);
  const T* dO = generic::row_of<const T>(g, p.dout, p.sdo, it.b, it.c, it.h);
  const A d = generic::dot<T, A>(o, p.so.dim, dO, p.sdo.dim, g.head_dim_v);
  finish_row(p, n, int64_t(blockIdx.x) * blockDim.x + threadIdx.x, float(d), 0, 1);
}

// G threads per row, each reading 8 columns of out and dout per 16-byte vector.
template <class T, int G>
__global__ void __launch_bounds__(kVecThreads) delta_vec_kernel(BackwardParams p, Nest n) {
  const Geometry& g = p.g;
  const int64_t rows = g.batch * g.tokens * g.heads_q;
  const int64_t r = int64_t(blockIdx.x) * (kVecThreads / G) + threadIdx.x / G;
  const int lane = int(threadIdx.x % G);
  const bool valid = r < rows;
  float d = 0.f;
  if (valid) {
    const T* o = static_cast<const T*>(p.out) + rows::row_offset(g, p.so, n.out, g.heads_q, r);
    const T* dO = static_cast<const T*>(p.dout) + rows::row_offset(g, p.sdo, n.dout, g.heads_q, r);
    for (int64_t c = int64_t(lane) * kPer; c < g.head_dim_v; c += int64_t(G) * kPer) {
      float a[kPer], b[kPer];
      rows::unpack8<T>(__ldcs(reinterpret_cast<const uint4*>(o + c)), a);
      rows::unpack8<T>(__ldcs(reinterpret_cast<const uint4*>(dO + c)), b);
#pragma unroll
      for (int i = 0; i < kPer; ++i) d = fmaf(a[i], b[i], d);
    }
  }
#pragma unroll
  for (int off = G / 2; off > 0; off /= 2) d += __shfl_xor_sync(0xffffffffu, d, off);
  if (valid) finish_row(p, n, r, d, lane, G);
}

template <class T, int G>
void launch_vec(const BackwardParams& p, const Nest& n, int64_t rows, cudaStream_t s) {
  const int64_t per_block = kVecThreads / G;
  delta_vec_kernel<T, G><<<unsigned((rows + per_block - 1) / per_block), kVecThreads, 0, s>>>(p, n);
}

template <class T>
Status launch(const BackwardParams& p, cudaStream_t s) {
  const Geometry& g = p.g;
  const int64_t rows = g.batch * g.tokens * g.heads_q;
  Nest n;
  n.out = rows::rows_nest(g, p.so, g.heads_q);
  n.dout = rows::rows_nest(g, p.sdo, g.heads_q);
  n.lse = rows::rows_nest(g, p.slse, g.heads_q);
  n.dlse = p.dlse && rows::rows_nest(g, p.sdlse, g.heads_q);
  if constexpr (sizeof(T) == 2) {
    if (rows::rows_vectorize(p.out, g, p.so, g.head_dim_v, sizeof(T)) &&
        rows::rows_vectorize(p.dout, g, p.sdo, g.head_dim_v, sizeof(T))) {
      rows::with_threads_per_row(rows::threads_per_row(g.head_dim_v, kPer),
                                 [&](auto G) { launch_vec<T, decltype(G)::value>(p, n, rows, s); });
      return check_launch("backward delta");
    }
  }
  delta_kernel<T><<<unsigned((rows + kThreads - 1) / kThreads), kThreads, 0, s>>>(p, n);
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
