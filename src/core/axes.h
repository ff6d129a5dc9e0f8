// Layer: core. Bridges the public Problem to the per-axis window parameters.
#pragma once
#include "core/window.h"
#include "nattn/problem.h"

namespace nattn {

// The window parameters of axis a on the global grid (the whole grid unless placed).
inline window::Axis axis(const Problem& p, int a) {
  return {p.global_extent(a), p.window.kernel_size[a], p.window.stride[a], p.window.dilation[a], p.window.is_causal[a]};
}

// Where the query and key boxes of axis a sit on that grid.
inline window::Boxes boxes(const Problem& p, int a) {
  return {p.placement.query_origin[a], p.extent[a], p.placement.key_origin[a], p.key_extent(a)};
}

// Dense attention is neighborhood attention whose window is the whole sequence. With Nk != N
// the global sequence has max(N, Nk) tokens, the queries its first N and the keys its first
// Nk: a causal window [0, i] then gives SDPA's top-left aligned mask (query i sees keys j <= i).
inline Problem as_neighborhood(const AttentionProblem& d) {
  Problem p;
  p.rank = 1;
  p.batch = d.batch;
  p.extent = {d.seq_len, 1, 1};
  const int64_t nk = d.kv_seq_len > 0 ? d.kv_seq_len : d.seq_len;
  const int64_t global = nk > d.seq_len ? nk : d.seq_len;
  if (nk != d.seq_len) {
    p.placement.global_extent = {global, 0, 0};
    p.placement.key_extent = {nk, 0, 0};
  }
  p.heads_q = d.heads_q;
  p.heads_kv = d.heads_kv;
  p.head_dim = d.head_dim;
  p.head_dim_v = d.head_dim_v;
  p.window = Window::uniform(global, 1, 1, d.is_causal);
  p.scale = d.scale;
  return p;
}

}  // namespace nattn
