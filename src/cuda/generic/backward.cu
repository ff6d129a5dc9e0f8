// Layer: cuda/generic. Generic backward, as gathers (deterministic, no atomics), the same formulas as
// the CPU reference: Delta_i = do_i.o_i - dlse_i, P = exp(scale q.k - lse),
// dS = P (do.v - Delta) (Delta from the common pre-pass, cuda/common/delta.h); dq = scale sum dS k; dk = scale sum dS
// q; dv = sum P do.
#include "cuda/check.h"
#include "cuda/common/element.cuh"
#include "cuda/generic/generic.h"

namespace nattn::cuda::generic {
namespace {

constexpr int kChunk = 32;

// What the gradients need of one query row (b, coords, h), read once per row.
template <class T>
struct QueryRow {
  const T* q;
  const T* dout;
  Acc<T> lse, delta;
};

template <class T>
struct Bwd {
  using A = Acc<T>;
  const BackwardParams& p;
  const Geometry& g;
  __device__ explicit Bwd(const BackwardParams& p_) : p(p_), g(p_.g) {}

  __device__ QueryRow<T> query_row(int64_t b, const int64_t* c, int64_t token, int64_t h) const {
    return {row_of<const T>(g, p.q, p.sq, b, c, h), row_of<const T>(g, p.dout, p.sdo, b, c, h),
            A(*row_of<const float>(g, p.lse, p.slse, b, c, h)), A(row_of<const float>(g, p.rows, p.srows, b, c, h)[1])};
  }
  // P and dS of a query row against key row k / value row v.
  __device__ void p_ds(const QueryRow<T>& r, const T* k, int64_t ks, const T* v, int64_t vs, A* prob, A* ds) const {
    *prob = exp(A(g.scale_exact) * dot<T, A>(r.q, p.sq.dim, k, ks, g.head_dim) - r.lse);
    *ds = *prob * (dot<T, A>(r.dout, p.sdo.dim, v, vs, g.head_dim_v) - r.delta);
  }
};

template <class T>
__global__ void dq_kernel(BackwardParams p) {
  using A = Acc<T>;
  const Bwd<T> w(p);
  const Geometry& g = p.g;
  GridItem it;
  if (!grid_item(g, g.heads_q, &it)) return;
  const int64_t b = it.b, h = it.h, hk = h / (g.heads_q / g.heads_kv);
  const QueryRow<T> row = w.query_row(b, it.c, it.token, h);
  const Ranges rg = ranges_of(g, it.c, false);
  T* dq = row_of<T>(g, p.dq, p.sdq, b, it.c, h);
  const T* kb = head_of<T>(p.k, p.sk, b, hk);
  const T* vb = head_of<T>(p.v, p.sv, b, hk);
  const T* ka = head_of<T>(p.ka, p.ska, b, hk);
  const T* va = head_of<T>(p.va, p.sva, b, hk);
  for (int64_t c0 = 0; c0 < g.head_dim; c0 += kChunk) {
    A acc[kChunk];
    for (int i = 0; i < kChunk; ++i) acc[i] = 0;
    const int64_t n = g.head_dim - c0 < kChunk ? g.head_dim - c0 : kChunk;
    auto add = [&](const T* k, int64_t ks, const T* v, int64_t vs) {
      A prob, ds;
      w.p_ds(row, k, ks, v, vs, &prob, &ds);
      for (int i = 0; i < kChunk; ++i)
        if (i < n) acc[i] += ds * A(to_acc(k[(c0 + i) * ks]));
    };
    for_each(rg,
             [&](const int64_t* kc) { add(kb + spatial(g, p.sk, kc), p.sk.dim, vb + spatial(g, p.sv, kc), p.sv.dim); });
    for (int64_t j = 0; j < g.num_additional; ++j)
      add(ka + j * p.ska.axis[0], p.ska.dim, va + j * p.sva.axis[0], p.sva.dim);
    for (int i = 0; i < kChunk; ++i)
      if (i < n) dq[(c0 + i) * p.sdq.dim] = from_acc<T>(A(g.scale_exact) * acc[i]);
  }
}

// dk/dv of one key row from the queries `for_queries` enumerates as (coords, token), over all
// query heads of hk.
template <class T, class ForQueries>
__device__ void key_grads(const Bwd<T>& w, int64_t b, int64_t hk, const T* k, int64_t ks, const T* v, int64_t vs, T* dk,
                          int64_t dks, T* dv, int64_t dvs, ForQueries&& for_queries) {
  using A = Acc<T>;
  const Geometry& g = w.g;
  const int64_t group = g.heads_q / g.heads_kv;
  const int64_t dims = g.head_dim > g.head_dim_v ? g.head_dim : g.head_dim_v;
  for (int64_t c0 = 0; c0 < dims; c0 += kChunk) {
    A gk[kChunk], gv[kChunk];
    for (int i = 0; i < kChunk; ++i) gk[i] = gv[i] = 0;
    for_queries([&](const int64_t* c, int64_t token) {
      for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
        const QueryRow<T> row = w.query_row(b, c, token, h);
        A prob, ds;
        w.p_ds(row, k, ks, v, vs, &prob, &ds);
        for (int i = 0; i < kChunk; ++i) {
          if (c0 + i < g.head_dim) gk[i] += ds * A(to_acc(row.q[(c0 + i) * w.p.sq.dim]));
          if (c0 + i < g.head_dim_v) gv[i] += prob * A(to_acc(row.dout[(c0 + i) * w.p.sdo.dim]));
        }
      }
    });
    for (int i = 0; i < kChunk; ++i) {
      if (c0 + i < g.head_dim) dk[(c0 + i) * dks] = from_acc<T>(A(g.scale_exact) * gk[i]);
      if (c0 + i < g.head_dim_v) dv[(c0 + i) * dvs] = from_acc<T>(gv[i]);
    }
  }
}

template <class T>
__global__ void dkdv_kernel(BackwardParams p) {
  const Bwd<T> w(p);
  const Geometry& g = p.g;
  GridItem it;
  if (!grid_item(g, g.heads_kv, &it, true)) return;
  const int64_t b = it.b, hk = it.h;
  const Ranges rg = ranges_of(g, it.c, true);
  key_grads<T>(w, b, hk, row_of<const T>(g, p.k, p.sk, b, it.c, hk), p.sk.dim,
               row_of<const T>(g, p.v, p.sv, b, it.c, hk), p.sv.dim, row_of<T>(g, p.dk, p.sdk, b, it.c, hk), p.sdk.dim,
               row_of<T>(g, p.dv, p.sdv, b, it.c, hk), p.sdv.dim, [&](auto&& f) {
                 for_each(rg, [&](const int64_t* c) {
                   int64_t token = 0;
                   for (int a = 0; a < g.rank; ++a) token = token * g.extent[a] + c[a];
                   f(c, token);
                 });
               });
}

template <class T>
__global__ void additional_kernel(BackwardParams p) {
  const Bwd<T> w(p);
  const Geometry& g = p.g;
  const int64_t item = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (item >= g.batch * g.num_additional * g.heads_kv) return;
  const int64_t hk = item % g.heads_kv, j = (item / g.heads_kv) % g.num_additional,
                b = item / (g.heads_kv * g.num_additional);
  auto row = [&](const void* base, const Strides& s) {
    return const_cast<T*>(head_of<T>(base, s, b, hk) + j * s.axis[0]);
  };
  key_grads<T>(w, b, hk, row(p.ka, p.ska), p.ska.dim, row(p.va, p.sva), p.sva.dim, row(p.dka, p.sdka), p.sdka.dim,
               row(p.dva, p.sdva), p.sdva.dim, [&](auto&& f) {
                 int64_t c[3];
                 for (int64_t t = 0; t < g.tokens; ++t) {
                   coords_of(g, t, c);
                   f(c, t);
                 }
               });
}

constexpr int kThreads = 128;
unsigned blocks_for(int64_t n) { return unsigned((n + kThreads - 1) / kThreads); }

template <class T>
Status run(const BackwardParams& p, cudaStream_t s) {
  const int64_t nq = p.g.batch * p.g.tokens * p.g.heads_q;
  dq_kernel<T><<<blocks_for(nq), kThreads, 0, s>>>(p);
  NATTN_RETURN_IF_ERROR(check_launch("generic backward dq"));
  dkdv_kernel<T><<<blocks_for(p.g.batch * p.g.key_tokens * p.g.heads_kv), kThreads, 0, s>>>(p);
  NATTN_RETURN_IF_ERROR(check_launch("generic backward dk/dv"));
  if (p.g.num_additional > 0) {
    additional_kernel<T><<<blocks_for(p.g.batch * p.g.num_additional * p.g.heads_kv), kThreads, 0, s>>>(p);
    NATTN_RETURN_IF_ERROR(check_launch("generic backward additional dk/dv"));
  }
  return Status::Ok();
}

}  // namespace

Status backward(const BackwardParams& p, DType dtype, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::kFloat32: return run<float>(p, s);
    case DType::kFloat64: return run<double>(p, s);
    case DType::kFloat16: return run<__half>(p, s);
    case DType::kBFloat16: return run<__nv_bfloat16>(p, s);
  }
  return Status::Invalid("dtype is invalid");
}

}  // namespace nattn::cuda::generic
