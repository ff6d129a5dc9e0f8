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

// Grid geometry of a problem: token coordinates and per-axis neighborhoods.
struct Grid {
  int rank;
  std::array<int64_t, 3> extent;
  std::array<window::Axis, 3> axes;

  explicit Grid(const Problem& p) : rank(p.rank), extent(p.extent) {
    for (int a = 0; a < 3; ++a) axes[a] = a < rank ? axis(p, a) : window::Axis{};
  }
  int64_t tokens() const {
    int64_t n = 1;
    for (int a = 0; a < rank; ++a) n *= extent[a];
    return n;
  }
  std::array<int64_t, 3> coords(int64_t token) const {
    std::array<int64_t, 3> c{0, 0, 0};
    for (int a = rank - 1; a >= 0; --a) {
      c[a] = token % extent[a];
      token /= extent[a];
    }
    return c;
  }
  // Spatial element offset of coordinates for a tensor whose axis a has stride st[1 + a].
  int64_t spatial_offset(const std::array<int64_t, 3>& c, const int64_t* st) const {
    int64_t off = 0;
    for (int a = 0; a < rank; ++a) off += c[a] * st[1 + a];
    return off;
  }
  // Axis indices of the keys that query coordinate i attends to along axis a.
  void keys_along(int a, int64_t i, std::vector<int64_t>* out) const {
    const window::Axis& ax = axes[a];
    const int64_t g = window::group_of(ax, i);
    const window::Range r = window::group_window(ax, g, window::position_of(ax, i));
    out->clear();
    for (int64_t t = r.begin; t < r.end; ++t) out->push_back(window::index_of(ax, g, t));
  }
  // Axis indices of the queries whose window holds key coordinate j along axis a.
  void queries_along(int a, int64_t j, std::vector<int64_t>* out) const {
    const window::Axis& ax = axes[a];
    const int64_t g = window::group_of(ax, j);
    const window::Range r = window::group_inverse(ax, g, window::position_of(ax, j));
    out->clear();
    for (int64_t p = r.begin; p < r.end; ++p) out->push_back(window::index_of(ax, g, p));
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
