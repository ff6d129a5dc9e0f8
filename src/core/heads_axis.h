// Layer: core. Heads as a grid axis: a rewrite of a call that backends may plan instead of the
// call itself (the CUDA backend does where it shortens the kernels' walks; cuda/backend.cu).
//
// With as many key/value heads as query heads (H), no additional keys and no placed boxes, an
// attention over a rank-r grid (r <= 2) with H heads is exactly the attention over the
// rank-(r + 1) grid [H, X1..Xr] with one head whose window along the new axis 0 has kernel size
// 1: a query sees the keys of its own head only (SPEC.md: along each axis a query sees
// kernel_size keys of its dilation group; with kernel 1 that is its own position), and the
// other axes keep their window. Tensors are the same memory: [B, X.., H, C] is viewed as
// [B, H, X.., 1, C] (lse [B, X.., H] as [B, H, X.., 1]).
//
// Why: small grids. A NAT 7x7 stage has 49 tokens per (batch, head); a fused kernel's box of
// 128 queries then holds one head, 38% full, and every CTA pays its fixed cost for it. Over
// [H, 7, 7] a box of 2 x 8 x 8 holds two heads' queries and its walked key box both heads' keys
// (the partial axis-0 mask keeps the heads apart): half the CTAs and walked tiles.
#pragma once
#include "nattn/problem.h"
#include "nattn/tensor.h"

namespace nattn {

// Whether the rewrite is exact for p: rank <= 2, heads_q == heads_kv > 1, no additional keys,
// no placed boxes.
bool heads_axis_applies(const Problem& p);

// The rank-(r + 1) single-head problem (p as heads_axis_applies accepts it).
Problem heads_as_axis(const Problem& p);

// The view of a [B, X1..Xr, H, C] tensor (has_cols) or a [B, X1..Xr, H] one (lse, dlse) as
// [B, H, X1..Xr, 1, C] or [B, H, X1..Xr, 1]: the same data, its strides permuted. An undefined
// view stays undefined.
TensorView heads_as_axis(const TensorView& t, int rank, bool has_cols);

}  // namespace nattn
