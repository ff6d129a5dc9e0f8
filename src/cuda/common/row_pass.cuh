// Layer: cuda/common. Pieces of the backward's memory-bound row passes (the Delta pre-pass and
// the fast mode's dQ conversion): which rows can be read as 16-byte vectors, and where row r of
// a flat [B, N, H] range sits in a tensor of any stride.
//
// Why: those passes move 4-8 bytes per query-row column, as many as a whole forward reads; one
// thread per row (each reading its own 256-byte row) or scalar 2-byte stores ran them at a
// fifth of DRAM bandwidth (ncu, 2026-12-05: 1d-32k's Delta pass 950 us against a 180 us floor),
// so the vector paths give each row G threads of 8 columns and shuffle-reduce across them.
#pragma once
#include <cstdint>
#include <type_traits>

#include "cuda/common/element.cuh"
#include "cuda/common/params.h"

namespace nattn::cuda::rows {

// Whether the rows (b, token, h) of a [B, X.., H, *] tensor over the query box sit at
// b * s.batch + (token * H + h) * s.head, so a row's offset takes one division.
inline bool rows_nest(const Geometry& g, const Strides& s, int64_t heads) {
  int64_t inner = heads * s.head;
  for (int a = g.rank - 1; a >= 0; --a) {
    if (g.extent[a] > 1 && s.axis[a] != inner) return false;
    inner *= g.extent[a];
  }
  return true;
}

// Whether `cols` columns of every row of an element-size `elem` tensor load and store as
// 16-byte vectors: unit column stride, a 16-byte aligned base and row strides in whole vectors.
inline bool rows_vectorize(const void* base, const Geometry& g, const Strides& s, int64_t cols, int elem) {
  const int64_t v = 16 / elem;
  if (s.dim != 1 || cols % v != 0 || reinterpret_cast<uintptr_t>(base) % 16 != 0) return false;
  if (s.batch % v != 0 || s.head % v != 0) return false;
  for (int a = 0; a < g.rank; ++a)
    if (s.axis[a] % v != 0) return false;
  return true;
}

// Threads per row for a pass over `cols` columns in vectors of `per` columns: the power of two
// that covers the row in one vector each, at most a warp.
inline int threads_per_row(int64_t cols, int per) {
  int t = 1;
  while (t < 32 && t * per < cols) t *= 2;
  return t;
}

// Calls f(std::integral_constant<int, G>{}) for g = threads_per_row's answer (a kernel
// template per power of two).
template <class F>
inline void with_threads_per_row(int g, F&& f) {
  switch (g) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 8: f(std::integral_constant<int, 8>{}); break;
    case 16: f(std::integral_constant<int, 16>{}); break;
    default: f(std::integral_constant<int, 32>{}); break;
  }
}

// Element offset of row r of the flat [B, N (query box), heads] range in a tensor with strides
// s; `nest`: rows_nest(g, s, heads).
__device__ __forceinline__ int64_t row_offset(const Geometry& g, const Strides& s, bool nest, int64_t heads,
                                              int64_t r) {
  const int64_t per_batch = g.tokens * heads;
  const int64_t b = r / per_batch, within = r - b * per_batch;
  if (nest) return b * s.batch + within * s.head;
  int64_t token = within / heads;
  int64_t off = b * s.batch + (within - token * heads) * s.head;
#pragma unroll
  for (int a = 2; a >= 0; --a) {  // unrolled: constant indices keep the coordinates in registers
    if (a >= g.rank) continue;
    const int64_t next = token / g.extent[a];
    off += (token - next * g.extent[a]) * s.axis[a];
    token = next;
  }
  return off;
}

// Eight 16-bit elements of one 16-byte vector as floats, and back.
template <class T>
__device__ __forceinline__ void unpack8(const uint4& v, float f[8]) {
  const T* e = reinterpret_cast<const T*>(&v);
#pragma unroll
  for (int i = 0; i < 8; ++i) f[i] = generic::to_acc(e[i]);
}
template <class T>
__device__ __forceinline__ uint4 pack8(const float f[8]) {
  uint4 v;
  T* e = reinterpret_cast<T*>(&v);
#pragma unroll
  for (int i = 0; i < 8; ++i) e[i] = generic::from_acc<T>(f[i]);
  return v;
}

}  // namespace nattn::cuda::rows
