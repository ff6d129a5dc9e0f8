// Layer: tests. The fused kernels' walk schedule (src/cuda/common/tile_walk.h, host+device)
// driven on the host exactly as a kernel's thread 0 drives it (init, begin, fill_tables,
// start_ring, advance through the ring), against brute force over SPEC.md's neighborhoods.
//
// What the kernels rely on, per own box (queries for forward/dQ, keys for dK/dV) and head:
//  - every attended (own, walked) pair lies in exactly one emitted walked box (nothing missed,
//    nothing counted twice), boxes come in odometer order (axis 2 fastest), and a box with no
//    attended pair is skipped;
//  - a `full` box needs no mask: every pair of own rows inside the group x walked rows is
//    attended (forward: walked key boxes are unclipped, so a full box lies inside the group;
//    dK/dV: walked query rows past the group carry lse = +inf, so only rows inside count);
//  - masking only the `partial` axes (per-axis window test) leaves exactly the attended pairs;
//  - extra tiles (additional keys) follow the neighborhood boxes, masked past the limit.
// Placed boxes (SPEC.md "Placed boxes"): windows on the global grid, own boxes cover the own
// side's box (queries, or keys for dK/dV), walked positions outside the other box are never
// attended (forward: a walked key box reaching past the key box is partial, and the mask's
// windows, TileWalk::mask_window, are clipped to it; dK/dV: walked query rows past the query
// box carry lse = +inf), and a query whose window misses the key box gets an empty walk.
#include "cuda/common/tile_walk.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "core/tile_shapes.h"
#include "cuda/common/additional_keys.h"
#include "cuda/common/ordered_dq.h"
#include "support/spec_mask.h"
#include "support/test_tensor.h"

namespace nattn_test {
namespace {

using nattn::cuda::Geometry;
using nattn::cuda::Step;
using nattn::cuda::TileWalk;
using nattn::cuda::Tiling;

struct WalkCase {
  int rank = 1;
  int64_t extent[3] = {1, 1, 1};
  SpecAxis axis[3];
  int own[3] = {1, 1, 1};   // own box per axis (powers of two)
  int walk[3] = {1, 1, 1};  // walked box per axis
  bool walks_queries = false;
  int heads = 1;  // query heads per kv head walked (dK/dV)
  int64_t num_additional = 0;
  bool align = false;  // dK/dV walks of the deterministic fast backward: walked boxes on the aligned grid
  // Placed boxes: `extent` is the query box; windows live on a grid of `global` indices.
  bool placed = false;
  int64_t global[3] = {1, 1, 1};
  int64_t q_origin[3] = {0, 0, 0};
  int64_t k_origin[3] = {0, 0, 0};
  int64_t k_extent[3] = {1, 1, 1};

  int64_t grid(int a) const { return placed ? global[a] : extent[a]; }
  // The own side's box and the walked side's box along axis a (global indices [origin, origin + extent)).
  int64_t own_origin(int a) const { return placed ? (walks_queries ? k_origin[a] : q_origin[a]) : 0; }
  int64_t own_extent(int a) const { return placed ? (walks_queries ? k_extent[a] : extent[a]) : extent[a]; }
  int64_t walked_origin(int a) const { return placed ? (walks_queries ? q_origin[a] : k_origin[a]) : 0; }
  int64_t walked_extent(int a) const { return placed ? (walks_queries ? extent[a] : k_extent[a]) : extent[a]; }

  std::string describe() const {
    std::ostringstream o;
    o << (walks_queries ? "dK/dV walk" : "forward walk") << ", rank " << rank << ":";
    for (int a = 0; a < rank; ++a) {
      o << " " << extent[a] << "(k" << axis[a].kernel_size << " s" << axis[a].stride << " d" << axis[a].dilation
        << (axis[a].is_causal ? " causal" : "") << ")";
      if (placed)
        o << "[global " << global[a] << ", queries at " << q_origin[a] << ", keys " << k_extent[a] << " at "
          << k_origin[a] << "]";
    }
    o << ", own " << own[0] << "x" << own[1] << "x" << own[2] << ", walk " << walk[0] << "x" << walk[1] << "x"
      << walk[2] << ", heads " << heads << ", Na " << num_additional << (align ? ", aligned walk" : "");
    return o.str();
  }
};

// Spreads 2^total over the first `rank` axes (1 past them).
void random_box(Rng& rng, int rank, int total_log2, int (&box)[3]) {
  int shift[3] = {0, 0, 0};
  for (int i = 0; i < total_log2; ++i) ++shift[rng.integer(0, rank - 1)];
  for (int a = 0; a < 3; ++a) box[a] = 1 << shift[a];
}

WalkCase random_case(Rng& rng, bool walks_queries) {
  WalkCase c;
  c.rank = int(rng.integer(1, 3));
  const int64_t max_extra = c.rank == 1 ? 40 : c.rank == 2 ? 14 : 6;
  for (int a = 0; a < c.rank; ++a) {
    SpecAxis& ax = c.axis[a];
    ax.dilation = rng.integer(1, 3);
    ax.kernel_size = rng.integer(2, c.rank == 1 ? 12 : 6);
    ax.stride = rng.integer(1, ax.kernel_size);
    ax.is_causal = rng.coin(0.3);
    c.extent[a] = ax.kernel_size * ax.dilation + rng.integer(0, max_extra);
  }
  random_box(rng, c.rank, int(rng.integer(0, 6)), c.own);
  random_box(rng, c.rank, int(rng.integer(0, 6)), c.walk);
  c.walks_queries = walks_queries;
  c.heads = walks_queries ? int(rng.integer(1, 4)) : 1;
  c.num_additional = walks_queries ? 0 : (rng.coin() ? 0 : rng.integer(1, 40));
  return c;
}

// A placed case: random boxes of a random global grid (windows valid on the global grid; a
// key box may miss some queries' windows entirely).
WalkCase random_placed_case(Rng& rng, bool walks_queries) {
  WalkCase c = random_case(rng, walks_queries);
  c.placed = true;
  for (int a = 0; a < c.rank; ++a) {
    const int64_t G = c.extent[a];
    c.global[a] = G;
    c.extent[a] = rng.integer(1, G);
    c.k_extent[a] = rng.coin(0.2) ? G : rng.integer(1, G);
    c.q_origin[a] = rng.integer(0, G - c.extent[a]);
    c.k_origin[a] = rng.integer(0, G - c.k_extent[a]);
  }
  return c;
}

// The kernels' Geometry (cuda::geometry_of) and Tiling (the sm80 family's make_tiling).
Geometry geometry(const WalkCase& c) {
  Geometry g;
  g.rank = c.rank;
  for (int a = 0; a < c.rank; ++a) {
    g.extent[a] = c.extent[a];
    g.kernel[a] = c.axis[a].kernel_size;
    g.stride[a] = c.axis[a].stride;
    g.dilation[a] = c.axis[a].dilation;
    g.causal[a] = c.axis[a].is_causal;
  }
  if (c.placed) {
    g.placed = true;
    for (int a = 0; a < c.rank; ++a) {
      g.global[a] = c.global[a];
      g.query_origin[a] = c.q_origin[a];
      g.key_origin[a] = c.k_origin[a];
      g.key_extent[a] = c.k_extent[a];
    }
  }
  return g;
}

// Own boxes per axis per group: a box of X indices holds at most ceil(X / d) positions of a group.
Tiling tiling(const WalkCase& c, const Geometry& g) {
  Tiling t;
  t.neighborhood_ctas = 1;
  for (int a = 0; a < 3; ++a) {
    t.own_shift[a] = nattn::log2_ceil(c.own[a]);
    t.walk_shift[a] = nattn::log2_ceil(c.walk[a]);
    const int64_t longest = (c.own_extent(a) + g.dilation[a] - 1) / g.dilation[a];
    t.own_tiles[a] = (longest + c.own[a] - 1) / c.own[a];
    t.neighborhood_ctas *= t.own_tiles[a] * g.dilation[a];
  }
  return t;
}

// One axis of one own box, from SPEC.md: who attends whom in group positions. attends(o, w):
// own position o (inside the own side's box) and walked position w (any; false past the
// group and, placed, outside the walked side's box).
struct AxisOracle {
  int64_t Lg = 1;
  int64_t own_begin = 0, own_end = 1;    // own positions inside the group (and the own side's box)
  int64_t own_end_of_box = 1;            // own positions of the group inside the own side's box end here
  int64_t walk_first = 0, walk_end = 1;  // walked positions of the group inside the walked side's box
  std::vector<char> table;               // [(o - own_begin) * Lg + w]
  bool attends(int64_t o, int64_t w) const { return w >= 0 && w < Lg && table[size_t((o - own_begin) * Lg + w)] != 0; }
};

// Group length of group g on axis a (the global grid when placed), and the group positions
// whose index lies in [origin, origin + extent): brute force over the group.
int64_t group_length(const WalkCase& c, int a, int64_t group) {
  if (a >= c.rank) return 1;
  const int64_t L = c.grid(a), d = c.axis[a].dilation;
  int64_t n = 0;
  for (int64_t i = group; i < L; i += d) ++n;
  return n;
}

void positions_in_box(const WalkCase& c, int a, int64_t group, int64_t origin, int64_t extent, int64_t* first,
                      int64_t* end) {
  *first = *end = 0;
  if (a >= c.rank) {
    *end = 1;
    return;
  }
  bool any = false;
  for (int64_t p = 0; p < group_length(c, a, group); ++p) {
    const int64_t i = p * c.axis[a].dilation + group;
    if (i < origin || i >= origin + extent) continue;
    if (!any) *first = p;
    any = true;
    *end = p + 1;
  }
}

AxisOracle axis_oracle(const WalkCase& c, int a, int64_t group, int64_t own_begin, int64_t own_end) {
  AxisOracle o;
  if (a >= c.rank) {  // a single position that attends itself
    o.table.assign(1, 1);
    return o;
  }
  const SpecAxis& ax = c.axis[a];
  const int64_t L = c.grid(a), d = ax.dilation;
  o.Lg = group_length(c, a, group);
  o.own_begin = own_begin;
  o.own_end = own_end;
  positions_in_box(c, a, group, c.walked_origin(a), c.walked_extent(a), &o.walk_first, &o.walk_end);
  o.table.assign(size_t((own_end - own_begin) * o.Lg), 0);
  for (int64_t p = own_begin; p < own_end; ++p)
    for (int64_t w = 0; w < o.Lg; ++w) {
      const int64_t own_index = p * d + group, walk_index = w * d + group;
      const bool walked_in_box =
          walk_index >= c.walked_origin(a) && walk_index < c.walked_origin(a) + c.walked_extent(a);
      o.table[size_t((p - own_begin) * o.Lg + w)] =
          walked_in_box &&
          (c.walks_queries ? spec_attends(ax, L, walk_index, own_index) : spec_attends(ax, L, own_index, walk_index));
    }
  return o;
}

std::string step_string(const Step& s) {
  std::ostringstream o;
  o << "{start " << s.start[0] << "," << s.start[1] << "," << s.start[2] << " tile " << s.tile << " head " << s.head
    << " partial " << s.partial << " full " << s.full << " valid " << s.valid << "}";
  return o.str();
}

bool same_step(const Step& a, const Step& b) {
  if (a.valid != b.valid) return false;
  if (!a.valid) return true;
  return a.tile == b.tile && a.head == b.head && a.partial == b.partial && a.full == b.full &&
         a.start[0] == b.start[0] && a.start[1] == b.start[1] && a.start[2] == b.start[2];
}

// The kernels' loop: thread 0 starts the ring, then each iteration refills ring_next(ring_next
// (slot)) while slot is computed. Returns the valid steps in the order they are computed.
std::vector<Step> ring_sequence(TileWalk& w, size_t limit) {
  std::vector<Step> steps;
  w.start_ring();
  for (int slot = 0; w.ring[slot].valid; slot = nattn::cuda::ring_next(slot)) {
    const int slot1 = nattn::cuda::ring_next(slot), slot2 = nattn::cuda::ring_next(slot1);
    w.ring[slot2] = w.advance();
    steps.push_back(w.ring[slot]);
    if (steps.size() > limit) break;  // a runaway walk; the caller reports it
  }
  return steps;
}

std::vector<Step> advance_sequence(TileWalk& w, size_t limit) {
  std::vector<Step> steps;
  for (Step s = w.advance(); s.valid; s = w.advance()) {
    steps.push_back(s);
    if (steps.size() > limit) break;
  }
  return steps;
}

// Checks every own box of a case. Returns false after the first failing box (with failures added).
bool check_case(const WalkCase& c, Rng& rng) {
  SCOPED_TRACE(c.describe());
  const Geometry g = geometry(c);
  const Tiling t = tiling(c, g);
  const int walk_rows = c.walk[0] * c.walk[1] * c.walk[2];
  const int add_tiles = int((c.num_additional + walk_rows - 1) / walk_rows);
  const int64_t extra_limit = c.walks_queries ? INT64_MAX : c.num_additional;

  // Every token of the own side's box must be owned by exactly one CTA.
  int64_t tokens = 1, own_extent[3];
  for (int a = 0; a < 3; ++a) {
    own_extent[a] = a < c.rank ? c.own_extent(a) : 1;
    tokens *= own_extent[a];
  }
  std::vector<int> owner_count(size_t(tokens), 0);

  auto walk = std::make_unique<TileWalk>();
  auto untabled = std::make_unique<TileWalk>();
  auto early = std::make_unique<TileWalk>();
  for (int64_t linear = 0; linear < t.neighborhood_ctas; ++linear) {
    SCOPED_TRACE("own box " + std::to_string(linear));
    // Decode the CTA index independently: row-major over [dilation groups..., own boxes...].
    int64_t idx = linear, tile[3], group[3];
    for (int a = 2; a >= 0; --a) {
      tile[a] = idx % t.own_tiles[a];
      idx /= t.own_tiles[a];
    }
    for (int a = 2; a >= 0; --a) {
      group[a] = idx % g.dilation[a];
      idx /= g.dilation[a];
    }
    AxisOracle ax[3];
    bool empty = false;
    int64_t own_first[3];
    for (int a = 0; a < 3; ++a) {
      int64_t own_end = 0;
      positions_in_box(c, a, group[a], c.own_origin(a), c.own_extent(a), &own_first[a], &own_end);
      const int64_t begin = own_first[a] + tile[a] * c.own[a];
      if (begin >= own_end) empty = true;
      ax[a] = axis_oracle(c, a, group[a], std::min(begin, own_end), std::min(begin + c.own[a], own_end));
      ax[a].own_end_of_box = own_end;
    }

    TileWalk& w = *walk;
    w.init(g, t, linear, c.walks_queries, add_tiles, walk_rows, c.align);
    if (w.empty != empty) {
      ADD_FAILURE() << "empty = " << w.empty << ", expected " << empty;
      return false;
    }
    if (empty) continue;
    for (int a = 0; a < 3; ++a) {
      const int64_t start = own_first[a] + tile[a] * c.own[a];
      if (w.group[a] != group[a] || w.own_start[a] != start || w.lg[a] != ax[a].Lg) {
        ADD_FAILURE() << "axis " << a << ": group " << w.group[a] << "/" << group[a] << ", own start " << w.own_start[a]
                      << "/" << start << ", group length " << w.lg[a] << "/" << ax[a].Lg;
        return false;
      }
    }
    // The kernels' row limits and tensor rows: an own row at position p is row p * d + own_off
    // of the own side's tensor and exists below own_end; likewise walked rows.
    int own_left[3], walk_left[3];
    const int zero[3] = {0, 0, 0};
    w.own_rows_left(zero, own_left);
    w.walk_rows_left(zero, walk_left);
    for (int a = 0; a < 3; ++a) {
      const int64_t own_off = a < c.rank ? group[a] - c.own_origin(a) : 0;
      const int64_t walk_off = a < c.rank ? group[a] - c.walked_origin(a) : 0;
      // (where the group has no walked position, any empty range will do: nothing is walked)
      const bool walked_any = ax[a].walk_first < ax[a].walk_end;
      if (own_left[a] != ax[a].own_end_of_box || (walked_any && walk_left[a] != ax[a].walk_end) ||
          w.own_off[a] != own_off || w.walk_off[a] != walk_off) {
        ADD_FAILURE() << "axis " << a << ": own rows end at " << own_left[a] << "/" << ax[a].own_end_of_box
                      << ", walked rows at " << walk_left[a] << "/" << ax[a].walk_end << ", own row offset "
                      << w.own_off[a] << "/" << own_off << ", walked row offset " << w.walk_off[a] << "/" << walk_off;
        return false;
      }
    }
    for (int64_t p0 = ax[0].own_begin; p0 < ax[0].own_end; ++p0)
      for (int64_t p1 = ax[1].own_begin; p1 < ax[1].own_end; ++p1)
        for (int64_t p2 = ax[2].own_begin; p2 < ax[2].own_end; ++p2) {
          // Local index in the own side's box.
          const int64_t i0 = p0 * g.dilation[0] + group[0] - (c.rank > 0 ? c.own_origin(0) : 0);
          const int64_t i1 = p1 * g.dilation[1] + group[1] - (c.rank > 1 ? c.own_origin(1) : 0);
          const int64_t i2 = p2 * g.dilation[2] + group[2] - (c.rank > 2 ? c.own_origin(2) : 0);
          if (i0 < 0 || i0 >= own_extent[0] || i1 < 0 || i1 >= own_extent[1] || i2 < 0 || i2 >= own_extent[2]) {
            ADD_FAILURE() << "own position (" << p0 << "," << p1 << "," << p2 << ") lies outside the own side's box";
            return false;
          }
          ++owner_count[size_t((i0 * own_extent[1] + i1) * own_extent[2] + i2)];
        }

    // Partners per axis (the walked positions attended with some own position) and their
    // bounding box: the walk must cover exactly that box. The attended set is a Cartesian
    // product per axis (SPEC.md), and so is the own box, so a walked position has an attended
    // partner in the own box iff it has one on every axis.
    int64_t lo[3], hi[3];
    std::vector<char> partner[3];
    bool none = false;
    for (int a = 0; a < 3; ++a) {
      partner[a].assign(size_t(ax[a].Lg), 0);
      lo[a] = ax[a].Lg;
      hi[a] = -1;
      for (int64_t w2 = 0; w2 < ax[a].Lg; ++w2)
        for (int64_t o = ax[a].own_begin; o < ax[a].own_end; ++o)
          if (ax[a].attends(o, w2)) {
            partner[a][size_t(w2)] = 1;
            lo[a] = std::min(lo[a], w2);
            hi[a] = std::max(hi[a], w2);
          }
      none |= hi[a] < lo[a];
    }
    // Aligned walks start at the partners' box on the grid of walked boxes from the walked side's
    // first position of the group.
    int64_t n_walk[3] = {0, 0, 0}, first[3] = {0, 0, 0};
    int64_t nbr = none ? 0 : 1;
    for (int a = 0; a < 3 && !none; ++a) {
      first[a] = c.align ? ax[a].walk_first + (lo[a] - ax[a].walk_first) / c.walk[a] * c.walk[a] : lo[a];
      n_walk[a] = (hi[a] - first[a] + 1 + c.walk[a] - 1) / c.walk[a];
      nbr *= n_walk[a];
    }
    if (none && w.nbr_tiles != 0) {
      ADD_FAILURE() << "no walked position has an attended partner, but nbr_tiles is " << w.nbr_tiles;
      return false;
    }
    if (!none) {
      for (int a = 0; a < 3; ++a)
        if (w.walk_begin[a] != first[a] || w.n_walk[a] != n_walk[a]) {
          ADD_FAILURE() << "axis " << a << ": walk begins at " << w.walk_begin[a] << " with " << w.n_walk[a]
                        << " boxes; the attended partners span [" << lo[a] << ", " << hi[a] << "] (" << n_walk[a]
                        << " boxes of " << c.walk[a] << " from " << first[a] << ")";
          return false;
        }
      if (w.nbr_tiles != nbr) {
        ADD_FAILURE() << "nbr_tiles " << w.nbr_tiles << ", expected " << nbr;
        return false;
      }
    }

    // Drive it as a kernel does: thread 0 begins, all threads fill the tables, thread 0 starts
    // the ring and refills it. A second copy runs untabled (the path for > kMaxAxisTiles boxes).
    // A third runs as the sm90 backward's producer does: its first steps taken with
    // advance(false) before the tables are filled (they hold a wrong coverage meanwhile, so a
    // step read from them would differ), the rest after.
    w.begin(c.heads, extra_limit);
    *early = w;
    for (auto& axis : early->axis_cov)
      std::fill(std::begin(axis), std::end(axis), (unsigned char)nattn::tiles::Coverage::kFull);
    const int first_steps = int(rng.integer(0, 3));
    std::vector<Step> early_steps;
    for (int i = 0; i < first_steps; ++i) early_steps.push_back(early->advance(false));
    const int threads = int(rng.pick(std::vector<int64_t>{1, 3, 32, 256}));
    for (int th = 0; th < threads; ++th) w.fill_tables(th, threads);
    for (int th = 0; th < threads; ++th) early->fill_tables(th, threads);
    *untabled = w;
    untabled->tabled = false;
    const size_t limit = size_t(c.heads) * size_t(nbr + add_tiles) + 1;
    const std::vector<Step> steps = ring_sequence(w, limit);
    const std::vector<Step> direct = advance_sequence(*untabled, limit);
    for (Step s = early->advance(); early_steps.size() <= limit; s = early->advance()) {
      early_steps.push_back(s);
      if (!s.valid) break;
    }
    // Valid steps, then the end marker (one or more invalid steps among the first ones).
    size_t early_valid = 0;
    while (early_valid < early_steps.size() && early_steps[early_valid].valid) ++early_valid;
    bool same_early = early_valid == steps.size();
    for (size_t i = 0; same_early && i < steps.size(); ++i) same_early = same_step(steps[i], early_steps[i]);
    if (!same_early) {
      ADD_FAILURE() << "the walk with " << first_steps << " steps taken before the tables were filled differs from "
                    << "the tabled one: " << early_valid << " vs " << steps.size() << " steps";
      return false;
    }
    if (steps.size() > limit - 1) {
      ADD_FAILURE() << "the walk does not end: more than " << limit - 1 << " steps";
      return false;
    }
    for (int extra = 0; extra < 3; ++extra) {
      const Step s = w.advance();
      if (s.valid) {
        ADD_FAILURE() << "advance() past the end returned a valid step " << step_string(s);
        return false;
      }
    }
    bool same = steps.size() == direct.size();
    for (size_t i = 0; same && i < steps.size(); ++i) same = same_step(steps[i], direct[i]);
    if (!same) {
      ADD_FAILURE() << "the untabled walk differs from the tabled one: " << direct.size() << " vs " << steps.size()
                    << " steps";
      return false;
    }

    // Split the steps per head: neighborhood boxes, then extra tiles.
    size_t next = 0;
    for (int head = 0; head < c.heads; ++head) {
      SCOPED_TRACE("head " + std::to_string(head));
      // Coverage of the bounding box by emitted boxes (count per walked position).
      int64_t span[3];
      for (int a = 0; a < 3; ++a) span[a] = none ? 0 : n_walk[a] * c.walk[a];
      std::vector<int> covered(size_t(span[0] * span[1] * span[2]), 0);
      int last_tile = -1;
      for (; next < steps.size() && steps[next].head == head && steps[next].tile < w.nbr_tiles; ++next) {
        const Step& s = steps[next];
        SCOPED_TRACE("step " + step_string(s));
        if (s.tile <= last_tile) {
          ADD_FAILURE() << "boxes out of odometer order (previous tile " << last_tile << ")";
          return false;
        }
        last_tile = s.tile;
        const int64_t i0 = s.tile / (n_walk[1] * n_walk[2]), i1 = (s.tile / n_walk[2]) % n_walk[1],
                      i2 = s.tile % n_walk[2];
        const int64_t box_i[3] = {i0, i1, i2};
        for (int a = 0; a < 3; ++a)
          if (s.start[a] != first[a] + box_i[a] * c.walk[a]) {
            ADD_FAILURE() << "start[" << a << "] does not match tile " << s.tile << " (expected "
                          << first[a] + box_i[a] * c.walk[a] << ")";
            return false;
          }
        // Per axis: pairs (own inside the group) x (walked box: forward unclipped, dK/dV inside
        // the group and the query box) that are attended, and how many pairs there are.
        int64_t per_axis_attended[3], per_axis_pairs[3];
        for (int a = 0; a < 3; ++a) {
          per_axis_attended[a] = per_axis_pairs[a] = 0;
          for (int64_t o = ax[a].own_begin; o < ax[a].own_end; ++o)
            for (int64_t x = s.start[a]; x < s.start[a] + c.walk[a]; ++x) {
              if (c.walks_queries && x >= ax[a].walk_end) continue;
              ++per_axis_pairs[a];
              per_axis_attended[a] += ax[a].attends(o, x);
            }
        }
        bool any = true, all = true;
        for (int a = 0; a < 3; ++a) {
          any &= per_axis_attended[a] > 0;
          all &= per_axis_attended[a] == per_axis_pairs[a];
        }
        if (!any) {
          ADD_FAILURE() << "a box without any attended pair is walked";
          return false;
        }
        if (bool(s.full) != (s.partial == 0)) {
          ADD_FAILURE() << "full must mean: no axis is partial";
          return false;
        }
        for (int a = 0; a < 3; ++a) {
          const bool needs_mask = per_axis_attended[a] != per_axis_pairs[a];
          if (((s.partial >> a) & 1) != int(needs_mask)) {
            ADD_FAILURE() << "partial bit of axis " << a << " is " << ((s.partial >> a) & 1) << " but the axis "
                          << (needs_mask ? "needs" : "does not need") << " masking (" << per_axis_attended[a] << " of "
                          << per_axis_pairs[a] << " pairs attended)";
            return false;
          }
        }
        if (bool(s.full) != all) {
          ADD_FAILURE() << "full is " << s.full << " but " << (all ? "every" : "not every")
                        << " pair of the box is attended";
          return false;
        }
        // Pair by pair: the kernels' per-axis window test (TileWalk::mask_window: the query's
        // window, clipped to the key box when placed) on the partial axes only must give exactly
        // the attended pairs (a full box runs unmasked).
        auto mask_keeps = [&](int a, int64_t o, int64_t x) {
          const int64_t query = c.walks_queries ? x : o, key = c.walks_queries ? o : x;
          return w.mask_window(a, int(query)).contains(key);
        };
        for (int64_t o0 = ax[0].own_begin; o0 < ax[0].own_end; ++o0)
          for (int64_t o1 = ax[1].own_begin; o1 < ax[1].own_end; ++o1)
            for (int64_t o2 = ax[2].own_begin; o2 < ax[2].own_end; ++o2)
              for (int64_t x0 = s.start[0]; x0 < s.start[0] + c.walk[0]; ++x0)
                for (int64_t x1 = s.start[1]; x1 < s.start[1] + c.walk[1]; ++x1)
                  for (int64_t x2 = s.start[2]; x2 < s.start[2] + c.walk[2]; ++x2) {
                    if (c.walks_queries && (x0 >= ax[0].walk_end || x1 >= ax[1].walk_end || x2 >= ax[2].walk_end))
                      continue;
                    const bool att[3] = {ax[0].attends(o0, x0), ax[1].attends(o1, x1), ax[2].attends(o2, x2)};
                    const bool attended = att[0] && att[1] && att[2];
                    const int64_t o_[3] = {o0, o1, o2}, x_[3] = {x0, x1, x2};
                    bool kept = true;
                    for (int a = 0; a < 3; ++a)
                      if ((s.partial >> a) & 1) kept &= mask_keeps(a, o_[a], x_[a]);
                    if (kept != attended) {
                      ADD_FAILURE() << "own (" << o0 << "," << o1 << "," << o2 << ") walked (" << x0 << "," << x1 << ","
                                    << x2 << "): attended " << attended << " but masking the partial axes "
                                    << (kept ? "keeps" : "drops") << " it";
                      return false;
                    }
                    // Counted once per own position: a position in one box counts own_volume.
                    ++covered[size_t(((x0 - first[0]) * span[1] + (x1 - first[1])) * span[2] + (x2 - first[2]))];
                  }
      }
      // Every walked position with an attended partner (a partner on every axis) lies in
      // exactly one emitted box.
      const int64_t own_volume =
          (ax[0].own_end - ax[0].own_begin) * (ax[1].own_end - ax[1].own_begin) * (ax[2].own_end - ax[2].own_begin);
      for (int64_t x0 = 0; x0 < ax[0].Lg; ++x0)
        for (int64_t x1 = 0; x1 < ax[1].Lg; ++x1)
          for (int64_t x2 = 0; x2 < ax[2].Lg; ++x2) {
            if (!partner[0][size_t(x0)] || !partner[1][size_t(x1)] || !partner[2][size_t(x2)]) continue;
            const int n = covered[size_t(((x0 - first[0]) * span[1] + (x1 - first[1])) * span[2] + (x2 - first[2]))];
            if (n != own_volume) {
              ADD_FAILURE() << "walked position (" << x0 << "," << x1 << "," << x2 << ") has an attended partner but "
                            << "lies in " << n / std::max<int64_t>(own_volume, 1) << " walked boxes (expected 1)";
              return false;
            }
          }
      // Extra tiles: additional keys, masked past the limit.
      for (int j = 0; j < add_tiles; ++j, ++next) {
        if (next >= steps.size() || steps[next].head != head || steps[next].tile != w.nbr_tiles + j) {
          ADD_FAILURE() << "extra tile " << j << " missing"
                        << (next < steps.size() ? ": got " + step_string(steps[next]) : std::string());
          return false;
        }
        const bool full = int64_t(j + 1) * walk_rows <= extra_limit;
        if (steps[next].full != int(full) || steps[next].partial != int(!full)) {
          ADD_FAILURE() << "extra tile " << j << " " << step_string(steps[next]) << ": expected full " << full;
          return false;
        }
      }
    }
    if (next != steps.size()) {
      ADD_FAILURE() << steps.size() - next << " unexpected steps, the first " << step_string(steps[next]);
      return false;
    }
  }
  for (int64_t i = 0; i < tokens; ++i)
    if (owner_count[size_t(i)] != 1) {
      ADD_FAILURE() << "token " << i << " is owned by " << owner_count[size_t(i)] << " own boxes (expected 1)";
      return false;
    }
  return true;
}

// The deterministic fast backward's ordered dQ adds (TileWalk::ordered_rank, ordered_dq_slot)
// over every key box's aligned walk: the visitors of each (head, group, aligned query box)
// counter report the ranks 0..n-1, each once, in decreasing order of their key box (the order
// the launch dispatches them in), and every counter lies below ordered_dq_boxes's count.
bool check_order(const WalkCase& c) {
  SCOPED_TRACE(c.describe());
  Geometry g = geometry(c);
  g.heads_q = c.heads;
  const Tiling t = tiling(c, g);
  int boxes[3];
  const int64_t count = nattn::cuda::ordered_dq_boxes(g, t.walk_shift, boxes);
  std::map<int64_t, std::vector<std::pair<int64_t, int>>> visitors;  // counter -> (key box, rank)
  auto w = std::make_unique<TileWalk>();
  for (int64_t linear = 0; linear < t.neighborhood_ctas; ++linear) {
    w->init(g, t, linear, true, 0, 1, true);
    if (w->empty) continue;
    w->begin(c.heads, INT64_MAX);
    w->fill_tables(0, 1);
    for (Step st = w->advance(); st.valid; st = w->advance()) {
      for (int a = 0; a < 3; ++a)
        if ((st.start[a] - w->walk_origin[a]) % c.walk[a] != 0) {
          ADD_FAILURE() << "key box " << linear << ": walked box at " << st.start[a] << " on axis " << a
                        << " is off the aligned grid from " << w->walk_origin[a];
          return false;
        }
      const int64_t slot = nattn::cuda::ordered_dq_slot(*w, st, g, boxes, 0, st.head);
      if (slot < 0 || slot >= count) {
        ADD_FAILURE() << "key box " << linear << ": counter " << slot << " outside [0, " << count << ")";
        return false;
      }
      visitors[slot].push_back({linear, w->ordered_rank(st)});
    }
  }
  for (auto& [slot, v] : visitors) {
    std::sort(v.begin(), v.end(), [](const auto& x, const auto& y) { return x.first > y.first; });
    for (size_t i = 0; i < v.size(); ++i)
      if (v[i].second != int(i)) {
        std::ostringstream o;
        for (const auto& [box, rank] : v) o << " (key box " << box << ", rank " << rank << ")";
        ADD_FAILURE() << "counter " << slot << ": visitors in decreasing key box order report" << o.str();
        return false;
      }
  }
  return true;
}

class TileWalkTest : public SeededTest {};

// The ordered kernel's launch order (ordered_launch_item): over a batch's launch slots every
// (key box, kv head) comes exactly once; per head, key boxes come in strictly decreasing order
// (the order of the adds, so every CTA waited on was dispatched earlier); and within a group of
// kOrderedHeadGroup heads, consecutive slots belong to different heads.
TEST_F(TileWalkTest, OrderedLaunchVisitsEveryBoxOncePerHeadInDecreasingOrder) {
  constexpr int G = nattn::cuda::kOrderedHeadGroup;
  for (int trial = 0; trial < 200; ++trial) {
    const int64_t boxes = rng.integer(1, 300);
    const int heads = int(rng.integer(1, 3 * G + 1));
    SCOPED_TRACE("boxes " + std::to_string(boxes) + ", heads " + std::to_string(heads));
    std::vector<int64_t> last(size_t(heads), boxes);  // per head, the last box seen
    std::vector<int> seen(size_t(boxes * heads), 0);
    int prev_head = -1;
    for (int64_t slot = 0; slot < boxes * heads; ++slot) {
      int64_t box = -1;
      int head = -1;
      nattn::cuda::ordered_launch_item(slot, boxes, heads, &box, &head);
      ASSERT_TRUE(box >= 0 && box < boxes && head >= 0 && head < heads)
          << "slot " << slot << ": " << box << ", " << head;
      ASSERT_EQ(seen[size_t(box * heads + head)]++, 0)
          << "slot " << slot << " repeats box " << box << " of head " << head;
      ASSERT_LT(box, last[size_t(head)]) << "slot " << slot << ": head " << head << "'s boxes do not decrease";
      last[size_t(head)] = box;
      const int group_size = std::min(G, heads - (head / G) * G);
      if (prev_head >= 0 && prev_head / G == head / G && group_size > 1)
        EXPECT_NE(prev_head, head) << "slot " << slot << ": two consecutive slots of one head in a group of "
                                   << group_size;
      prev_head = head;
    }
  }
}

TEST_F(TileWalkTest, ForwardWalkMatchesBruteForce) {
  for (int trial = 0; trial < 60; ++trial)
    if (!check_case(random_case(rng, false), rng)) return;
}

TEST_F(TileWalkTest, KeysOwnedWalkOverQueryHeadsMatchesBruteForce) {
  for (int trial = 0; trial < 60; ++trial)
    if (!check_case(random_case(rng, true), rng)) return;
}

TEST_F(TileWalkTest, PlacedForwardWalkMatchesBruteForce) {
  for (int trial = 0; trial < 80; ++trial)
    if (!check_case(random_placed_case(rng, false), rng)) return;
}

TEST_F(TileWalkTest, PlacedKeysOwnedWalkMatchesBruteForce) {
  for (int trial = 0; trial < 80; ++trial)
    if (!check_case(random_placed_case(rng, true), rng)) return;
}

// Aligned walks (the deterministic fast backward) still cover every attended pair once, and
// their ordered-add ranks are consistent across key boxes (check_order).
TEST_F(TileWalkTest, AlignedKeysOwnedWalkCoversPairsAndOrdersAdds) {
  for (int trial = 0; trial < 80; ++trial) {
    WalkCase c = rng.coin() ? random_case(rng, true) : random_placed_case(rng, true);
    c.align = true;
    if (!check_case(c, rng) || !check_order(c)) return;
  }
}

// The sm90 backward's pass over the additional keys (cuda/common/additional_keys.h): the problem
// additional_keys_geometry makes of a call, whatever the call's window, attends every (query,
// additional key) pair (SPEC.md: every query attends the additional keys), and the keys-owned
// walk over it (own boxes of 128 keys along axis 0, walked query boxes of 64) visits each pair
// exactly once (check_case).
TEST_F(TileWalkTest, AdditionalKeysPassAttendsEveryPairOnce) {
  for (int trial = 0; trial < 60; ++trial) {
    Geometry g = geometry(random_case(rng, false));
    g.num_additional = rng.integer(1, 300);
    const Geometry e = nattn::cuda::additional_keys_geometry(g);
    WalkCase c;
    c.rank = e.rank;
    c.placed = e.placed;
    for (int a = 0; a < c.rank; ++a) {
      c.extent[a] = e.extent[a];
      c.axis[a] = {e.kernel[a], e.stride[a], e.dilation[a], e.causal[a]};
      c.global[a] = e.global[a];
      c.q_origin[a] = e.query_origin[a];
      c.k_origin[a] = e.key_origin[a];
      c.k_extent[a] = e.key_extent[a];
      ASSERT_EQ(c.k_extent[a], a == 0 ? g.num_additional : 1) << "axis " << a;
      for (int64_t i = 0; i < c.extent[a]; ++i)
        for (int64_t j = 0; j < c.k_extent[a]; ++j)
          ASSERT_TRUE(spec_attends(c.axis[a], c.global[a], c.q_origin[a] + i, c.k_origin[a] + j))
              << "axis " << a << ": query " << i << " does not attend additional key " << j << " in " << c.describe();
    }
    ASSERT_EQ(c.placed, !(c.rank == 1 && g.num_additional == g.extent[0])) << c.describe();
    c.own[0] = 128;
    random_box(rng, c.rank, 6, c.walk);
    c.walks_queries = true;
    c.heads = int(rng.integer(1, 3));
    if (!check_case(c, rng)) return;
  }
}

// Placed configurations that random draws reach rarely: cross-attention (SPEC.md "Dense
// attention and cross-attention": G = max(N, Nk), k = G, both boxes at 0, causal or not) with
// more queries than keys and the reverse, a halo shard (query slab inside a wider key box),
// and a key box that no query's window reaches on one axis (every walk empty: out 0, lse -inf).
TEST_F(TileWalkTest, PlacedEdgeConfigurations) {
  std::vector<WalkCase> cases;
  auto cross = [&](int64_t n, int64_t nk, bool causal, int own, int walk, bool walks_queries) {
    WalkCase c;
    c.rank = 1;
    c.placed = true;
    c.global[0] = std::max(n, nk);
    c.extent[0] = n;
    c.k_extent[0] = nk;
    c.axis[0] = {c.global[0], 1, 1, causal};
    c.own[0] = own;
    c.walk[0] = walk;
    c.walks_queries = walks_queries;
    c.heads = walks_queries ? 2 : 1;
    c.num_additional = walks_queries ? 0 : 3;
    return c;
  };
  for (const bool causal : {false, true})
    for (const bool wq : {false, true}) {
      cases.push_back(cross(96, 17, causal, 16, 8, wq));
      cases.push_back(cross(17, 130, causal, 8, 16, wq));
      cases.push_back(cross(1, 40, causal, 4, 4, wq));
      cases.push_back(cross(65, 1, causal, 32, 2, wq));
    }
  for (const bool wq : {false, true}) {
    WalkCase c;  // a 2-D halo shard: queries rows 8..15 of 24, keys rows 5..18 (the slab + its halo)
    c.rank = 2;
    c.placed = true;
    c.global[0] = 24;
    c.global[1] = 10;
    c.extent[0] = 8;
    c.extent[1] = 10;
    c.q_origin[0] = 8;
    c.k_extent[0] = 14;
    c.k_extent[1] = 10;
    c.k_origin[0] = 5;
    c.axis[0] = {7, 2, 1, false};
    c.axis[1] = {3, 1, 2, false};
    c.own[0] = 4;
    c.own[1] = 2;
    c.walk[0] = 2;
    c.walk[1] = 4;
    c.walks_queries = wq;
    c.heads = wq ? 3 : 1;
    cases.push_back(c);
    WalkCase far = c;  // keys 0..3 on axis 0: queries 12..15 see none of them
    far.k_origin[0] = 0;
    far.k_extent[0] = 4;
    far.axis[0] = {3, 1, 1, true};
    cases.push_back(far);
  }
  for (const WalkCase& c : cases)
    if (!check_case(c, rng)) return;
}

// Worked configurations that random draws reach rarely: a whole-axis window, blocked
// (stride == kernel) attention, a one-position own box over a long causal axis, a walked box
// wider than the group, and additional keys that fill their tiles exactly.
TEST_F(TileWalkTest, EdgeConfigurations) {
  std::vector<WalkCase> cases;
  {
    WalkCase c;  // full attention along one axis, walked boxes wider than the group
    c.rank = 1;
    c.extent[0] = 10;
    c.axis[0] = {10, 1, 1, false};
    c.own[0] = 4;
    c.walk[0] = 16;
    cases.push_back(c);
  }
  {
    WalkCase c;  // blocked attention, own box = block
    c.rank = 2;
    c.extent[0] = 12;
    c.extent[1] = 9;
    c.axis[0] = {4, 4, 1, false};
    c.axis[1] = {3, 3, 1, false};
    c.own[0] = 4;
    c.own[1] = 4;
    c.walk[0] = 2;
    c.walk[1] = 8;
    c.num_additional = 64;
    cases.push_back(c);
  }
  {
    WalkCase c;  // long causal axis with stride and dilation, single-position own box
    c.rank = 1;
    c.extent[0] = 61;
    c.axis[0] = {7, 3, 2, true};
    c.own[0] = 1;
    c.walk[0] = 4;
    c.num_additional = 5;
    cases.push_back(c);
  }
  {
    WalkCase c;  // 3-D, dK/dV over 4 heads, every axis causal
    c.rank = 3;
    c.extent[0] = 5;
    c.extent[1] = 7;
    c.extent[2] = 9;
    c.axis[0] = {2, 1, 1, true};
    c.axis[1] = {3, 2, 2, true};
    c.axis[2] = {4, 4, 1, true};
    c.own[0] = 2;
    c.own[1] = 2;
    c.own[2] = 4;
    c.walk[0] = 1;
    c.walk[1] = 4;
    c.walk[2] = 2;
    c.walks_queries = true;
    c.heads = 4;
    cases.push_back(c);
  }
  for (const WalkCase& c : cases)
    if (!check_case(c, rng)) return;
}

// dK/dV of additional keys: every query in token order, per head, never masked.
TEST_F(TileWalkTest, ExtraOnlyWalkVisitsEveryTilePerHead) {
  for (int trial = 0; trial < 20; ++trial) {
    const int tiles = int(rng.integer(1, 9)), heads = int(rng.integer(1, 4)), rows = 1 << rng.integer(0, 7);
    SCOPED_TRACE("tiles " + std::to_string(tiles) + ", heads " + std::to_string(heads));
    auto w = std::make_unique<TileWalk>();
    w->init_extra_only(tiles, rows);
    w->begin(heads, INT64_MAX);
    EXPECT_FALSE(w->empty);
    const std::vector<Step> steps = ring_sequence(*w, size_t(tiles * heads) + 1);
    ASSERT_EQ(steps.size(), size_t(tiles * heads));
    for (int h = 0; h < heads; ++h)
      for (int j = 0; j < tiles; ++j) {
        const Step& s = steps[size_t(h * tiles + j)];
        EXPECT_EQ(s.head, h);
        EXPECT_EQ(s.tile, j);
        EXPECT_EQ(s.full, 1);
        EXPECT_EQ(s.partial, 0);
      }
    EXPECT_FALSE(w->advance().valid);
  }
}

TEST(TileWalkHelpers, BoxPositionsAreRowMajorWithAxisTwoFastest) {
  const int shift[3] = {1, 2, 3};
  const int start[3] = {5, 7, 11};
  for (int r = 0; r < 64; ++r) {
    int pos[3];
    nattn::cuda::box_position(r, shift, start, pos);
    EXPECT_EQ(pos[0], start[0] + r / 32);
    EXPECT_EQ(pos[1], start[1] + (r / 8) % 4);
    EXPECT_EQ(pos[2], start[2] + r % 8);
  }
  EXPECT_EQ(nattn::cuda::ring_next(0), 1);
  EXPECT_EQ(nattn::cuda::ring_next(1), 2);
  EXPECT_EQ(nattn::cuda::ring_next(2), 0);
}

}  // namespace
}  // namespace nattn_test
