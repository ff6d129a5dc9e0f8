// Layer: cuda/common. Merging partial attentions by their logsumexp on the GPU: the CUDA side of
// nattn::merge_attentions (api.h), with reference_merge (cpu/reference.h) the CPU side.
#pragma once
#include <vector>

#include "nattn/status.h"
#include "nattn/tensor.h"

namespace nattn {

// outs[i] [..., H, Dv] and lses[i] [..., H] (float32) on one CUDA device, already validated
// (validate_merge); writes out and lse. Any strides and dtype; accumulates in float (double for
// float64). Runs on `stream` (a cudaStream_t; null = the legacy default stream) on the current
// device (the caller makes out's device current). More than 16 partials merge in rounds through out and lse,
// which rounds the running result to out's dtype between rounds.
Status cuda_merge(const std::vector<TensorView>& outs, const std::vector<TensorView>& lses, const TensorView& out,
                  const TensorView& lse, void* stream);

}  // namespace nattn
