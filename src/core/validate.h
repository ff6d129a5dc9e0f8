// Layer: core. Argument validation for every entry point. Each error names the argument,
// its value and the rule; callers run these before touching any output.
#pragma once
#include <vector>

#include "nattn/api.h"

namespace nattn {

// `dense` relaxes kernel_size >= 2 (dense attention over one token is legal).
Status validate_problem(const Problem& p, bool dense = false);
Status validate_attention_problem(const AttentionProblem& p);
Status validate_forward(const Problem& p, const ForwardTensors& t, bool dense = false);
Status validate_backward(const Problem& p, const BackwardTensors& t, bool dense = false);
Status validate_merge(const std::vector<TensorView>& outs, const std::vector<TensorView>& lses,
                      const TensorView& out, const TensorView& lse);

}  // namespace nattn
