// Layer: cuda/common. The fast backward's last pass: dQ = the float32 partial sums the fast
// kernels added into p.dq_accum ([B, X1..Xr, Hq, D] contiguous, already times the scale),
// converted to dQ's dtype and written in its layout.
#pragma once
#include <cuda_runtime.h>

#include "cuda/common/params.h"
#include "nattn/status.h"
#include "nattn/tensor.h"

namespace nattn::cuda {

// The strides of the dQ workspace as a [B, X1..Xr, Hq, D] tensor (contiguous), and its bytes.
Strides dq_accum_strides(const Geometry& g);
size_t dq_accum_bytes(const Geometry& g);

Status run_dq_convert(const BackwardParams& p, DType dtype, cudaStream_t stream);

}  // namespace nattn::cuda
