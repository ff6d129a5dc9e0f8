// Layer: cuda. The generic (SIMT) kernels: exact for every dtype, head dim and stride; the
// CUDA backend uses them where no fused tensor-core kernel applies (fp32, fp64, odd layouts).
#pragma once
#include "cuda/params.h"
#include "nattn/status.h"
#include "nattn/tensor.h"

namespace nattn::cuda::generic {

Status forward(const ForwardParams& p, DType dtype, void* stream);
// Needs p.delta: a [B, N, Hq] float workspace on the device.
Status backward(const BackwardParams& p, DType dtype, void* stream);
// Only Delta_i = dout_i . out_i - dlse_i into p.delta (the fused backward's first step).
Status backward_delta(const BackwardParams& p, DType dtype, void* stream);

}  // namespace nattn::cuda::generic
