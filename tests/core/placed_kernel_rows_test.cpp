// Layer: tests. The sm80 kernels' row logic on placed boxes (SPEC.md "Placed boxes"), replayed
// on the host: for every CTA of a launch (tiling as the sm80 family plans it), the walk
// (cuda/common/tile_walk.h) driven as thread 0 drives it, and for every step the rows each
// kernel loads (inside its box or zero-filled), the tensor rows it reads, the pairs its masks
// keep (fragment/mask.cuh's per-axis window test on the partial axes, all pairs of full boxes)
// and the rows it stores, against SPEC.md's placed neighborhood. What is checked:
//  - forward / dQ: every stored query row's kept keys are exactly its attended keys, each kept
//    once, and no kept column is a zero-filled row (its weight exp(0 - max) would count);
//  - dK/dV: every stored key row's kept (query, key) pairs with an existing query are exactly
//    the attended ones, each kept once;
//  - every tensor row read or written lies inside its tensor, and every row of q/dq (k/dk) is
//    stored by exactly one CTA.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "core/tile_shapes.h"
#include "cuda/common/tile_walk.h"
#include "support/spec_mask.h"
#include "support/test_tensor.h"

namespace nattn_test {
namespace {

using nattn::cuda::Geometry;
using nattn::cuda::Step;
using nattn::cuda::TileWalk;
using nattn::cuda::Tiling;

// cuda::geometry_of (src/cuda/planner.cu) for the fields the walk reads.
Geometry geometry_of(const nattn::Problem& p) {
  Geometry g;
  g.rank = p.rank;
  for (int a = 0; a < 3; ++a) {
    const bool used = a < p.rank;
    g.extent[a] = used ? p.extent[a] : 1;
    g.kernel[a] = used ? p.window.kernel_size[a] : 1;
    g.stride[a] = used ? p.window.stride[a] : 1;
    g.dilation[a] = used ? p.window.dilation[a] : 1;
    g.causal[a] = used && p.window.is_causal[a];
    g.global[a] = used ? p.global_extent(a) : 1;
    g.query_origin[a] = used ? p.placement.query_origin[a] : 0;
    g.key_origin[a] = used ? p.placement.key_origin[a] : 0;
    g.key_extent[a] = used ? p.key_extent(a) : 1;
  }
  g.num_additional = p.num_additional;
  g.tokens = p.tokens();
  g.key_tokens = p.key_tokens();
  g.placed = p.placed();
  return g;
}

// cuda::make_tiling (src/cuda/families.cu).
Tiling make_tiling(const Geometry& g, const std::array<int, 3>& own, const std::array<int, 3>& walk, bool keys_owned) {
  Tiling t;
  t.neighborhood_ctas = 1;
  for (int a = 0; a < 3; ++a) {
    t.own_shift[a] = nattn::log2_ceil(own[a]);
    t.walk_shift[a] = nattn::log2_ceil(walk[a]);
    const int64_t x = keys_owned && g.placed ? g.key_extent[a] : g.extent[a];
    const int64_t longest = (x + g.dilation[a] - 1) / g.dilation[a];
    t.own_tiles[a] = (longest + own[a] - 1) / own[a];
    t.neighborhood_ctas *= t.own_tiles[a] * g.dilation[a];
  }
  return t;
}

// SPEC.md's placed neighborhood, per axis: local query i attends local key j.
bool attends_axis(const nattn::Problem& p, int a, int64_t i, int64_t j) {
  SpecAxis ax = spec_axis(p, a);
  return spec_attends(ax, p.global_extent(a), p.placement.query_origin[a] + i, p.placement.key_origin[a] + j);
}

struct Box3 {
  int64_t e[3] = {1, 1, 1};
  int64_t tokens() const { return e[0] * e[1] * e[2]; }
  bool inside(const int64_t (&c)[3]) const {
    for (int a = 0; a < 3; ++a)
      if (c[a] < 0 || c[a] >= e[a]) return false;
    return true;
  }
  int64_t token(const int64_t (&c)[3]) const { return (c[0] * e[1] + c[1]) * e[2] + c[2]; }
};

struct Replay {
  const nattn::Problem& p;
  Geometry g;
  Box3 qbox, kbox;
  std::vector<std::vector<char>> attended;  // [query token][key token]
  std::vector<char> has_keys;               // per query token (neighborhood keys or additional)

  explicit Replay(const nattn::Problem& p_) : p(p_), g(geometry_of(p_)) {
    for (int a = 0; a < p.rank; ++a) {
      qbox.e[a] = p.extent[a];
      kbox.e[a] = p.key_extent(a);
    }
    attended.assign(size_t(qbox.tokens()), std::vector<char>(size_t(kbox.tokens()), 0));
    has_keys.assign(size_t(qbox.tokens()), p.num_additional > 0);
    for (int64_t qt = 0; qt < qbox.tokens(); ++qt)
      for (int64_t kt = 0; kt < kbox.tokens(); ++kt) {
        int64_t qc[3], kc[3], q_rest = qt, k_rest = kt;
        for (int a = 2; a >= 0; --a) {
          qc[a] = q_rest % qbox.e[a];
          q_rest /= qbox.e[a];
          kc[a] = k_rest % kbox.e[a];
          k_rest /= kbox.e[a];
        }
        bool all = true;
        for (int a = 0; a < p.rank; ++a) all &= attends_axis(p, a, qc[a], kc[a]);
        attended[size_t(qt)][size_t(kt)] = all;
        if (all) has_keys[size_t(qt)] = 1;
      }
  }

  // Tensor coordinates of row r of a box starting at start (positions), with row offset off.
  static void coords(int r, const int (&shift)[3], const int (&start)[3], const int (&off)[3], const Geometry& g,
                     int64_t (&c)[3]) {
    int pos[3];
    nattn::cuda::box_position(r, shift, start, pos);
    for (int a = 0; a < 3; ++a) c[a] = int64_t(pos[a]) * g.dilation[a] + off[a];
  }

  // Forward or dQ (queries owned, key tiles walked): returns false after the first failure.
  bool queries_owned(const std::array<int, 3>& own, const std::array<int, 3>& walk, int bn) {
    const Tiling t = make_tiling(g, own, walk, false);
    const int bm = own[0] * own[1] * own[2];
    std::vector<int> stored(size_t(qbox.tokens()), 0);
    auto w = std::make_unique<TileWalk>();
    for (int64_t cta = 0; cta < t.neighborhood_ctas; ++cta) {
      w->init(g, t, cta, false, int((p.num_additional + bn - 1) / bn), bn);
      w->begin(1, p.num_additional);
      if (w->empty) continue;
      w->fill_tables(0, 1);
      int q_count[3];
      w->own_rows_left(w->own_start, q_count);
      // kept[r][key token]: the columns each own row keeps; extra[r]: additional keys kept.
      std::vector<std::vector<int>> kept(size_t(bm), std::vector<int>(size_t(kbox.tokens()), 0));
      std::vector<int64_t> extra(size_t(bm), 0);
      std::vector<char> zero_kept(size_t(bm), 0);
      for (Step st = w->advance(); st.valid; st = w->advance()) {
        if (st.tile >= w->nbr_tiles) {
          const int64_t j0 = int64_t(st.tile - w->nbr_tiles) * bn;
          for (int r = 0; r < bm; ++r)
            for (int c = 0; c < bn; ++c)
              if (st.full || j0 + c < p.num_additional) {
                if (j0 + c < p.num_additional)
                  ++extra[size_t(r)];
                else
                  zero_kept[size_t(r)] = 1;
              }
          continue;
        }
        int start[3], count[3];
        for (int a = 0; a < 3; ++a) start[a] = st.start[a];
        w->walk_rows_left(start, count);
        for (int c = 0; c < bn; ++c) {
          const bool inside = nattn::cuda::row_inside(c, t.walk_shift, count);
          int64_t kc[3];
          coords(c, t.walk_shift, start, w->walk_off, g, kc);
          if (inside && !kbox.inside(kc)) {
            ADD_FAILURE() << "CTA " << cta << " step " << st.tile << ": key row " << c << " is read at (" << kc[0]
                          << "," << kc[1] << "," << kc[2] << "), outside the key box";
            return false;
          }
          int kl[3];
          nattn::cuda::box_local(c, t.walk_shift, kl);
          for (int r = 0; r < bm; ++r) {
            int ql[3];
            nattn::cuda::box_local(r, t.own_shift, ql);
            bool keep = true;
            for (int a = 0; a < 3; ++a)
              if (!st.full && ((st.partial >> a) & 1))
                keep &= w->mask_window(a, w->own_start[a] + ql[a]).contains(start[a] + kl[a]);
            if (!keep) continue;
            if (inside)
              ++kept[size_t(r)][size_t(kbox.token(kc))];
            else
              zero_kept[size_t(r)] = 1;
          }
        }
      }
      for (int r = 0; r < bm; ++r) {
        if (!nattn::cuda::row_inside(r, t.own_shift, q_count)) continue;
        int64_t qc[3];
        coords(r, t.own_shift, w->own_start, w->own_off, g, qc);
        if (!qbox.inside(qc)) {
          ADD_FAILURE() << "CTA " << cta << ": own row " << r << " is stored at (" << qc[0] << "," << qc[1] << ","
                        << qc[2] << "), outside the query box";
          return false;
        }
        const int64_t qt = qbox.token(qc);
        ++stored[size_t(qt)];
        if (zero_kept[size_t(r)]) {
          ADD_FAILURE() << "CTA " << cta << ": query " << qt << " keeps a zero-filled key row";
          return false;
        }
        if (extra[size_t(r)] != p.num_additional) {
          ADD_FAILURE() << "CTA " << cta << ": query " << qt << " keeps " << extra[size_t(r)] << " additional keys of "
                        << p.num_additional;
          return false;
        }
        for (int64_t kt = 0; kt < kbox.tokens(); ++kt)
          if (kept[size_t(r)][size_t(kt)] != attended[size_t(qt)][size_t(kt)]) {
            ADD_FAILURE() << "CTA " << cta << ": query " << qt << " keeps key " << kt << " "
                          << kept[size_t(r)][size_t(kt)]
                          << " times; attended: " << int(attended[size_t(qt)][size_t(kt)]);
            return false;
          }
      }
    }
    for (int64_t qt = 0; qt < qbox.tokens(); ++qt)
      if (stored[size_t(qt)] != 1) {
        ADD_FAILURE() << "query " << qt << " is stored by " << stored[size_t(qt)] << " CTAs";
        return false;
      }
    return true;
  }

  // dK/dV (keys owned, query tiles walked; one query head).
  bool keys_owned(const std::array<int, 3>& own, const std::array<int, 3>& walk) {
    const Tiling t = make_tiling(g, own, walk, true);
    const int bm = own[0] * own[1] * own[2], bn = walk[0] * walk[1] * walk[2];
    std::vector<int> stored(size_t(kbox.tokens()), 0);
    auto w = std::make_unique<TileWalk>();
    for (int64_t cta = 0; cta < t.neighborhood_ctas; ++cta) {
      w->init(g, t, cta, true, 0, bn);
      w->begin(1, INT64_MAX);
      if (w->empty) continue;
      w->fill_tables(0, 1);
      int own_count[3];
      w->own_rows_left(w->own_start, own_count);
      std::vector<std::vector<int>> kept(size_t(bm), std::vector<int>(size_t(qbox.tokens()), 0));
      for (Step st = w->advance(); st.valid; st = w->advance()) {
        if (st.tile >= w->nbr_tiles) {
          ADD_FAILURE() << "a dK/dV walk of neighborhood keys has extra tiles";
          return false;
        }
        int start[3], count[3];
        for (int a = 0; a < 3; ++a) start[a] = st.start[a];
        w->walk_rows_left(start, count);
        for (int c = 0; c < bn; ++c) {
          // Rows outside the query box carry lse = +inf (P = 0); so do queries without keys.
          if (!nattn::cuda::row_inside(c, t.walk_shift, count)) continue;
          int64_t qc[3];
          coords(c, t.walk_shift, start, w->walk_off, g, qc);
          if (!qbox.inside(qc)) {
            ADD_FAILURE() << "CTA " << cta << " step " << st.tile << ": query row " << c << " is read at (" << qc[0]
                          << "," << qc[1] << "," << qc[2] << "), outside the query box";
            return false;
          }
          const int64_t qt = qbox.token(qc);
          if (!has_keys[size_t(qt)]) continue;
          int ql[3];
          nattn::cuda::box_local(c, t.walk_shift, ql);
          for (int r = 0; r < bm; ++r) {
            int kl[3];
            nattn::cuda::box_local(r, t.own_shift, kl);
            bool keep = true;
            for (int a = 0; a < 3; ++a)
              if (!st.full && ((st.partial >> a) & 1))
                keep &= w->mask_window(a, start[a] + ql[a]).contains(w->own_start[a] + kl[a]);
            if (keep) ++kept[size_t(r)][size_t(qt)];
          }
        }
      }
      for (int r = 0; r < bm; ++r) {
        if (!nattn::cuda::row_inside(r, t.own_shift, own_count)) continue;
        int64_t kc[3];
        coords(r, t.own_shift, w->own_start, w->own_off, g, kc);
        if (!kbox.inside(kc)) {
          ADD_FAILURE() << "CTA " << cta << ": own key row " << r << " is stored outside the key box";
          return false;
        }
        const int64_t kt = kbox.token(kc);
        ++stored[size_t(kt)];
        for (int64_t qt = 0; qt < qbox.tokens(); ++qt)
          if (kept[size_t(r)][size_t(qt)] != attended[size_t(qt)][size_t(kt)]) {
            ADD_FAILURE() << "CTA " << cta << ": key " << kt << " keeps query " << qt << " "
                          << kept[size_t(r)][size_t(qt)]
                          << " times; attended: " << int(attended[size_t(qt)][size_t(kt)]);
            return false;
          }
      }
    }
    for (int64_t kt = 0; kt < kbox.tokens(); ++kt)
      if (stored[size_t(kt)] != 1) {
        ADD_FAILURE() << "key " << kt << " is stored by " << stored[size_t(kt)] << " CTAs";
        return false;
      }
    return true;
  }
};

std::string describe(const nattn::Problem& p) {
  std::ostringstream o;
  o << "rank " << p.rank << ":";
  for (int a = 0; a < p.rank; ++a)
    o << " [G " << p.global_extent(a) << " X " << p.extent[a] << "@" << p.placement.query_origin[a] << " K "
      << p.key_extent(a) << "@" << p.placement.key_origin[a] << " k" << p.window.kernel_size[a] << " s"
      << p.window.stride[a] << " d" << p.window.dilation[a] << (p.window.is_causal[a] ? " causal" : "") << "]";
  o << " Na " << p.num_additional;
  return o.str();
}

// A random placed problem shaped like the Python tests' (small grids, any boxes).
nattn::Problem random_placed(Rng& rng) {
  nattn::Problem p;
  p.rank = int(rng.integer(1, 3));
  for (int a = 0; a < p.rank; ++a) {
    const int64_t G = rng.integer(4, p.rank == 1 ? 300 : p.rank == 2 ? 40 : 10);
    const int64_t d = rng.pick(std::vector<int64_t>{1, 1, 2, 3});
    const int64_t dd = d * 2 <= G ? d : 1;
    p.window.dilation[a] = dd;
    p.window.kernel_size[a] = rng.integer(2, G / dd);
    p.window.stride[a] = rng.integer(1, p.window.kernel_size[a]);
    p.window.is_causal[a] = rng.coin(0.3);
    p.placement.global_extent[a] = G;
    p.extent[a] = rng.integer(1, G);
    p.placement.key_extent[a] = rng.coin(0.3) ? G : rng.integer(1, G);
    p.placement.query_origin[a] = rng.integer(0, G - p.extent[a]);
    p.placement.key_origin[a] = rng.integer(0, G - p.placement.key_extent[a]);
  }
  p.num_additional = rng.coin(0.3) ? rng.integer(1, 70) : 0;
  return p;
}

class PlacedKernelRows : public SeededTest {};

// The sm80 block sizes (src/cuda/common/configs.h): forward 128 x 128 (hd 32/64), 128 x 64
// (hd128), 64 x 64 (hd256); dQ 128 x 64; dK/dV 64 walked queries x 128 owned keys (hd 32/64),
// 32 x 128 (hd128). Box shapes as the family chooses them (core/tile_shapes.h).
TEST_F(PlacedKernelRows, RandomPlacedProblemsMatchSpec) {
  const std::vector<std::array<int, 2>> blocks = {{128, 128}, {128, 64}, {64, 64}};
  const std::vector<std::array<int, 2>> dkdv_blocks = {{64, 128}, {32, 128}};
  for (int trial = 0; trial < 300 && !HasFailure(); ++trial) {
    const nattn::Problem p = random_placed(rng);
    if (!p.placed()) continue;
    SCOPED_TRACE("trial " + std::to_string(trial) + ": " + describe(p));
    Replay replay(p);
    const auto& b = rng.pick(blocks);
    const nattn::TileShapes fs = nattn::choose_tile_shapes(p, b[0], b[1]);
    SCOPED_TRACE("queries owned " + std::to_string(fs.q[0]) + "x" + std::to_string(fs.q[1]) + "x" +
                 std::to_string(fs.q[2]) + ", keys walked " + std::to_string(fs.k[0]) + "x" + std::to_string(fs.k[1]) +
                 "x" + std::to_string(fs.k[2]));
    if (!replay.queries_owned(fs.q, fs.k, b[1])) break;
    const auto& kb = rng.pick(dkdv_blocks);
    const nattn::TileShapes ks = nattn::choose_tile_shapes(p, kb[0], kb[1], nattn::TileRole::kKeysOwned);
    SCOPED_TRACE("keys owned " + std::to_string(ks.k[0]) + "x" + std::to_string(ks.k[1]) + "x" +
                 std::to_string(ks.k[2]) + ", queries walked " + std::to_string(ks.q[0]) + "x" +
                 std::to_string(ks.q[1]) + "x" + std::to_string(ks.q[2]));
    if (!replay.keys_owned(ks.k, ks.q)) break;
  }
}

}  // namespace
}  // namespace nattn_test
