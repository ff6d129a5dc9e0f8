// Layer: tests. Tile-shape choice of fused kernels: the factorised key-tile count against a
// brute-force count built from SPEC.md's mask.
#include "core/tile_shapes.h"

#include <gtest/gtest.h>

#include <random>

#include "support/problems.h"
#include "support/spec_mask.h"

namespace {

using nattn_test::spec_attends;
using nattn_test::spec_axis;

// Per axis, brute force over SPEC.md: for each dilation group and owned box of `own`
// positions (queries, or keys when keys_fixed), the positions on the other side that any of
// them meets (keys attended, or queries attending), covered by boxes of `walk` positions from
// the first one.
double brute_axis(const nattn::Problem& p, int a, int own, int walk, bool keys_fixed) {
  const nattn_test::SpecAxis ax = spec_axis(p, a);
  const int64_t L = p.extent[a], d = ax.dilation;
  double total = 0;
  for (int64_t g = 0; g < d; ++g) {
    const int64_t Lg = (L - g + d - 1) / d;
    for (int64_t o0 = 0; o0 < Lg; o0 += own) {
      int64_t lo = Lg, hi = -1;
      for (int64_t po = o0; po < std::min(Lg, o0 + own); ++po)
        for (int64_t pw = 0; pw < Lg; ++pw) {
          const int64_t q = keys_fixed ? pw : po, k = keys_fixed ? po : pw;
          if (spec_attends(ax, L, q * d + g, k * d + g)) {
            lo = std::min(lo, pw);
            hi = std::max(hi, pw);
          }
        }
      total += hi < lo ? 0.0 : double((hi - lo + 1 + walk - 1) / walk);
    }
  }
  return total;
}

nattn::Problem random_problem(std::mt19937& rng) {
  const int rank = 1 + int(rng() % 3);
  nattn::Window w;
  std::array<int64_t, 3> extent{1, 1, 1};
  for (int a = 0; a < rank; ++a) {
    w.dilation[a] = 1 + rng() % 2;
    w.kernel_size[a] = 2 + rng() % 7;
    extent[a] = w.kernel_size[a] * w.dilation[a] + rng() % 20;
    w.stride[a] = 1 + rng() % w.kernel_size[a];
    w.is_causal[a] = rng() % 4 == 0;
  }
  return nattn_test::make_problem(rank, extent, w);
}

TEST(TileShapes, KeysOwnedBoxesHaveExactQueryTileCounts) {
  std::mt19937 rng(std::random_device{}());
  const unsigned seed = rng();
  SCOPED_TRACE("seed " + std::to_string(seed));
  rng.seed(seed);
  for (int trial = 0; trial < 40; ++trial) {
    const nattn::Problem p = random_problem(rng);
    const int bq = 8, bk = 16;
    const nattn::TileShapes t = nattn::choose_tile_shapes(p, bq, bk, nattn::TileRole::kKeysOwned);
    int qv = 1, kv = 1;
    double brute = 1;
    for (int a = 0; a < 3; ++a) {
      qv *= t.q[a];
      kv *= t.k[a];
      if (a < p.rank) brute *= brute_axis(p, a, t.k[a], t.q[a], true);
    }
    EXPECT_EQ(qv, bq);
    EXPECT_EQ(kv, bk);
    EXPECT_DOUBLE_EQ(t.key_tiles, brute);
    EXPECT_DOUBLE_EQ(nattn::count_key_tiles(p, t.q, t.k, nattn::TileRole::kKeysOwned), brute);
  }
}

TEST(TileShapes, ChosenBoxesHaveTheRightVolumeAndExactCounts) {
  std::mt19937 rng(std::random_device{}());
  const unsigned seed = rng();
  SCOPED_TRACE("seed " + std::to_string(seed));
  rng.seed(seed);
  for (int trial = 0; trial < 40; ++trial) {
    const nattn::Problem p = random_problem(rng);
    const int rank = p.rank;
    const int bm = 16, bn = 8;
    const nattn::TileShapes t = nattn::choose_tile_shapes(p, bm, bn);
    int qv = 1, kv = 1;
    double brute = 1;
    for (int a = 0; a < 3; ++a) {
      qv *= t.q[a];
      kv *= t.k[a];
      if (a < rank)
        brute *= brute_axis(p, a, t.q[a], t.k[a], false);
      else
        EXPECT_EQ(t.q[a] * t.k[a], 1);
    }
    EXPECT_EQ(qv, bm);
    EXPECT_EQ(kv, bn);
    EXPECT_DOUBLE_EQ(t.key_tiles, brute);
    EXPECT_DOUBLE_EQ(nattn::count_key_tiles(p, t.q, t.k), brute);
  }
}

// An axis of extent 1 (unplaced, or one side's box when placed) gets boxes of one position:
// a longer box there covers nothing more, and the sm90 tensor maps drop such axes (a hang if a
// box spans them). Rank 3 is the case that matters: its first split puts the box on axis 3.
TEST(TileShapes, AxesOfExtentOneGetBoxesOfOne) {
  std::mt19937 rng(std::random_device{}());
  const unsigned seed = rng();
  SCOPED_TRACE("seed " + std::to_string(seed));
  rng.seed(seed);
  for (int trial = 0; trial < 60; ++trial) {
    nattn::Problem p = random_problem(rng);
    while (p.rank < 2) p = random_problem(rng);  // another axis must be able to take the box
    const int flat = int(rng() % unsigned(p.rank));
    const bool placed = trial % 2 == 1;
    if (placed) {  // keys (or queries) of extent 1 inside a longer global axis
      for (int a = 0; a < p.rank; ++a) p.placement.global_extent[a] = p.extent[a];
      const bool keys_flat = rng() % 2 == 0;
      if (keys_flat) {
        p.placement.key_extent[flat] = 1;
        p.placement.key_origin[flat] = int64_t(rng() % uint64_t(p.extent[flat]));
      } else {
        p.placement.query_origin[flat] = int64_t(rng() % uint64_t(p.extent[flat]));
        p.extent[flat] = 1;
      }
    } else {
      p.extent[flat] = 1;
      p.window.kernel_size[flat] = 1;
      p.window.stride[flat] = 1;
      p.window.dilation[flat] = 1;
      p.window.is_causal[flat] = false;
    }
    // Room for a whole box along the other axes, so a useful shape exists.
    for (int a = 0; a < p.rank; ++a)
      if (a != flat && p.extent[a] < 64) {
        p.extent[a] = 64;
        if (placed) p.placement.global_extent[a] = 64;
      }
    SCOPED_TRACE("trial " + std::to_string(trial) + " rank " + std::to_string(p.rank) + " flat axis " +
                 std::to_string(flat) + (placed ? " placed" : ""));
    const nattn::TileShapes t = nattn::choose_tile_shapes(p, 16, 16);
    if (!placed || p.extent[flat] == 1) EXPECT_EQ(t.q[flat], 1);
    if (!placed || p.key_extent(flat) == 1) EXPECT_EQ(t.k[flat], 1);
    EXPECT_DOUBLE_EQ(nattn::count_key_tiles(p, t.q, t.k), t.key_tiles);
  }
}

}  // namespace
