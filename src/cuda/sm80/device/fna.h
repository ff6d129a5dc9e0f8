// Layer: cuda/sm80 device. Host entry points of the fused sm80+ kernels: what they can
// implement (with the reason when not) and their launches.
#pragma once
#include "cuda/params.h"
#include "nattn/status.h"
#include "nattn/tensor.h"

namespace nattn::cuda::sm80 {

Status can_forward(const ForwardParams& p, DType dtype);
Status forward(ForwardParams p, DType dtype, void* stream);

Status can_backward(const BackwardParams& p, DType dtype);
Status backward(const BackwardParams& p, DType dtype, void* stream);

}  // namespace nattn::cuda::sm80
