// Layer: core. Host-side choice of the query-tile and key-tile box shapes of fused kernels.
//
// A fused kernel's CTA owns a box of BM query positions (one dilation group per axis) and
// walks the union of their windows in key boxes of BN positions. The best shapes depend on
// the window: this picks, among power-of-two boxes, the pair that minimises the number of
// key tiles visited over the whole grid, i.e. the tensor-core work. Because tiles form a
// Cartesian product, that count factorises per axis and is exact (up to tiles skipped as
// fully outside, which only causal windows produce).
#pragma once
#include <array>
#include <cstdint>

#include "nattn/problem.h"

namespace nattn {

struct TileShapes {
  std::array<int, 3> q{1, 1, 1};  // query box per axis (product = BM)
  std::array<int, 3> k{1, 1, 1};  // key box per axis (product = BN)
  double key_tiles = 0;           // walked tiles visited per (batch, head), all dilation groups
};

// Which box a CTA owns. Forward and dQ kernels own a query box and walk key boxes over the
// union of its windows; the dK/dV kernel owns a key box and walks query boxes over the union
// of the queries that attend it (the inverse windows). The walked-tile count factorises per
// axis either way.
enum class TileRole { kQueriesOwned, kKeysOwned };

// ceil(log2(x)) for x >= 1: the shift of a power-of-two box extent.
int log2_ceil(int x);

// Pass a problem with rank 1..3; BM and BN powers of two. With kKeysOwned, `block_k` is the
// owned key box and `block_q` the walked query box. `max_box[a]` > 0 caps both boxes' extent
// along axis a (a TMA box spans at most 256 elements, box x dilation); when no pair of shapes
// fits the caps, key_tiles is -1.
TileShapes choose_tile_shapes(const Problem& p, int block_q, int block_k, TileRole role = TileRole::kQueriesOwned,
                              const std::array<int, 3>& max_box = {0, 0, 0});

// Walked tiles visited for given shapes (per batch and head, all dilation groups).
double count_key_tiles(const Problem& p, const std::array<int, 3>& q, const std::array<int, 3>& k,
                       TileRole role = TileRole::kQueriesOwned);

}  // namespace nattn
