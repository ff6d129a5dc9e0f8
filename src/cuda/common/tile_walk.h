// Layer: cuda/common (host and device; the step sequence is unit-tested on the host).
// What one CTA works on: its own box of positions inside one
// dilation group per axis, and the walk over the boxes covering the union of what that box
// meets: key boxes over its queries' windows (forward, dQ) or query boxes over the queries
// whose windows contain its keys (dK/dV). Each walked box is classified as full (no masking),
// partial (masked) or outside (skipped) with core/tiles.h; extra tiles (additional keys in the
// forward/dQ walk) follow the neighborhood boxes.
#pragma once
#include "core/tiles.h"
#include "core/window.h"
#include "cuda/common/box_index.h"
#include "cuda/common/params.h"

namespace nattn::cuda {

// One step of a walk: a walked box (or an extra tile: additional keys, or a run of queries in
// token order) and how it must be treated.
struct Step {
  int start[3];  // neighborhood box: first position per axis
  int tile;      // walked index within the head; >= TileWalk::nbr_tiles for extra tiles
  int head;      // query head within the kv group (dK/dV)
  int partial;   // neighborhood: bit per axis that needs masking; extra: 1 if rows past the limit
  int full;      // 1 when nothing is masked
  int valid;     // 0 past the end of the walk
};

// Walk steps rotate through TileWalk::ring: slot k is computed, ring_next(k) is loading, and
// thread 0 fills ring_next(ring_next(k)) after the barrier that starts step k (nobody reads
// that slot any more).
NATTN_HD int ring_next(int slot) { return slot == 2 ? 0 : slot + 1; }

struct TileWalk {
  int group[3];  // dilation group per axis
  int lg[3];     // group length per axis (on the global grid when placed)
  // Placed boxes (Geometry::placed; SPEC.md "Placed boxes"): positions stay global group
  // positions, and rows are limited to their box. own_end / walk_end: the first group position
  // past the own / walked side's box (the group's end unless placed: then the query box's or
  // the key box's); own_off / walk_off: what token_offset adds to position * dilation to give
  // the row's index in that side's tensor (the group minus the box's origin; the group unless
  // placed). key_begin / key_end: the key box's group positions (0 / lg unless placed).
  bool placed;
  int own_end[3], walk_end[3];
  int own_off[3], walk_off[3];
  int key_begin[3], key_end[3];
  int own_start[3];  // first position of the own box (unclipped), per axis
  int own_shift[3], walk_shift[3];
  tiles::Box<3> own;  // the own box clipped to the group
  tiles::GroupGeometry<3> geo;
  // Key walks (forward, dQ): the own queries' window union and intersection per axis (group
  // positions), from which a walked key box's coverage is a few comparisons (axis_coverage).
  int key_union_lo[3], key_union_hi[3], key_inter_lo[3], key_inter_hi[3];
  int walk_begin[3];   // first walked position (the union's first, or its box when aligned), per axis
  int walk_origin[3];  // the walked side's first group position (0 unless placed): aligned boxes start here
  int n_walk[3];       // walked boxes per axis
  int nbr_tiles;       // neighborhood boxes walked in total
  int add_tiles;       // extra tiles after them: additional keys (forward, dQ) or queries in token order
  int block_rows;      // rows per extra tile
  bool walks_queries;  // dK/dV: the own box holds keys, the walk covers queries
  bool empty;          // the own box holds no position of its group
  bool tabled;         // the per-axis coverage tables hold every walked box
  // Per-axis coverage of each walked box (tiles::Coverage values). A box's coverage is the
  // minimum over its axes (outside < partial < full), so the walk needs no window math.
  static constexpr int kMaxAxisTiles = 1024;
  unsigned char axis_cov[3][kMaxAxisTiles];

  // One thread: decodes own box `linear` (row-major over [groups..., tiles...]). align_walk: the
  // walked boxes sit on the grid of walked-box multiples from walk_origin (the union's first box
  // rounded down), so that every CTA walking a position adds it in the same box: the ordered dQ
  // adds of the deterministic fast backward (ordered_rank) need that; others start at the union.
  NATTN_HD_CALL void init(const Geometry& g, const Tiling& t, int64_t linear, bool walks_queries_, int add_tiles_,
                          int block_rows_, bool align_walk = false) {
    int64_t idx = linear;
    int tile[3];
#pragma unroll
    for (int a = 2; a >= 0; --a) {
      tile[a] = int(idx % t.own_tiles[a]);
      idx /= t.own_tiles[a];
    }
#pragma unroll
    for (int a = 2; a >= 0; --a) {
      group[a] = int(idx % g.dilation[a]);
      idx /= g.dilation[a];
    }
    walks_queries = walks_queries_;
    empty = false;
    placed = g.placed;
    int walk_lo[3];
#pragma unroll
    for (int a = 0; a < 3; ++a) {
      const window::Axis ax{placed ? g.global[a] : g.extent[a], g.kernel[a], g.stride[a], g.dilation[a], g.causal[a]};
      lg[a] = int(window::group_length(ax, group[a]));
      // The query box's and the key box's positions in this group (the whole group unless placed).
      window::Range qr{0, lg[a]}, kr{0, lg[a]};
      if (placed) {
        qr = window::group_positions_in(ax, group[a], g.query_origin[a], g.query_origin[a] + g.extent[a]);
        kr = window::group_positions_in(ax, group[a], g.key_origin[a], g.key_origin[a] + g.key_extent[a]);
      }
      const window::Range own_r = walks_queries ? kr : qr, walk_r = walks_queries ? qr : kr;
      const int q_off = group[a] - int(placed ? g.query_origin[a] : 0);
      const int k_off = group[a] - int(placed ? g.key_origin[a] : 0);
      own_end[a] = int(own_r.end);
      walk_lo[a] = int(walk_r.begin);
      walk_origin[a] = walk_lo[a];
      walk_end[a] = int(walk_r.end);
      own_off[a] = walks_queries ? k_off : q_off;
      walk_off[a] = walks_queries ? q_off : k_off;
      key_begin[a] = int(kr.begin);
      key_end[a] = int(kr.end);
      own_shift[a] = t.own_shift[a];
      walk_shift[a] = t.walk_shift[a];
      own_start[a] = int(own_r.begin) + (tile[a] << own_shift[a]);
      const int end = own_start[a] + (1 << own_shift[a]);
      if (own_start[a] >= own_end[a]) empty = true;
      own.r[a] = {own_start[a], end < own_end[a] ? end : own_end[a]};
      geo.Lg[a] = lg[a];
      geo.kernel[a] = g.kernel[a];
      geo.stride[a] = g.stride[a];
      geo.causal[a] = g.causal[a];
    }
    nbr_tiles = 0;
    add_tiles = add_tiles_;
    block_rows = block_rows_;
    if (empty) return;
    // The walked union: the own keys' queries, or the own queries' keys (tiles::key_box's union,
    // kept per axis with the intersection for axis_coverage).
    tiles::Box<3> u;
    if (walks_queries) {
      u = tiles::query_box(own, geo);
    } else {
#pragma unroll
      for (int a = 0; a < 3; ++a) {
        u.r[a] = tiles::key_union(own.r[a], geo.Lg[a], geo.kernel[a], geo.stride[a], geo.causal[a]);
        const window::Range in =
            tiles::key_intersection(own.r[a], geo.Lg[a], geo.kernel[a], geo.stride[a], geo.causal[a]);
        key_union_lo[a] = int(u.r[a].begin);
        key_union_hi[a] = int(u.r[a].end);
        key_inter_lo[a] = int(in.begin);
        key_inter_hi[a] = int(in.end);
      }
    }
    // Placed: only walked positions inside the walked side's box (an empty range: no box).
    if (placed) {
      for (int a = 0; a < 3; ++a) u.r[a] = window::intersect(u.r[a], {walk_lo[a], walk_end[a]});
    }
    nbr_tiles = 1;
#pragma unroll
    for (int a = 0; a < 3; ++a) {
      const int first = int(u.r[a].begin);
      walk_begin[a] = align_walk ? walk_lo[a] + (((first - walk_lo[a]) >> walk_shift[a]) << walk_shift[a]) : first;
      const int span = u.r[a].empty() ? 0 : int(u.r[a].end) - walk_begin[a];
      n_walk[a] = (span + (1 << walk_shift[a]) - 1) >> walk_shift[a];
      nbr_tiles *= n_walk[a];
    }
    tabled = n_walk[0] <= kMaxAxisTiles && n_walk[1] <= kMaxAxisTiles && n_walk[2] <= kMaxAxisTiles;
  }

  // One thread: a walk of `tiles` extra tiles only (dK/dV of additional keys: every query).
  NATTN_HD_CALL void init_extra_only(int tiles, int block_rows_) {
    empty = false;
    placed = false;
    tabled = true;
    nbr_tiles = 0;
    add_tiles = tiles;
    block_rows = block_rows_;
  }

  // Rows left in the group from a box start, per axis (a box row is inside iff every
  // coordinate is below these).
  NATTN_HD_CALL void rows_left(const int (&start)[3], int (&count)[3]) const {
#pragma unroll
    for (int a = 0; a < 3; ++a) count[a] = lg[a] - start[a];
  }

  // The keys (group positions) that query position p attends along axis a, as the masks test
  // them (fragment/mask.cuh): its window, clipped to the key box when placed (possibly empty).
  // Positions past the group are clamped (their rows are never stored, or carry lse = +inf).
  NATTN_HD_CALL window::Range mask_window(int a, int p) const {
    const int q = p < lg[a] ? p : lg[a] - 1;
    const window::Range r = window::group_window(q, geo.Lg[a], geo.kernel[a], geo.stride[a], geo.causal[a]);
    return placed ? window::intersect(r, {key_begin[a], key_end[a]}) : r;
  }

  // Own rows left in the own side's box from a box start, per axis (own_start: the own box's
  // rows; placed problems limit them to the query or key box, rows_left to the group).
  NATTN_HD_CALL void own_rows_left(const int (&start)[3], int (&count)[3]) const {
#pragma unroll
    for (int a = 0; a < 3; ++a) count[a] = own_end[a] - start[a];
  }

  // The same for a walked box's rows (keys: the key box; queries: the query box).
  NATTN_HD_CALL void walk_rows_left(const int (&start)[3], int (&count)[3]) const {
#pragma unroll
    for (int a = 0; a < 3; ++a) count[a] = walk_end[a] - start[a];
  }

  // Coverage along axis a of walked box i. Walked key boxes are classified unclipped: keys past
  // the group are attended by nobody, so such a box is partial and gets masked; placed, keys
  // past the key box likewise (a box reaching past it is at most partial; the windows the mask
  // tests are clipped to the key box). Walked query boxes are clipped: rows past the group (the
  // query box) carry lse = +inf and contribute nothing.
  // A key walk's coverage is tiles::classify against the own queries' union and intersection,
  // which init computed once (the same comparisons); a query walk classifies each box's queries.
  // kWalk names the walk's kind at compile time where the kernel knows it (the sm90 forward and
  // dQ producers: kKeyWalk), so the other kind's window math is not compiled into them.
  enum : int { kAnyWalk = 0, kKeyWalk = 1, kQueryWalk = 2 };
  template <int kWalk = kAnyWalk>
  NATTN_HD_CALL tiles::Coverage axis_coverage(int a, int i) const {
    const int s = walk_begin[a] + (i << walk_shift[a]);
    const int e = s + (1 << walk_shift[a]);
    const bool queries = kWalk == kAnyWalk ? walks_queries : kWalk == kQueryWalk;
    if (queries) {
      const window::Range q{s, e < walk_end[a] ? e : walk_end[a]};
      return tiles::classify(q, own.r[a], geo.Lg[a], geo.kernel[a], geo.stride[a], geo.causal[a]);
    }
    // Placed, keys past the key box are attended by nobody: the box is classified clipped and
    // is at most partial.
    const bool past = placed && e > walk_end[a];
    const int end = past ? walk_end[a] : e;
    if (end <= key_union_lo[a] || s >= key_union_hi[a]) return tiles::Coverage::kOutside;
    if (!past && key_inter_lo[a] <= s && end <= key_inter_hi[a]) return tiles::Coverage::kFull;
    return tiles::Coverage::kPartial;
  }

  // All threads: fills the per-axis coverage tables (after init, before any coverage call).
  NATTN_HD_CALL void fill_tables(int thread, int threads) {
    for (int a = 0; a < 3; ++a)
      for (int i = thread; i < n_walk[a] && tabled; i += threads) axis_cov[a][i] = (unsigned char)axis_coverage(a, i);
  }

  // ---- Ordered dQ adds (the deterministic fast backward; a query walk initialised with
  // align_walk). The CTAs whose walks visit an aligned query box add their dQ partials into it in
  // decreasing order of their own key box (row-major over this group's key boxes), so that the
  // sums are bitwise the same every run: this box's rank is the number of those CTAs with a larger
  // key box. Along each axis the key boxes that the box's queries attend are a run [kf, kl]
  // (windows are intervals that move monotonically with the query: their union over the box is
  // [window(first).begin, window(last).end)), and a key box's walk visits the query box iff it is
  // in the run on every axis (the walk's coverage test is the same statement from the key side),
  // so the visitors are the product of the runs and the rank is a mixed-radix number. A larger key
  // box starts its walk no earlier, so it reaches a shared query box in fewer steps: in this
  // order the adds rarely wait (device/family.cu launches key boxes in decreasing order too, so
  // every CTA waited on is resident or done).

  // The walked box's index along axis a among the aligned boxes from walk_origin.
  NATTN_HD_CALL int query_box_index(int a, const Step& st) const {
    return (st.start[a] - walk_origin[a]) >> walk_shift[a];
  }

  // This key box's rank among the visitors of walked query box st (a neighborhood step).
  NATTN_HD_CALL int ordered_rank(const Step& st) const {
    int rank = 0;
#pragma unroll
    for (int a = 0; a < 3; ++a) {
      const int qs = st.start[a];
      const int qe = qs + (1 << walk_shift[a]) < walk_end[a] ? qs + (1 << walk_shift[a]) : walk_end[a];
      const window::Range first = window::group_window(qs, geo.Lg[a], geo.kernel[a], geo.stride[a], geo.causal[a]);
      const window::Range last = window::group_window(qe - 1, geo.Lg[a], geo.kernel[a], geo.stride[a], geo.causal[a]);
      const int lo = int(first.begin) > key_begin[a] ? int(first.begin) : key_begin[a];
      const int hi = int(last.end) < key_end[a] ? int(last.end) : key_end[a];
      const int kf = (lo - key_begin[a]) >> own_shift[a], kl = (hi - 1 - key_begin[a]) >> own_shift[a];
      const int own = (own_start[a] - key_begin[a]) >> own_shift[a];
      rank = rank * (kl - kf + 1) + (kl - own);
    }
    return rank;
  }

  // ---- The schedule: one thread advances it, everyone reads its steps from shared memory.
  // Per-thread tile decoding (a division and a modulo per axis per tile, several times per
  // tile) was a third of the kernels' instructions; one thread stepping an odometer costs
  // a few table reads per tile instead.
  int heads;            // query heads walked per kv head (dK/dV); 1 otherwise
  int64_t extra_limit;  // extra tiles: rows at or past this count are masked (Na), or none
  int cur_head, cur_t, cur_i[3];
  Step ring[3];  // current, next and the one after (see the kernels' loops)

  // One thread, after init: prepares the walk over `heads_` heads.
  NATTN_HD_CALL void begin(int heads_, int64_t extra_limit_) {
    heads = heads_;
    extra_limit = extra_limit_;
    cur_head = 0;
    cur_t = 0;
    cur_i[0] = cur_i[1] = cur_i[2] = 0;
  }

  // One thread, after begin() and fill_tables(): the first two steps of the ring.
  NATTN_HD_CALL void start_ring() {
    ring[0] = advance();
    ring[1] = advance();
  }

  // One thread: the next walked box that is not fully outside (valid == 0 past the end).
  // use_tables = false takes every coverage from the windows, not from the tables: the same
  // steps, for a walk whose tables are not filled yet (the sm90 backward's first steps, issued
  // while the tables fill).
  template <int kWalk = kAnyWalk>
  NATTN_HD_CALL Step advance(bool use_tables = true) {
    Step st{};
    while (cur_head < heads) {
      while (cur_t < nbr_tiles) {
        int c = int(tiles::Coverage::kFull), mask = 0;
#pragma unroll
        for (int a = 0; a < 3; ++a) {
          const int ca = tabled && use_tables ? int(axis_cov[a][cur_i[a]]) : int(axis_coverage<kWalk>(a, cur_i[a]));
          if (ca == int(tiles::Coverage::kPartial)) mask |= 1 << a;
          c = ca < c ? ca : c;
          st.start[a] = walk_begin[a] + (cur_i[a] << walk_shift[a]);
        }
        st.tile = cur_t;
        // Step the odometer (axis 2 fastest, as the linear tile order).
        ++cur_t;
        if (++cur_i[2] == n_walk[2]) {
          cur_i[2] = 0;
          if (++cur_i[1] == n_walk[1]) {
            cur_i[1] = 0;
            ++cur_i[0];
          }
        }
        if (c != int(tiles::Coverage::kOutside)) {
          st.head = cur_head;
          st.partial = mask;
          st.full = c == int(tiles::Coverage::kFull);
          st.valid = 1;
          return st;
        }
      }
      if (cur_t < nbr_tiles + add_tiles) {
        st.tile = cur_t;
        st.head = cur_head;
        const int64_t rows_end = int64_t(cur_t - nbr_tiles + 1) * block_rows;
        st.full = rows_end <= extra_limit;
        st.partial = st.full ? 0 : 1;
        st.valid = 1;
        ++cur_t;
        return st;
      }
      ++cur_head;
      cur_t = 0;
      cur_i[0] = cur_i[1] = cur_i[2] = 0;
    }
    return st;
  }
};

}  // namespace nattn::cuda
