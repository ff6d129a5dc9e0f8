// Layer: core. Heads as a grid axis: a rewrite of a call that backends may plan instead of the
// call itself (the CUDA backend does where it shortens the kernels' walks; cuda/backend.cu).
//
// With Hkv > 1 key/value heads, Hq = g Hkv query heads (query head j g + i reads kv head j), no
// additional keys and no placed boxes, an attention over a rank-r grid (r <= 2) is exactly the
// attention over the rank-(r + 1) grid [Hkv, X1..Xr] with g query heads and one kv head whose
// window along the new axis 0 has kernel size 1: a query sees the keys of its own kv head only
// (SPEC.md: along each axis a query sees kernel_size keys of its dilation group; with kernel 1
// that is its own position), and the other axes keep their window. Tensors are the same
// memory: a key-side [B, X.., Hkv, C] is viewed as [B, Hkv, X.., 1, C], a query-side
// [B, X.., Hq, C] as [B, Hkv, X.., g, C] (axis 0 strides g heads), lse [B, X.., Hq] as
// [B, Hkv, X.., g].
//
// Why: small grids. A NAT 7x7 stage has 49 tokens per (batch, head); a fused kernel's box of
// 128 queries then holds one head, 38% full, and every CTA pays its fixed cost for it. Over
// [H, 7, 7] a box of 2 x 8 x 8 holds two heads' queries and its walked key box both heads' keys
// (the partial axis-0 mask keeps the heads apart): half the CTAs and walked tiles.
#pragma once
#include "nattn/api.h"
#include "nattn/problem.h"
#include "nattn/tensor.h"

namespace nattn {

// Whether the rewrite is exact for p: rank <= 2, heads_kv > 1, no additional keys, no placed
// boxes.
bool heads_axis_applies(const Problem& p);

// The rank-(r + 1) problem with g = heads_q / heads_kv query heads and one kv head (p as
// heads_axis_applies accepts it).
Problem heads_as_axis(const Problem& p);

// A call's tensor of p (as heads_axis_applies accepts it) in the rewritten call: a
// [B, X1..Xr, H, C] view (q, k, v, out, their gradients) or a [B, X1..Xr, H] one (lse, dlse),
// whose H heads are Hkv groups (of g query heads, or of one kv head), as
// [B, Hkv, X1..Xr, H / Hkv(, C)]: the same data, its strides permuted. An undefined view stays
// undefined.
TensorView heads_as_axis(const TensorView& t, const Problem& p);
ForwardTensors heads_as_axis(const ForwardTensors& t, const Problem& p);
BackwardTensors heads_as_axis(const BackwardTensors& t, const Problem& p);

}  // namespace nattn
