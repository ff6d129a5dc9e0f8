// Layer: cuda/common (host). The backward of a call's additional keys as a problem of its own
// (the sm90 family runs its dK/dV kernel on it; tests/core/tile_walk_test.cpp checks it).
#pragma once
#include "cuda/common/params.h"

namespace nattn::cuda {

// The backward of the additional keys as a problem of its own, run by a dK/dV kernel: every
// query of the call attends every additional key, so it is dense cross-attention between the
// call's query grid (its rank, extents and strides; dilation 1) and a key box of the Na
// additional keys along axis 0 (extent 1 along the others), with a window of the whole grid:
// Geometry's placed boxes (SPEC.md "Placed boxes"), at origin 0 in a global grid of
// max(query extent, key extent) per axis. The call's lse and Delta are this problem's too (P of
// an additional key is exp(S - lse) of the whole call). The neighborhood's dilation, stride and
// causality do not apply to additional keys.
inline Geometry additional_keys_geometry(const Geometry& g) {
  Geometry e = g;
  e.num_additional = 0;
  e.placed = false;
  for (int a = 0; a < 3; ++a) {
    e.key_extent[a] = a == 0 ? g.num_additional : 1;
    if (a >= g.rank) e.key_extent[a] = 1;
    e.global[a] = g.extent[a] > e.key_extent[a] ? g.extent[a] : e.key_extent[a];
    e.kernel[a] = e.global[a];
    e.stride[a] = e.dilation[a] = 1;
    e.causal[a] = false;
    e.query_origin[a] = e.key_origin[a] = 0;
    e.placed = e.placed || e.global[a] != e.extent[a] || e.key_extent[a] != e.extent[a];
  }
  e.key_tokens = g.num_additional;
  return e;
}

}  // namespace nattn::cuda
