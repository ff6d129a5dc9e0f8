// Layer: cuda/common. The backward's pre-pass, shared by every family:
// Delta_i = dout_i . out_i - dlse_i for every query row, with the row's lse in the log2
// domain, into the row workspace p.rows ([B, N, Hq, kRowColumns] float, contiguous: lse2, Delta,
// 0, 0; BackwardParams::rows). Where p.dq_accum is set (the fast mode), the same pass zeroes
// its rows, so the fast kernels' partial sums start from zero without a memset of their own.
#pragma once
#include <cuda_runtime.h>

#include "cuda/common/params.h"
#include "nattn/status.h"
#include "nattn/tensor.h"

namespace nattn::cuda {

Status run_delta(const BackwardParams& p, DType dtype, cudaStream_t stream);

}  // namespace nattn::cuda
