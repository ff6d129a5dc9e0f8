// Layer: tests. Tile-range helpers (src/core/tiles.h) against brute force over SPEC.md's neighborhoods.
// Per axis: every configuration up to L = 24 with random query/key ranges; boxes of ranks 1-3.
#include "core/tiles.h"

#include <gtest/gtest.h>

#include <array>
#include <string>
#include <vector>

#include "support/axis_sweep.h"
#include "support/spec_mask.h"
#include "support/test_tensor.h"

namespace nattn_test {
namespace {

using nattn::tiles::Coverage;
using nattn::window::Range;

// Who attends whom inside one dilation group, in group positions, from the oracle.
struct GroupMatrix {
  int64_t Lg = 0;
  std::vector<char> m;
  GroupMatrix(const AxisCase& c, int64_t g) {
    const int64_t d = c.spec.dilation;
    Lg = c.L / d + (g < c.L % d ? 1 : 0);
    m.resize(size_t(Lg * Lg));
    for (int64_t p = 0; p < Lg; ++p)
      for (int64_t t = 0; t < Lg; ++t) m[size_t(p * Lg + t)] = spec_attends(c.spec, c.L, p * d + g, t * d + g);
  }
  bool operator()(int64_t p, int64_t t) const { return m[size_t(p * Lg + t)] != 0; }
};

Range random_range(Rng& rng, int64_t n) {
  const int64_t b = rng.integer(0, n - 1);
  return {b, rng.integer(b + 1, n)};
}

const char* name(Coverage c) { return c == Coverage::kFull ? "full" : c == Coverage::kOutside ? "outside" : "partial"; }

// kFull: every pair attends; kOutside: none does; kPartial: some pair does and some does not.
Coverage brute_coverage(int64_t pairs_attended, int64_t pairs) {
  return pairs_attended == 0 ? Coverage::kOutside : pairs_attended == pairs ? Coverage::kFull : Coverage::kPartial;
}

std::string ranges(Range q, Range k) {
  return "queries [" + std::to_string(q.begin) + ", " + std::to_string(q.end) + ") keys [" + std::to_string(k.begin) +
         ", " + std::to_string(k.end) + ")";
}

TEST(Tiles, PerAxisHelpersMatchBruteForce) {
  Rng rng;
  SCOPED_TRACE(rng.trace());
  for_each_axis_case(24, [&](const AxisCase& c) {
    const int64_t k = c.spec.kernel_size, s = c.spec.stride;
    const bool causal = c.spec.is_causal;
    const int64_t g = rng.integer(0, c.spec.dilation - 1);
    const GroupMatrix A(c, g);
    for (int trial = 0; trial < 20; ++trial) {
      const Range q = random_range(rng, A.Lg), keys = random_range(rng, A.Lg);
      const Range u = nattn::tiles::key_union(q, A.Lg, k, s, causal);
      const Range x = nattn::tiles::key_intersection(q, A.Lg, k, s, causal);
      const Range qu = nattn::tiles::query_union(keys, A.Lg, k, s, causal);
      for (int64_t t = 0; t < A.Lg; ++t) {
        bool any = false, all = true, seen = false;
        for (int64_t p = q.begin; p < q.end; ++p) {
          any |= A(p, t);
          all &= A(p, t);
        }
        for (int64_t kk = keys.begin; kk < keys.end; ++kk) seen |= A(t, kk);
        if (u.contains(t) != any || x.contains(t) != all || qu.contains(t) != seen) {
          ADD_FAILURE() << c.describe() << " group " << g << " " << ranges(q, keys) << " position " << t << ": union "
                        << u.contains(t) << "/" << any << ", intersection " << x.contains(t) << "/" << all
                        << ", query union " << qu.contains(t) << "/" << seen;
          return;
        }
      }
      int64_t attended = 0;
      for (int64_t p = q.begin; p < q.end; ++p)
        for (int64_t kk = keys.begin; kk < keys.end; ++kk) attended += A(p, kk);
      const Coverage want = brute_coverage(attended, q.size() * keys.size());
      const Coverage got = nattn::tiles::classify(q, keys, A.Lg, k, s, causal);
      if (got != want) {
        ADD_FAILURE() << c.describe() << " group " << g << " " << ranges(q, keys) << ": classify " << name(got)
                      << ", brute force " << name(want);
        return;
      }
    }
  });
}

// Rank-R boxes in one dilation group per axis, against the product of per-axis oracles.
template <int R>
void check_boxes(Rng& rng) {
  for (int trial = 0; trial < 2000; ++trial) {
    AxisCase cases[R];
    nattn::window::Axis axes[R];
    int64_t group[R];
    std::vector<GroupMatrix> A;
    std::string desc;
    for (int a = 0; a < R; ++a) {
      const int64_t L = rng.integer(2, R == 1 ? 30 : R == 2 ? 14 : 9);
      const int64_t k = rng.integer(2, L);
      const int64_t d = rng.integer(1, L / k);
      cases[a] = AxisCase{L, SpecAxis{k, rng.integer(1, k), d, rng.coin()}};
      axes[a] = cases[a].lib();
      group[a] = rng.integer(0, d - 1);
      A.emplace_back(cases[a], group[a]);
      desc += cases[a].describe() + " group " + std::to_string(group[a]) + "; ";
    }
    SCOPED_TRACE(desc);
    const auto geo = nattn::tiles::geometry<R>(axes, group);
    nattn::tiles::Box<R> qb{}, kb{};
    for (int a = 0; a < R; ++a) {
      ASSERT_EQ(geo.Lg[a], A[size_t(a)].Lg);
      qb.r[a] = random_range(rng, A[size_t(a)].Lg);
      kb.r[a] = random_range(rng, A[size_t(a)].Lg);
    }
    // Enumerate a box's points, or the whole group grid's.
    auto points = [&](const nattn::tiles::Box<R>* box) {
      std::vector<std::array<int64_t, R>> pts(1);
      for (int a = 0; a < R; ++a) {
        std::vector<std::array<int64_t, R>> next;
        const Range r = box ? box->r[a] : Range{0, A[size_t(a)].Lg};
        for (const auto& pt : pts)
          for (int64_t x = r.begin; x < r.end; ++x) {
            auto n = pt;
            n[size_t(a)] = x;
            next.push_back(n);
          }
        pts.swap(next);
      }
      return pts;
    };
    auto attends = [&](const std::array<int64_t, R>& q, const std::array<int64_t, R>& k) {
      for (int a = 0; a < R; ++a)
        if (!A[size_t(a)](q[size_t(a)], k[size_t(a)])) return false;
      return true;
    };
    auto in_box = [](const nattn::tiles::Box<R>& b, const std::array<int64_t, R>& x) {
      for (int a = 0; a < R; ++a)
        if (!b.r[a].contains(x[size_t(a)])) return false;
      return true;
    };
    const auto qpts = points(&qb), kpts = points(&kb), all = points(nullptr);
    int64_t attended = 0;
    for (const auto& q : qpts)
      for (const auto& k : kpts) attended += attends(q, k);
    EXPECT_EQ(nattn::tiles::classify_box<R>(qb, kb, geo), brute_coverage(attended, int64_t(qpts.size() * kpts.size())));
    const auto key_box = nattn::tiles::key_box<R>(qb, geo);
    const auto query_box = nattn::tiles::query_box<R>(kb, geo);
    for (const auto& x : all) {
      bool key_seen = false, query_sees = false;
      for (const auto& q : qpts) key_seen |= attends(q, x);
      for (const auto& k : kpts) query_sees |= attends(x, k);
      ASSERT_EQ(in_box(key_box, x), key_seen) << "key_box";
      ASSERT_EQ(in_box(query_box, x), query_sees) << "query_box";
    }
  }
}

TEST(Tiles, Rank1BoxesMatchBruteForce) {
  Rng rng;
  SCOPED_TRACE(rng.trace());
  check_boxes<1>(rng);
}
TEST(Tiles, Rank2BoxesMatchBruteForce) {
  Rng rng;
  SCOPED_TRACE(rng.trace());
  check_boxes<2>(rng);
}
TEST(Tiles, Rank3BoxesMatchBruteForce) {
  Rng rng;
  SCOPED_TRACE(rng.trace());
  check_boxes<3>(rng);
}

}  // namespace
}  // namespace nattn_test
