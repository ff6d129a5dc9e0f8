// Layer: core. Bridges the public Problem to the per-axis window parameters.
#pragma once
#include "core/window.h"
#include "nattn/problem.h"

namespace nattn {

inline window::Axis axis(const Problem& p, int a) {
  return {p.extent[a], p.window.kernel_size[a], p.window.stride[a], p.window.dilation[a], p.window.is_causal[a]};
}

// Dense attention is neighborhood attention whose window is the whole sequence.
inline Problem as_neighborhood(const AttentionProblem& d) {
  Problem p;
  p.rank = 1;
  p.batch = d.batch;
  p.extent = {d.seq_len, 1, 1};
  p.heads_q = d.heads_q;
  p.heads_kv = d.heads_kv;
  p.head_dim = d.head_dim;
  p.head_dim_v = d.head_dim_v;
  p.window = Window::uniform(d.seq_len, 1, 1, d.is_causal);
  p.scale = d.scale;
  return p;
}

}  // namespace nattn
