// Layer: cpu. The reference backend: written straight from SPEC.md, double accumulation,
// deterministic, every dtype, rank, window parameter, grouped heads and additional keys.
// It is the oracle of every other backend.
#pragma once
#include <vector>

#include "core/backend.h"

namespace nattn {

const Backend& reference_backend();

Status reference_forward(const Problem& p, const ForwardTensors& t);
Status reference_backward(const Problem& p, const BackwardTensors& t);
Status reference_merge(const std::vector<TensorView>& outs, const std::vector<TensorView>& lses, const TensorView& out,
                       const TensorView& lse);

}  // namespace nattn
