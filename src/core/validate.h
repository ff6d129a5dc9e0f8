// Layer: core. Argument validation for every entry point. Each error names the argument,
// its value and the rule; callers run these before touching any output.
#pragma once
#include <vector>

#include "nattn/api.h"

namespace nattn {

// What a validation reads. kFull is every check. kShapes is every check that needs no memory:
// shapes, dtypes, devices, strides, 64-bit offsets and the rules of SPEC.md, with the same
// messages; it skips null data pointers and outputs sharing memory, so a binding can reject a
// call before allocating its outputs, or on tensors that have no memory (torch's fake tensors).
enum class Validation { kFull, kShapes };

// `dense` relaxes kernel_size >= 2 (dense attention over one token is legal).
Status validate_problem(const Problem& p, bool dense = false);
Status validate_attention_problem(const AttentionProblem& p);
// Order: rank, presence of the optional tensors, each tensor's number of dimensions, the
// problem's rules, then each tensor's shape, strides, dtype and device (and memory, kFull).
Status validate_forward(const Problem& p, const ForwardTensors& t, bool dense = false,
                        Validation v = Validation::kFull);
Status validate_backward(const Problem& p, const BackwardTensors& t, bool dense = false,
                         Validation v = Validation::kFull);
Status validate_merge(const std::vector<TensorView>& outs, const std::vector<TensorView>& lses, const TensorView& out,
                      const TensorView& lse, Validation v = Validation::kFull);

}  // namespace nattn
