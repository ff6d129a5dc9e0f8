// Layer: cuda/sm80 device. Host entry points of the fused sm80+ kernels: what they can
// implement (with the reason when not) and their launches.
#pragma once
#include "cuda/params.h"
#include "nattn/problem.h"
#include "nattn/status.h"
#include "nattn/tensor.h"

namespace nattn::cuda::sm80 {

Status can_forward(const ForwardParams& p, DType dtype);
// `problem` is the call's problem (p.g is its kernel-side copy): tile shapes are chosen from it.
Status forward(const Problem& problem, ForwardParams p, DType dtype, void* stream);

Status can_backward(const BackwardParams& p, DType dtype);
// Needs p.delta (a [B, N, Hq] float workspace) and p.sdelta; computes Delta itself.
Status backward(const Problem& problem, const BackwardParams& p, DType dtype, void* stream);

}  // namespace nattn::cuda::sm80
