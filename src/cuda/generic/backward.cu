// Layer: cuda. Generic backward, as gathers (deterministic, no atomics), the same formulas as
// the CPU reference: Delta_i = do_i.o_i - dlse_i, P = exp(scale q.k - lse),
// dS = P (do.v - Delta); dq = scale sum dS k; dk = scale sum dS q; dv = sum P do.
#include "cuda/check.h"
#include "cuda/generic/element.cuh"
#include "cuda/generic/generic.h"

namespace nattn::cuda::generic {
namespace {

constexpr int kChunk = 32;

template <class T>
struct Bwd {
  using A = Acc<T>;
  const BackwardParams& p;
  const Geometry& g;
  __device__ explicit Bwd(const BackwardParams& p_) : p(p_), g(p_.g) {}

  template <class X> __device__ const X* at(const void* base, const Strides& s, int64_t b, const int64_t* c, int64_t h) const {
    return static_cast<const X*>(base) + b * s.batch + spatial(g, s, c) + h * s.head;
  }
  __device__ int64_t token_of(const int64_t* c) const {
    int64_t t = 0;
    for (int a = 0; a < g.rank; ++a) t = t * g.extent[a] + c[a];
    return t;
  }
  // P and dS of query (b, c, h) against key row k / value row v.
  __device__ void p_ds(int64_t b, const int64_t* c, int64_t h, const T* k, int64_t ks, const T* v, int64_t vs,
                       A* prob, A* ds) const {
    const T* q = at<T>(p.q, p.sq, b, c, h);
    const T* dO = at<T>(p.dout, p.sdo, b, c, h);
    const A lse = A(*at<float>(p.lse, p.slse, b, c, h));
    const A s = A(g.scale) * dot<T, A>(q, p.sq.dim, k, ks, g.head_dim);
    *prob = exp(s - lse);
    const A dp = dot<T, A>(dO, p.sdo.dim, v, vs, g.head_dim_v);
    *ds = *prob * (dp - A(p.delta[(b * g.tokens + token_of(c)) * g.heads_q + h]));
  }
};

template <class T>
__global__ void delta_kernel(BackwardParams p) {
  using A = Acc<T>;
  const Geometry& g = p.g;
  const int64_t item = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (item >= g.batch * g.tokens * g.heads_q) return;
  const int64_t h = item % g.heads_q, token = (item / g.heads_q) % g.tokens, b = item / (g.heads_q * g.tokens);
  int64_t c[3];
  coords_of(g, token, c);
  const T* o = static_cast<const T*>(p.out) + b * p.so.batch + spatial(g, p.so, c) + h * p.so.head;
  const T* dO = static_cast<const T*>(p.dout) + b * p.sdo.batch + spatial(g, p.sdo, c) + h * p.sdo.head;
  A d = dot<T, A>(o, p.so.dim, dO, p.sdo.dim, g.head_dim_v);
  if (p.dlse) d -= A(p.dlse[b * p.sdlse.batch + spatial(g, p.sdlse, c) + h * p.sdlse.head]);
  p.delta[item] = float(d);
}

template <class T>
__global__ void dq_kernel(BackwardParams p) {
  using A = Acc<T>;
  const Bwd<T> w(p);
  const Geometry& g = p.g;
  const int64_t item = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (item >= g.batch * g.tokens * g.heads_q) return;
  const int64_t h = item % g.heads_q, token = (item / g.heads_q) % g.tokens, b = item / (g.heads_q * g.tokens);
  const int64_t hk = h / (g.heads_q / g.heads_kv);
  int64_t c[3];
  coords_of(g, token, c);
  const Ranges rg = ranges_of(g, c, false);
  T* dq = static_cast<T*>(p.dq) + b * p.sdq.batch + spatial(g, p.sdq, c) + h * p.sdq.head;
  const T* kb = static_cast<const T*>(p.k) + b * p.sk.batch + hk * p.sk.head;
  const T* vb = static_cast<const T*>(p.v) + b * p.sv.batch + hk * p.sv.head;
  const T* ka = static_cast<const T*>(p.ka) + b * p.ska.batch + hk * p.ska.head;
  const T* va = static_cast<const T*>(p.va) + b * p.sva.batch + hk * p.sva.head;
  for (int64_t c0 = 0; c0 < g.head_dim; c0 += kChunk) {
    A acc[kChunk];
    for (int i = 0; i < kChunk; ++i) acc[i] = 0;
    const int64_t n = g.head_dim - c0 < kChunk ? g.head_dim - c0 : kChunk;
    auto add = [&](const T* k, int64_t ks, const T* v, int64_t vs) {
      A prob, ds;
      w.p_ds(b, c, h, k, ks, v, vs, &prob, &ds);
      for (int i = 0; i < kChunk; ++i) if (i < n) acc[i] += ds * A(to_acc(k[(c0 + i) * ks]));
    };
    for_each(rg, [&](const int64_t* kc) { add(kb + spatial(g, p.sk, kc), p.sk.dim, vb + spatial(g, p.sv, kc), p.sv.dim); });
    for (int64_t j = 0; j < g.num_additional; ++j) add(ka + j * p.ska.axis[0], p.ska.dim, va + j * p.sva.axis[0], p.sva.dim);
    for (int i = 0; i < kChunk; ++i) if (i < n) dq[(c0 + i) * p.sdq.dim] = from_acc<T>(A(g.scale) * acc[i]);
  }
}

// dk/dv of one key row from the queries `for_queries` enumerates (all query heads of hk).
template <class T, class ForQueries>
__device__ void key_grads(const Bwd<T>& w, int64_t b, int64_t hk, const T* k, int64_t ks, const T* v, int64_t vs,
                          T* dk, int64_t dks, T* dv, int64_t dvs, ForQueries&& for_queries) {
  using A = Acc<T>;
  const Geometry& g = w.g;
  const int64_t group = g.heads_q / g.heads_kv;
  const int64_t dims = g.head_dim > g.head_dim_v ? g.head_dim : g.head_dim_v;
  for (int64_t c0 = 0; c0 < dims; c0 += kChunk) {
    A gk[kChunk], gv[kChunk];
    for (int i = 0; i < kChunk; ++i) gk[i] = gv[i] = 0;
    for_queries([&](const int64_t* c) {
      for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
        A prob, ds;
        w.p_ds(b, c, h, k, ks, v, vs, &prob, &ds);
        const T* q = w.template at<T>(w.p.q, w.p.sq, b, c, h);
        const T* dO = w.template at<T>(w.p.dout, w.p.sdo, b, c, h);
        for (int i = 0; i < kChunk; ++i) {
          if (c0 + i < g.head_dim) gk[i] += ds * A(to_acc(q[(c0 + i) * w.p.sq.dim]));
          if (c0 + i < g.head_dim_v) gv[i] += prob * A(to_acc(dO[(c0 + i) * w.p.sdo.dim]));
        }
      }
    });
    for (int i = 0; i < kChunk; ++i) {
      if (c0 + i < g.head_dim) dk[(c0 + i) * dks] = from_acc<T>(A(g.scale) * gk[i]);
      if (c0 + i < g.head_dim_v) dv[(c0 + i) * dvs] = from_acc<T>(gv[i]);
    }
  }
}

template <class T>
__global__ void dkdv_kernel(BackwardParams p) {
  const Bwd<T> w(p);
  const Geometry& g = p.g;
  const int64_t item = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (item >= g.batch * g.tokens * g.heads_kv) return;
  const int64_t hk = item % g.heads_kv, token = (item / g.heads_kv) % g.tokens, b = item / (g.heads_kv * g.tokens);
  int64_t c[3];
  coords_of(g, token, c);
  const Ranges rg = ranges_of(g, c, true);
  key_grads<T>(w, b, hk, w.template at<T>(p.k, p.sk, b, c, hk), p.sk.dim, w.template at<T>(p.v, p.sv, b, c, hk), p.sv.dim,
               const_cast<T*>(w.template at<T>(p.dk, p.sdk, b, c, hk)), p.sdk.dim,
               const_cast<T*>(w.template at<T>(p.dv, p.sdv, b, c, hk)), p.sdv.dim,
               [&](auto&& f) { for_each(rg, f); });
}

template <class T>
__global__ void additional_kernel(BackwardParams p) {
  const Bwd<T> w(p);
  const Geometry& g = p.g;
  const int64_t item = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (item >= g.batch * g.num_additional * g.heads_kv) return;
  const int64_t hk = item % g.heads_kv, j = (item / g.heads_kv) % g.num_additional, b = item / (g.heads_kv * g.num_additional);
  auto row = [&](const void* base, const Strides& s) {
    return const_cast<T*>(static_cast<const T*>(base) + b * s.batch + j * s.axis[0] + hk * s.head);
  };
  key_grads<T>(w, b, hk, row(p.ka, p.ska), p.ska.dim, row(p.va, p.sva), p.sva.dim, row(p.dka, p.sdka), p.sdka.dim,
               row(p.dva, p.sdva), p.sdva.dim, [&](auto&& f) {
                 int64_t c[3];
                 for (int64_t t = 0; t < g.tokens; ++t) { coords_of(g, t, c); f(c); }
               });
}

template <class T>
Status run(const BackwardParams& p, cudaStream_t s) {
  const int threads = 128;
  auto blocks = [&](int64_t n) { return unsigned((n + threads - 1) / threads); };
  const int64_t nq = p.g.batch * p.g.tokens * p.g.heads_q;
  delta_kernel<T><<<blocks(nq), threads, 0, s>>>(p);
  NATTN_RETURN_IF_ERROR(check_launch("generic backward delta"));
  dq_kernel<T><<<blocks(nq), threads, 0, s>>>(p);
  NATTN_RETURN_IF_ERROR(check_launch("generic backward dq"));
  dkdv_kernel<T><<<blocks(p.g.batch * p.g.tokens * p.g.heads_kv), threads, 0, s>>>(p);
  NATTN_RETURN_IF_ERROR(check_launch("generic backward dk/dv"));
  if (p.g.num_additional > 0) {
    additional_kernel<T><<<blocks(p.g.batch * p.g.num_additional * p.g.heads_kv), threads, 0, s>>>(p);
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
