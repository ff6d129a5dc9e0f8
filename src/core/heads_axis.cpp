// Layer: core. See heads_axis.h.
#include "core/heads_axis.h"

namespace nattn {

bool heads_axis_applies(const Problem& p) {
  return p.rank <= 2 && p.heads_q == p.heads_kv && p.heads_q > 1 && p.num_additional == 0 && !p.placed();
}

Problem heads_as_axis(const Problem& p) {
  Problem h = p;
  h.rank = p.rank + 1;
  h.heads_q = h.heads_kv = 1;
  h.extent = {p.heads_q, 1, 1};
  h.window = Window::uniform(1);
  for (int a = 0; a < p.rank; ++a) {
    h.extent[size_t(a) + 1] = p.extent[size_t(a)];
    h.window.kernel_size[size_t(a) + 1] = p.window.kernel_size[size_t(a)];
    h.window.stride[size_t(a) + 1] = p.window.stride[size_t(a)];
    h.window.dilation[size_t(a) + 1] = p.window.dilation[size_t(a)];
    h.window.is_causal[size_t(a) + 1] = p.window.is_causal[size_t(a)];
  }
  return h;
}

TensorView heads_as_axis(const TensorView& t, int rank, bool has_cols) {
  if (!t.defined()) return t;
  // t: [B, X1..Xr, H(, C)]; out: [B, H, X1..Xr, 1(, C)].
  TensorView v = t;
  const int head = 1 + rank;
  v.ndim = t.ndim + 1;
  v.shape[0] = t.shape[0];
  v.stride[0] = t.stride[0];
  v.shape[1] = t.shape[head];
  v.stride[1] = t.stride[head];
  for (int a = 0; a < rank; ++a) {
    v.shape[2 + a] = t.shape[1 + a];
    v.stride[2 + a] = t.stride[1 + a];
  }
  // The single head: extent 1, so its stride is never used (the next head's, for a tidy view).
  v.shape[2 + rank] = 1;
  v.stride[2 + rank] = t.stride[head];
  if (has_cols) {
    v.shape[3 + rank] = t.shape[head + 1];
    v.stride[3 + rank] = t.stride[head + 1];
  }
  return v;
}

}  // namespace nattn
