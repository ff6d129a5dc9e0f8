// Layer: cuda. Generic forward: one thread per (batch, query, head); two passes over the
// neighborhood (max/sum, then weighted values in chunks of output dims).
#include "cuda/check.h"
#include "cuda/generic/element.cuh"
#include "cuda/generic/generic.h"

namespace nattn::cuda::generic {
namespace {

constexpr int kChunk = 32;

template <class T>
__global__ void forward_kernel(ForwardParams p) {
  using A = Acc<T>;
  const Geometry& g = p.g;
  const int64_t item = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (item >= g.batch * g.tokens * g.heads_q) return;
  const int64_t h = item % g.heads_q, token = (item / g.heads_q) % g.tokens, b = item / (g.heads_q * g.tokens);
  const int64_t hk = h / (g.heads_q / g.heads_kv);
  int64_t c[3];
  coords_of(g, token, c);
  const T* q = static_cast<const T*>(p.q) + b * p.sq.batch + spatial(g, p.sq, c) + h * p.sq.head;
  const T* kb = static_cast<const T*>(p.k) + b * p.sk.batch + hk * p.sk.head;
  const T* vb = static_cast<const T*>(p.v) + b * p.sv.batch + hk * p.sv.head;
  const T* ka = static_cast<const T*>(p.ka) + b * p.ska.batch + hk * p.ska.head;
  const T* va = static_cast<const T*>(p.va) + b * p.sva.batch + hk * p.sva.head;
  const Ranges rg = ranges_of(g, c, false);
  const A scale = A(g.scale);

  // Calls f(score, value pointer) for every attended key.
  auto for_keys = [&](auto&& f) {
    for_each(rg, [&](const int64_t* kc) {
      const T* k = kb + spatial(g, p.sk, kc);
      f(scale * dot<T, A>(q, p.sq.dim, k, p.sk.dim, g.head_dim), vb + spatial(g, p.sv, kc));
    });
    for (int64_t j = 0; j < g.num_additional; ++j)
      f(scale * dot<T, A>(q, p.sq.dim, ka + j * p.ska.axis[0], p.ska.dim, g.head_dim), va + j * p.sva.axis[0]);
  };
  A m = -INFINITY;
  for_keys([&](A s, const T*) { m = s > m ? s : m; });
  A sum = 0;
  for_keys([&](A s, const T*) { sum += exp(s - m); });
  T* out = static_cast<T*>(p.out) + b * p.so.batch + spatial(g, p.so, c) + h * p.so.head;
  for (int64_t c0 = 0; c0 < g.head_dim_v; c0 += kChunk) {
    A acc[kChunk];
    for (int i = 0; i < kChunk; ++i) acc[i] = 0;
    const int64_t n = g.head_dim_v - c0 < kChunk ? g.head_dim_v - c0 : kChunk;
    for_keys([&](A s, const T* v) {
      const A w = exp(s - m) / sum;
      for (int i = 0; i < kChunk; ++i) if (i < n) acc[i] += w * A(to_acc(v[(c0 + i) * p.sv.dim]));
    });
    for (int i = 0; i < kChunk; ++i) if (i < n) out[(c0 + i) * p.so.dim] = from_acc<T>(acc[i]);
  }
  if (p.lse) p.lse[b * p.slse.batch + spatial(g, p.slse, c) + h * p.slse.head] = float(m + log(sum));
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
