// Layer: cuda/common. Copies between a strided tensor view and a dense row-major buffer: the
// plan's answer to a layout a fused family cannot read or write (expanded or stride-0
// gradients, non-unit-stride head dims, rows not 16-byte aligned). A copy costs microseconds;
// sending the call to the generic kernels instead would cost 10-100x.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "nattn/status.h"
#include "nattn/tensor.h"

namespace nattn::cuda {

// Dense row-major strides of a view's shape.
void dense_strides(const TensorView& v, int64_t (&strides)[kMaxDims]);

// dst (dense) <- src (strided view), or, with to_view, the view <- a dense buffer.
Status copy_to_dense(const TensorView& src, void* dense, cudaStream_t stream);
Status copy_from_dense(const void* dense, const TensorView& dst, cudaStream_t stream);

}  // namespace nattn::cuda
