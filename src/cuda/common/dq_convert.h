// Layer: cuda/common. The fast backward's last pass: dQ = the float32 partial sums the fast
// kernels added into p.dq_accum ([B, X1..Xr, Hq, dq_accum_cols] contiguous, already times the
// scale),
// converted to dQ's dtype and written in its layout.
#pragma once
#include <cuda_runtime.h>

#include "cuda/common/params.h"
#include "nattn/status.h"
#include "nattn/tensor.h"

namespace nattn::cuda {

// The bytes of the dQ workspace, a contiguous [B, X1..Xr, Hq, dq_accum_cols(g)] float tensor
// (its strides: contiguous_query_strides(g, dq_accum_cols(g)), params.h).
size_t dq_accum_bytes(const Geometry& g);
// Columns per query row of that workspace: the fast kernel's padded head dim (its TMA
// reduce-adds cover whole 32-column panels, and a map with heads packed beside the columns must
// not reach into the next head's), or head_dim where no fast row covers the call.
int64_t dq_accum_cols(const Geometry& g);

Status run_dq_convert(const BackwardParams& p, DType dtype, cudaStream_t stream);

}  // namespace nattn::cuda
