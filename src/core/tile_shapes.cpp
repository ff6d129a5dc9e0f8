// Layer: core. See tile_shapes.h.
#include "core/tile_shapes.h"

#include <vector>

#include "core/axes.h"
#include "core/tiles.h"

namespace nattn {
namespace {

// Sum over the owned tiles of one axis' dilation group of the walked tiles covering their
// union: key tiles over a query tile's windows, or query tiles over a key tile's inverse.
// Placed boxes (as the kernels' walk, cuda/common/tile_walk.h): own tiles cover the own side's
// box, and the union is clipped to the other box.
double axis_walked_tiles(const window::Axis& ax, const window::Boxes& b, bool placed, int64_t g, int q, int k,
                         TileRole role) {
  const int64_t Lg = window::group_length(ax, g);
  const bool queries_owned = role == TileRole::kQueriesOwned;
  const int own = queries_owned ? q : k;
  const int walk = queries_owned ? k : q;
  window::Range own_r{0, Lg}, walk_r{0, Lg};
  if (placed) {
    const window::Range qr = window::group_positions_in(ax, g, b.q_origin, b.q_origin + b.q_extent);
    const window::Range kr = window::group_positions_in(ax, g, b.k_origin, b.k_origin + b.k_extent);
    own_r = queries_owned ? qr : kr;
    walk_r = queries_owned ? kr : qr;
  }
  double total = 0;
  for (int64_t o0 = own_r.begin; o0 < own_r.end; o0 += own) {
    const window::Range r{o0, o0 + own < own_r.end ? o0 + own : own_r.end};
    const window::Range u =
        window::intersect(queries_owned ? tiles::key_union(r, Lg, ax.kernel, ax.stride, ax.causal)
                                        : tiles::query_union(r, Lg, ax.kernel, ax.stride, ax.causal),
                          walk_r);
    total += double((u.size() + walk - 1) / walk);
  }
  return total;
}

// All ways to write 2^log2n as a product of `rank` powers of two (unused axes get 1).
void splits(int rank, int log2n, std::vector<std::array<int, 3>>* out) {
  out->clear();
  if (rank == 1) {
    out->push_back({1 << log2n, 1, 1});
    return;
  }
  for (int a = 0; a <= log2n; ++a) {
    if (rank == 2) {
      out->push_back({1 << a, 1 << (log2n - a), 1});
      continue;
    }
    for (int b = 0; a + b <= log2n; ++b) out->push_back({1 << a, 1 << b, 1 << (log2n - a - b)});
  }
}

// Key tiles of axis a over all its dilation groups for query boxes of q and key boxes of k.
double axis_sum(const Problem& p, int a, int q, int k, TileRole role) {
  const window::Axis ax = axis(p, a);
  const bool placed = p.placed();
  double sum = 0;
  for (int64_t g = 0; g < ax.dilation; ++g) sum += axis_walked_tiles(ax, boxes(p, a), placed, g, q, k, role);
  return sum;
}

}  // namespace

int log2_ceil(int x) {
  int l = 0;
  while ((1 << l) < x) ++l;
  return l;
}

double count_key_tiles(const Problem& p, const std::array<int, 3>& q, const std::array<int, 3>& k, TileRole role) {
  double total = 1;
  for (int a = 0; a < p.rank; ++a) total *= axis_sum(p, a, q[a], k[a], role);
  return total;
}

TileShapes choose_tile_shapes(const Problem& p, int block_q, int block_k, TileRole role,
                              const std::array<int, 3>& max_box) {
  std::vector<std::array<int, 3>> qs, ks;
  splits(p.rank, log2_ceil(block_q), &qs);
  splits(p.rank, log2_ceil(block_k), &ks);
  // The count factorises per axis, so each axis' sum is computed once per (q, k) box length
  // rather than once per box pair: this runs on every forward call.
  const int lq = log2_ceil(block_q), lk = log2_ceil(block_k);
  std::vector<double> sums(size_t(3 * (lq + 1) * (lk + 1)), -1.0);
  auto cost = [&](const std::array<int, 3>& q, const std::array<int, 3>& k) {
    double total = 1;
    for (int a = 0; a < p.rank; ++a) {
      double& s = sums[size_t((a * (lq + 1) + log2_ceil(q[a])) * (lk + 1) + log2_ceil(k[a]))];
      if (s < 0) s = axis_sum(p, a, q[a], k[a], role);
      total *= s;
    }
    return total;
  };
  auto fits = [&](const std::array<int, 3>& q, const std::array<int, 3>& k) {
    for (int a = 0; a < p.rank; ++a)
      if (max_box[a] > 0 && (q[a] > max_box[a] || k[a] > max_box[a])) return false;
    return true;
  };
  // A box far longer than its side's axis only adds empty rows (owned) or empty columns
  // (walked): such shapes are a last resort. Ties in the tile count otherwise go to the first
  // split, which for rank 3 puts the whole box on axis 3: with that axis of extent 1, the sm90
  // tensor maps (which drop an axis of extent 1) could not load the box.
  auto longest = [&](int a, bool queries) {
    // The side's box (placed: the query or key box), at most ceil(X / d) positions per group.
    const int64_t x = queries ? p.extent[a] : p.key_extent(a);
    return p.placed() ? (x + p.window.dilation[a] - 1) / p.window.dilation[a] : window::group_length(axis(p, a), 0);
  };
  auto useful = [&](const std::array<int, 3>& q, const std::array<int, 3>& k) {
    for (int a = 0; a < p.rank; ++a) {
      if (q[a] > 1 && (q[a] / 2) >= longest(a, true)) return false;
      if (k[a] > 1 && (k[a] / 2) >= longest(a, false)) return false;
    }
    return true;
  };
  TileShapes best;
  best.key_tiles = -1;
  for (const bool need_useful : {true, false}) {
    for (const auto& q : qs)
      for (const auto& k : ks) {
        if (!fits(q, k) || (need_useful && !useful(q, k))) continue;
        const double c = cost(q, k);
        if (best.key_tiles < 0 || c < best.key_tiles) {
          best.q = q;
          best.k = k;
          best.key_tiles = c;
        }
      }
    if (best.key_tiles >= 0) return best;
  }
  return best;  // only caps can leave no shape: key_tiles = -1
}

}  // namespace nattn
