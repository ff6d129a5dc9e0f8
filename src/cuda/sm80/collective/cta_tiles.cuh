// Layer: cuda/sm80 collective. What one CTA works on: its box of query positions inside one
// dilation group per axis, the union of their windows, and the walk over key boxes covering
// that union (neighborhood tiles first, then additional-key tiles), each classified as full
// (no masking), partial (masked) or outside (skipped) with core/tiles.h.
#pragma once
#include "core/tiles.h"
#include "core/window.h"
#include "cuda/params.h"

namespace nattn::cuda::sm80 {

struct CtaTiles {
  int group[3];         // dilation group per axis
  int lg[3];            // group length per axis
  int q_start[3];       // first query position of the box, per axis
  int q_tile[3], k_tile[3];
  tiles::Box<3> queries;  // valid query positions (clipped to the group)
  tiles::GroupGeometry<3> geo;
  int k_begin[3];       // first key position of the union, per axis
  int n_k[3];           // key tiles per axis
  int nbr_tiles;        // neighborhood key tiles in total
  int add_tiles;        // additional-key tiles
  bool empty;           // the box holds no query
  bool tabled;          // per-axis coverage tables hold every key tile
  // Per-axis coverage of each key tile (tiles::Coverage values). A box's coverage is the
  // minimum over its axes (outside < partial < full), so the walk needs no window math.
  static constexpr int kMaxAxisTiles = 1024;
  unsigned char axis_cov[3][kMaxAxisTiles];

  __device__ void init(const ForwardParams& p, int64_t linear_tile, int block_k) {
    const Geometry& g = p.g;
    int64_t idx = linear_tile;
    int tile[3];
#pragma unroll
    for (int a = 2; a >= 0; --a) { tile[a] = int(idx % p.q_tiles[a]); idx /= p.q_tiles[a]; }
    empty = false;
#pragma unroll
    for (int a = 2; a >= 0; --a) {
      group[a] = int(idx % g.dilation[a]);
      idx /= g.dilation[a];
    }
#pragma unroll
    for (int a = 0; a < 3; ++a) {
      const window::Axis ax{g.extent[a], g.kernel[a], g.stride[a], g.dilation[a], g.causal[a]};
      lg[a] = int(window::group_length(ax, group[a]));
      q_tile[a] = p.q_tile[a];
      k_tile[a] = p.k_tile[a];
      q_start[a] = tile[a] * q_tile[a];
      const int q_end = q_start[a] + q_tile[a] < lg[a] ? q_start[a] + q_tile[a] : lg[a];
      if (q_start[a] >= lg[a]) empty = true;
      queries.r[a] = {q_start[a], q_end};
      geo.Lg[a] = lg[a];
      geo.kernel[a] = g.kernel[a];
      geo.stride[a] = g.stride[a];
      geo.causal[a] = g.causal[a];
    }
    nbr_tiles = 0;
    add_tiles = int((g.num_additional + block_k - 1) / block_k);
    if (empty) return;
    const tiles::Box<3> u = tiles::key_box(queries, geo);
    nbr_tiles = 1;
#pragma unroll
    for (int a = 0; a < 3; ++a) {
      k_begin[a] = int(u.r[a].begin);
      n_k[a] = int((u.r[a].size() + k_tile[a] - 1) / k_tile[a]);
      nbr_tiles *= n_k[a];
    }
    tabled = n_k[0] <= kMaxAxisTiles && n_k[1] <= kMaxAxisTiles && n_k[2] <= kMaxAxisTiles;
  }

  // All threads: fills the per-axis coverage tables (after init, before any coverage call).
  __device__ void fill_tables(int thread, int threads) {
    for (int a = 0; a < 3; ++a)
      for (int i = thread; i < n_k[a] && tabled; i += threads) {
        const window::Range keys{k_begin[a] + i * k_tile[a], k_begin[a] + (i + 1) * k_tile[a]};
        axis_cov[a][i] = (unsigned char)tiles::classify(queries.r[a], keys, geo.Lg[a], geo.kernel[a], geo.stride[a],
                                                        geo.causal[a]);
      }
  }

  __device__ int total_tiles() const { return nbr_tiles + add_tiles; }

  // Key box (positions) of neighborhood tile t.
  __device__ tiles::Box<3> key_box(int t) const {
    tiles::Box<3> b;
#pragma unroll
    for (int a = 2; a >= 0; --a) {
      const int tc = t % n_k[a];
      t /= n_k[a];
      const int s = k_begin[a] + tc * k_tile[a];
      b.r[a] = {s, s + k_tile[a]};
    }
    return b;
  }

  // Coverage of tile t: neighborhood tiles by their box, additional tiles by the Na bound.
  __device__ tiles::Coverage coverage(int t, int64_t num_additional, int block_k) const {
    if (t >= nbr_tiles) {
      return int64_t(t - nbr_tiles + 1) * block_k <= num_additional ? tiles::Coverage::kFull
                                                                    : tiles::Coverage::kPartial;
    }
    if (!tabled) return tiles::classify_box<3>(queries, key_box(t), geo);
    int c = int(tiles::Coverage::kFull);
#pragma unroll
    for (int a = 2; a >= 0; --a) {
      const int ca = axis_cov[a][t % n_k[a]];
      t /= n_k[a];
      c = ca < c ? ca : c;
    }
    return tiles::Coverage(c);
  }

  // The first tile at or after t that is not fully outside (total_tiles() when none).
  __device__ int next_tile(int t, int64_t num_additional, int block_k) const {
    while (t < nbr_tiles && coverage(t, num_additional, block_k) == tiles::Coverage::kOutside) ++t;
    return t;
  }

  // Local box coordinates of row r of a box with dims `dims`.
  __device__ static void unflatten(int r, const int (&dims)[3], int (&l)[3]) {
    l[2] = r % dims[2];
    r /= dims[2];
    l[1] = r % dims[1];
    l[0] = r / dims[1];
  }
};

}  // namespace nattn::cuda::sm80
