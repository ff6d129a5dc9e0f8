// Layer: cpu. Typed element access to strided tensor views, and the grid geometry the
// reference kernels walk (token coordinates, neighborhoods as lists of axis indices).
#pragma once
#include <array>
#include <cstdint>
#include <vector>

#include "core/axes.h"
#include "core/dtype_convert.h"
#include "core/window.h"
#include "nattn/api.h"

namespace nattn::cpu {

// The storage type of each DType.
template <DType>
struct storage;
template <>
struct storage<DType::kFloat32> {
  using type = float;
};
template <>
struct storage<DType::kFloat64> {
  using type = double;
};
template <>
struct storage<DType::kFloat16> {
  using type = convert::half_bits;
};
template <>
struct storage<DType::kBFloat16> {
  using type = convert::bf16_bits;
};

// Calls f(T{}) with T the storage type of `dtype`.
template <class F>
auto with_storage(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32: return f(float{});
    case DType::kFloat64: return f(double{});
    case DType::kFloat16: return f(convert::half_bits{});
    case DType::kBFloat16: break;
  }
  return f(convert::bf16_bits{});
}

// A typed view: element (i0, .., i_{n-1}) at data[sum i_d * stride_d].
template <class T>
struct Strided {
  T* data = nullptr;
  const int64_t* stride = nullptr;
  explicit Strided(const TensorView& v) : data(static_cast<T*>(v.data)), stride(v.stride) {}
  Strided() = default;
  double load(int64_t off) const { return convert::to_double(data[off]); }
  void store(int64_t off, double x) const { data[off] = convert::from_double<T>(x); }
};

// Grid geometry of a problem: token coordinates of the query box and the key box, and
// per-axis neighborhoods (evaluated on the global grid, clipped to the key box; SPEC.md).
struct Grid {
  int rank;
  std::array<int64_t, 3> extent;      // query box
  std::array<int64_t, 3> key_extent;  // key box
  std::array<window::Axis, 3> axes;
  std::array<window::Boxes, 3> boxes;

  explicit Grid(const Problem& p) : rank(p.rank), extent(p.extent), key_extent{1, 1, 1} {
    for (int a = 0; a < 3; ++a) {
      axes[a] = a < rank ? axis(p, a) : window::Axis{};
      boxes[a] = a < rank ? nattn::boxes(p, a) : window::Boxes{};
      if (a < rank) key_extent[a] = p.key_extent(a);
    }
  }
  static int64_t count(int rank, const std::array<int64_t, 3>& e) {
    int64_t n = 1;
    for (int a = 0; a < rank; ++a) n *= e[a];
    return n;
  }
  int64_t tokens() const { return count(rank, extent); }
  int64_t key_tokens() const { return count(rank, key_extent); }
  static std::array<int64_t, 3> coords_in(int rank, const std::array<int64_t, 3>& e, int64_t token) {
    std::array<int64_t, 3> c{0, 0, 0};
    for (int a = rank - 1; a >= 0; --a) {
      c[a] = token % e[a];
      token /= e[a];
    }
    return c;
  }
  std::array<int64_t, 3> coords(int64_t token) const { return coords_in(rank, extent, token); }
  std::array<int64_t, 3> key_coords(int64_t token) const { return coords_in(rank, key_extent, token); }
  int64_t token_of(const std::array<int64_t, 3>& c) const {
    int64_t token = 0;
    for (int a = 0; a < rank; ++a) token = token * extent[a] + c[a];
    return token;
  }
  // Spatial element offset of coordinates for a tensor whose axis a has stride st[1 + a].
  int64_t spatial_offset(const std::array<int64_t, 3>& c, const int64_t* st) const {
    int64_t off = 0;
    for (int a = 0; a < rank; ++a) off += c[a] * st[1 + a];
    return off;
  }
  // Key-box indices of the keys that query coordinate i (query box) attends to along axis a.
  void keys_along(int a, int64_t i, std::vector<int64_t>* out) const {
    const window::Axis& ax = axes[a];
    int64_t g = 0;
    const window::Range r = window::placed_keys(ax, boxes[a], i, &g);
    out->clear();
    for (int64_t t = r.begin; t < r.end; ++t) out->push_back(window::index_of(ax, g, t) - boxes[a].k_origin);
  }
  // Query-box indices of the queries whose window holds key coordinate j (key box) along axis a.
  void queries_along(int a, int64_t j, std::vector<int64_t>* out) const {
    const window::Axis& ax = axes[a];
    int64_t g = 0;
    const window::Range r = window::placed_queries(ax, boxes[a], j, &g);
    out->clear();
    for (int64_t p = r.begin; p < r.end; ++p) out->push_back(window::index_of(ax, g, p) - boxes[a].q_origin);
  }
};

// Cartesian product of per-axis index lists, as spatial element offsets for two tensors
// (e.g. k and v, whose strides may differ).
inline void product_offsets(int rank, const std::vector<int64_t> (&lists)[3], const int64_t* st_a, const int64_t* st_b,
                            std::vector<int64_t>* off_a, std::vector<int64_t>* off_b) {
  off_a->clear();
  off_b->clear();
  const size_t n1 = rank > 1 ? lists[1].size() : 1, n2 = rank > 2 ? lists[2].size() : 1;
  for (int64_t i0 : lists[0])
    for (size_t j1 = 0; j1 < n1; ++j1)
      for (size_t j2 = 0; j2 < n2; ++j2) {
        int64_t oa = i0 * st_a[1], ob = i0 * st_b[1];
        if (rank > 1) {
          oa += lists[1][j1] * st_a[2];
          ob += lists[1][j1] * st_b[2];
        }
        if (rank > 2) {
          oa += lists[2][j2] * st_a[3];
          ob += lists[2][j2] * st_b[3];
        }
        off_a->push_back(oa);
        off_b->push_back(ob);
      }
}

}  // namespace nattn::cpu
