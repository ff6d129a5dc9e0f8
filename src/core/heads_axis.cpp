// Layer: core. See heads_axis.h.
#include "core/heads_axis.h"

namespace nattn {

bool heads_axis_applies(const Problem& p) {
  return p.rank <= 2 && p.heads_kv > 1 && p.heads_q % p.heads_kv == 0 && p.num_additional == 0 && !p.placed();
}

Problem heads_as_axis(const Problem& p) {
  Problem h = p;
  h.rank = p.rank + 1;
  h.heads_q = p.heads_q / p.heads_kv;
  h.heads_kv = 1;
  h.extent = {p.heads_kv, 1, 1};
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

TensorView heads_as_axis(const TensorView& t, const Problem& p) {
  if (!t.defined()) return t;
  // t: [B, X1..Xr, H(, C)]; out: [B, A, X1..Xr, H / A(, C)] with A = Hkv: head a (H / A) + i
  // of t is head i at position a of the new axis.
  const int rank = p.rank;
  const int64_t axis_heads = p.heads_kv;
  const bool has_cols = t.ndim == rank + 3;
  TensorView v = t;
  const int head = 1 + rank;
  const int64_t per = t.shape[head] / axis_heads;
  v.ndim = t.ndim + 1;
  v.shape[0] = t.shape[0];
  v.stride[0] = t.stride[0];
  v.shape[1] = axis_heads;
  v.stride[1] = t.stride[head] * per;
  for (int a = 0; a < rank; ++a) {
    v.shape[2 + a] = t.shape[1 + a];
    v.stride[2 + a] = t.stride[1 + a];
  }
  v.shape[2 + rank] = per;
  v.stride[2 + rank] = t.stride[head];
  if (has_cols) {
    v.shape[3 + rank] = t.shape[head + 1];
    v.stride[3 + rank] = t.stride[head + 1];
  }
  return v;
}

ForwardTensors heads_as_axis(const ForwardTensors& t, const Problem& p) {
  ForwardTensors r = t;
  for (TensorView* v : {&r.q, &r.k, &r.v, &r.out, &r.lse}) *v = heads_as_axis(*v, p);
  return r;
}

BackwardTensors heads_as_axis(const BackwardTensors& t, const Problem& p) {
  BackwardTensors r = t;
  for (TensorView* v : {&r.q, &r.k, &r.v, &r.out, &r.lse, &r.dout, &r.dlse, &r.dq, &r.dk, &r.dv})
    *v = heads_as_axis(*v, p);
  return r;
}

}  // namespace nattn
