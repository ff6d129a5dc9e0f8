// Layer: cuda/sm80 collective. What one CTA works on: its own box of positions inside one
// dilation group per axis, and the walk over the boxes covering the union of what that box
// meets: key boxes over its queries' windows (forward, dQ) or query boxes over the queries
// whose windows contain its keys (dK/dV). Each walked box is classified as full (no masking),
// partial (masked) or outside (skipped) with core/tiles.h; additional-key tiles follow the
// neighborhood tiles in the forward/dQ walk.
#pragma once
#include "core/tiles.h"
#include "core/window.h"
#include "cuda/params.h"

namespace nattn::cuda::sm80 {

// Splits row r of a box whose extents are 1 << shift[a] into per-axis coordinates (axis 2
// fastest), with shifts only: the division this replaces dominated the kernels' instructions.
__device__ __forceinline__ void box_local(int r, const int (&shift)[3], int (&l)[3]) {
  l[2] = r & ((1 << shift[2]) - 1);
  l[1] = (r >> shift[2]) & ((1 << shift[1]) - 1);
  l[0] = r >> (shift[1] + shift[2]);
}

struct TileWalk {
  int group[3];           // dilation group per axis
  int lg[3];              // group length per axis
  int fixed_start[3];     // first position of the own box (unclipped), per axis
  int fixed_shift[3], walk_shift[3];
  tiles::Box<3> fixed;    // the own box clipped to the group
  tiles::GroupGeometry<3> geo;
  int walk_begin[3];      // first walked position (the union's first), per axis
  int n_walk[3];          // walked boxes per axis
  int nbr_tiles;          // neighborhood boxes walked in total
  int add_tiles;          // additional-key tiles after them (forward / dQ)
  bool walks_queries;     // dK/dV: the own box holds keys, the walk covers queries
  bool empty;             // the own box holds no position of its group
  bool tabled;            // the per-axis coverage tables hold every walked box
  // Per-axis coverage of each walked box (tiles::Coverage values). A box's coverage is the
  // minimum over its axes (outside < partial < full), so the walk needs no window math.
  static constexpr int kMaxAxisTiles = 1024;
  unsigned char axis_cov[3][kMaxAxisTiles];

  // One thread: decodes own box `linear` (row-major over [groups..., tiles...]).
  __device__ void init(const Geometry& g, const Tiling& t, int64_t linear, bool walks_queries_, int add_tiles_) {
    int64_t idx = linear;
    int tile[3];
#pragma unroll
    for (int a = 2; a >= 0; --a) { tile[a] = int(idx % t.fixed_tiles[a]); idx /= t.fixed_tiles[a]; }
#pragma unroll
    for (int a = 2; a >= 0; --a) { group[a] = int(idx % g.dilation[a]); idx /= g.dilation[a]; }
    walks_queries = walks_queries_;
    empty = false;
#pragma unroll
    for (int a = 0; a < 3; ++a) {
      const window::Axis ax{g.extent[a], g.kernel[a], g.stride[a], g.dilation[a], g.causal[a]};
      lg[a] = int(window::group_length(ax, group[a]));
      fixed_shift[a] = t.fixed_shift[a];
      walk_shift[a] = t.walk_shift[a];
      fixed_start[a] = tile[a] << fixed_shift[a];
      const int end = fixed_start[a] + (1 << fixed_shift[a]);
      if (fixed_start[a] >= lg[a]) empty = true;
      fixed.r[a] = {fixed_start[a], end < lg[a] ? end : lg[a]};
      geo.Lg[a] = lg[a];
      geo.kernel[a] = g.kernel[a];
      geo.stride[a] = g.stride[a];
      geo.causal[a] = g.causal[a];
    }
    nbr_tiles = 0;
    add_tiles = add_tiles_;
    if (empty) return;
    const tiles::Box<3> u = walks_queries ? tiles::query_box(fixed, geo) : tiles::key_box(fixed, geo);
    nbr_tiles = 1;
#pragma unroll
    for (int a = 0; a < 3; ++a) {
      walk_begin[a] = int(u.r[a].begin);
      n_walk[a] = int((u.r[a].size() + (1 << walk_shift[a]) - 1) >> walk_shift[a]);
      nbr_tiles *= n_walk[a];
    }
    tabled = n_walk[0] <= kMaxAxisTiles && n_walk[1] <= kMaxAxisTiles && n_walk[2] <= kMaxAxisTiles;
  }

  // Coverage along axis a of walked box i. Walked key boxes are classified unclipped: keys past
  // the group are attended by nobody, so such a box is partial and gets masked. Walked query
  // boxes are clipped: rows past the group carry lse = +inf and contribute nothing.
  __device__ tiles::Coverage axis_coverage(int a, int i) const {
    const int s = walk_begin[a] + (i << walk_shift[a]);
    const int e = s + (1 << walk_shift[a]);
    if (walks_queries) {
      const window::Range q{s, e < lg[a] ? e : lg[a]};
      return tiles::classify(q, fixed.r[a], geo.Lg[a], geo.kernel[a], geo.stride[a], geo.causal[a]);
    }
    return tiles::classify(fixed.r[a], window::Range{s, e}, geo.Lg[a], geo.kernel[a], geo.stride[a], geo.causal[a]);
  }

  // All threads: fills the per-axis coverage tables (after init, before any coverage call).
  __device__ void fill_tables(int thread, int threads) {
    for (int a = 0; a < 3; ++a)
      for (int i = thread; i < n_walk[a] && tabled; i += threads) axis_cov[a][i] = (unsigned char)axis_coverage(a, i);
  }

  __device__ int total_tiles() const { return nbr_tiles + add_tiles; }

  // First position of walked neighborhood box t, per axis.
  __device__ void walk_start(int t, int (&s)[3]) const {
#pragma unroll
    for (int a = 2; a >= 0; --a) {
      const int tc = t % n_walk[a];
      t /= n_walk[a];
      s[a] = walk_begin[a] + (tc << walk_shift[a]);
    }
  }

  // Coverage of walked box t; *partial_axes gets a bit per axis that needs masking.
  // Additional-key tiles (t >= nbr_tiles) are partial only past the last additional key.
  __device__ tiles::Coverage coverage(int t, int64_t num_additional, int block_k, int* partial_axes) const {
    if (t >= nbr_tiles) {
      const bool full = int64_t(t - nbr_tiles + 1) * block_k <= num_additional;
      *partial_axes = full ? 0 : 1;
      return full ? tiles::Coverage::kFull : tiles::Coverage::kPartial;
    }
    int c = int(tiles::Coverage::kFull), mask = 0;
#pragma unroll
    for (int a = 2; a >= 0; --a) {
      const int i = t % n_walk[a];
      t /= n_walk[a];
      const int ca = tabled ? int(axis_cov[a][i]) : int(axis_coverage(a, i));
      if (ca == int(tiles::Coverage::kPartial)) mask |= 1 << a;
      c = ca < c ? ca : c;
    }
    *partial_axes = mask;
    return tiles::Coverage(c);
  }

  // The first walked box at or after t that is not fully outside (total_tiles() when none).
  __device__ int next_tile(int t, int64_t num_additional, int block_k) const {
    int unused;
    while (t < nbr_tiles && coverage(t, num_additional, block_k, &unused) == tiles::Coverage::kOutside) ++t;
    return t;
  }
};

}  // namespace nattn::cuda::sm80
