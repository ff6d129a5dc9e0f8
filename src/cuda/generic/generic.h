// Layer: cuda/generic. The generic (SIMT) kernels: exact for every dtype, head dim and stride; the
// CUDA backend uses them where no fused tensor-core kernel applies (fp32, fp64, odd layouts).
#pragma once
#include "cuda/common/params.h"
#include "nattn/status.h"
#include "nattn/tensor.h"

namespace nattn::cuda::generic {

Status forward(const ForwardParams& p, DType dtype, void* stream);
// Needs p.rows filled by the Delta pre-pass (cuda/common/delta.h).
Status backward(const BackwardParams& p, DType dtype, void* stream);

}  // namespace nattn::cuda::generic
