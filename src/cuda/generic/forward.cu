// Layer: cuda. Generic forward: one thread per (batch, query, head); two passes over the
// neighborhood (max/sum, then weighted values in chunks of output dims).
#include "cuda/check.h"
#include "cuda/common/element.cuh"
#include "cuda/generic/generic.h"

namespace nattn::cuda::generic {
namespace {

constexpr int kChunk = 32;

template <class T>
__global__ void forward_kernel(ForwardParams p) {
  using A = Acc<T>;
  const Geometry& g = p.g;
  GridItem it;
  if (!grid_item(g, g.heads_q, &it)) return;
  const int64_t b = it.b, h = it.h, hk = h / (g.heads_q / g.heads_kv);
  const int64_t* c = it.c;
  const T* q = row_of<const T>(g, p.q, p.sq, b, c, h);
  const T* kb = head_of<T>(p.k, p.sk, b, hk);
  const T* vb = head_of<T>(p.v, p.sv, b, hk);
  const T* ka = head_of<T>(p.ka, p.ska, b, hk);
  const T* va = head_of<T>(p.va, p.sva, b, hk);
  const Ranges rg = ranges_of(g, c, false);
  const A scale = A(g.scale_exact);  // (float: the same rounding as g.scale)

  // Calls f(score, value row, its element stride) for every attended key (additional values
  // have their own layout).
  auto for_keys = [&](auto&& f) {
    for_each(rg, [&](const int64_t* kc) {
      const T* k = kb + spatial(g, p.sk, kc);
      f(scale * dot<T, A>(q, p.sq.dim, k, p.sk.dim, g.head_dim), vb + spatial(g, p.sv, kc), p.sv.dim);
    });
    for (int64_t j = 0; j < g.num_additional; ++j)
      f(scale * dot<T, A>(q, p.sq.dim, ka + j * p.ska.axis[0], p.ska.dim, g.head_dim), va + j * p.sva.axis[0],
        p.sva.dim);
  };
  A m = -INFINITY;
  for_keys([&](A s, const T*, int64_t) { m = s > m ? s : m; });
  A sum = 0;
  for_keys([&](A s, const T*, int64_t) { sum += exp(s - m); });
  T* out = row_of<T>(g, p.out, p.so, b, c, h);
  for (int64_t c0 = 0; c0 < g.head_dim_v; c0 += kChunk) {
    A acc[kChunk];
    for (int i = 0; i < kChunk; ++i) acc[i] = 0;
    const int64_t n = g.head_dim_v - c0 < kChunk ? g.head_dim_v - c0 : kChunk;
    for_keys([&](A s, const T* v, int64_t vs) {
      const A w = exp(s - m) / sum;
      for (int i = 0; i < kChunk; ++i)
        if (i < n) acc[i] += w * A(to_acc(v[(c0 + i) * vs]));
    });
    for (int i = 0; i < kChunk; ++i)
      if (i < n) out[(c0 + i) * p.so.dim] = from_acc<T>(acc[i]);
  }
  if (p.lse) *row_of<float>(g, p.lse, p.slse, b, c, h) = float(m + log(sum));
}

}  // namespace

Status forward(const ForwardParams& p, DType dtype, void* stream) {
  const int64_t items = p.g.batch * p.g.tokens * p.g.heads_q;
  const int threads = 128;
  const int64_t blocks = (items + threads - 1) / threads;
  auto launch = [&](auto tag) {
    using T = decltype(tag);
    forward_kernel<T><<<unsigned(blocks), threads, 0, static_cast<cudaStream_t>(stream)>>>(p);
  };
  switch (dtype) {
    case DType::kFloat32: launch(float{}); break;
    case DType::kFloat64: launch(double{}); break;
    case DType::kFloat16: launch(__half{}); break;
    case DType::kBFloat16: launch(__nv_bfloat16{}); break;
  }
  return check_launch("generic forward");
}

}  // namespace nattn::cuda::generic
