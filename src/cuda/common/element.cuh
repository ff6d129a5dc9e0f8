// Layer: cuda. Element conversions and neighborhood walks shared by the generic (SIMT)
// kernels: the exact path for every dtype, head dim and stride.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "core/window.h"
#include "cuda/common/params.h"

namespace nattn::cuda::generic {

template <class T>
__device__ __forceinline__ float to_acc(T x);
template <>
__device__ __forceinline__ float to_acc(float x) {
  return x;
}
template <>
__device__ __forceinline__ float to_acc(__half x) {
  return __half2float(x);
}
template <>
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
__device__ __forceinline__ double to_acc(double x) { return x; }

template <class T, class A>
__device__ __forceinline__ T from_acc(A x);
template <>
__device__ __forceinline__ float from_acc<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_acc<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ double from_acc<double>(double x) {
  return x;
}

// Accumulate fp64 in double, everything else in float.
template <class T>
using Acc = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Coordinates of a token of a box with extents e (row-major).
__device__ __forceinline__ void coords_in(const Geometry& g, const int64_t* e, int64_t token, int64_t c[3]) {
  c[0] = c[1] = c[2] = 0;
  for (int a = g.rank - 1; a >= 0; --a) {
    c[a] = token % e[a];
    token /= e[a];
  }
}

// Coordinates of a query token (the query box).
__device__ __forceinline__ void coords_of(const Geometry& g, int64_t token, int64_t c[3]) {
  coords_in(g, g.extent, token, c);
}

__device__ __forceinline__ int64_t spatial(const Geometry& g, const Strides& s, const int64_t c[3]) {
  int64_t off = 0;
  for (int a = 0; a < g.rank; ++a) off += c[a] * s.axis[a];
  return off;
}

// Row (b, coords, h) of a [B, X.., H, *] tensor.
template <class X>
__device__ __forceinline__ X* row_of(const Geometry& g, const void* base, const Strides& s, int64_t b,
                                     const int64_t c[3], int64_t h) {
  return static_cast<X*>(const_cast<void*>(base)) + b * s.batch + spatial(g, s, c) + h * s.head;
}

// Start of head h of batch b (key rows of a kv head are then offset by spatial() or, for
// additional [B, Na, H, *] tensors, by j * s.axis[0]).
template <class X>
__device__ __forceinline__ const X* head_of(const void* base, const Strides& s, int64_t b, int64_t h) {
  return static_cast<const X*>(base) + b * s.batch + h * s.head;
}

// One thread's item of a flat [B, N, heads] range; false past the end.
struct GridItem {
  int64_t b, token, h;
  int64_t c[3];
};
// keys: items of the key box (dK/dV), else of the query box.
__device__ __forceinline__ bool grid_item(const Geometry& g, int64_t heads, GridItem* it, bool keys = false) {
  const int64_t item = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t tokens = keys ? g.key_tokens : g.tokens;
  if (item >= g.batch * tokens * heads) return false;
  it->h = item % heads;
  it->token = (item / heads) % tokens;
  it->b = item / (heads * tokens);
  coords_in(g, keys ? g.key_extent : g.extent, it->token, it->c);
  return true;
}

// Per-axis ranges (group positions + group) of the keys a query sees, or of the queries that
// see a key (inverse = true), on the global axis and clipped to the other box (SPEC.md
// "Placed boxes"); origin: the other box's origin, subtracted to give its local coordinates.
struct Ranges {
  window::Range r[3];
  int64_t group[3];
  int64_t dil[3];
  int64_t origin[3];
};

__device__ __forceinline__ Ranges ranges_of(const Geometry& g, const int64_t c[3], bool inverse) {
  Ranges out;
  for (int a = 0; a < 3; ++a) {
    out.r[a] = {0, 1};
    out.group[a] = 0;
    out.dil[a] = 1;
    out.origin[a] = 0;
  }
  for (int a = 0; a < g.rank; ++a) {
    const window::Axis ax{g.global[a], g.kernel[a], g.stride[a], g.dilation[a], g.causal[a]};
    const window::Boxes boxes{g.query_origin[a], g.extent[a], g.key_origin[a], g.key_extent[a]};
    out.r[a] = inverse ? window::placed_queries(ax, boxes, c[a], &out.group[a])
                       : window::placed_keys(ax, boxes, c[a], &out.group[a]);
    out.dil[a] = ax.dilation;
    out.origin[a] = inverse ? g.query_origin[a] : g.key_origin[a];
  }
  return out;
}

// Calls f(coords) for every token of the product of the ranges (local coordinates of its box).
template <class F>
__device__ __forceinline__ void for_each(const Ranges& rg, F&& f) {
  int64_t c[3];
  for (int64_t p0 = rg.r[0].begin; p0 < rg.r[0].end; ++p0)
    for (int64_t p1 = rg.r[1].begin; p1 < rg.r[1].end; ++p1)
      for (int64_t p2 = rg.r[2].begin; p2 < rg.r[2].end; ++p2) {
        c[0] = p0 * rg.dil[0] + rg.group[0] - rg.origin[0];
        c[1] = p1 * rg.dil[1] + rg.group[1] - rg.origin[1];
        c[2] = p2 * rg.dil[2] + rg.group[2] - rg.origin[2];
        f(c);
      }
}

template <class T, class A>
__device__ __forceinline__ A dot(const T* x, int64_t xs, const T* y, int64_t ys, int64_t n) {
  A s = 0;
  for (int64_t d = 0; d < n; ++d) s += A(to_acc(x[d * xs])) * A(to_acc(y[d * ys]));
  return s;
}

}  // namespace nattn::cuda::generic
