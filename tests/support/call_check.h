// Layer: tests. One library call on fresh random inputs, checked against the dense oracle.
// Checked: status, inputs unchanged, every output element written and nothing around it,
// values within a dtype-appropriate tolerance.
#pragma once
#include <string>

#include "nattn/api.h"
#include "support/dense_reference.h"
#include "support/test_tensor.h"

namespace nattn_test {

struct CallConfig {
  // For `dense`, a rank-1 problem: extent[0] = seq_len and window.is_causal[0] = is_causal.
  nattn::Problem problem;
  bool dense = false;  // attention_forward/backward instead of forward/backward
  nattn::DType dtype = nattn::DType::kFloat32;
  bool strided = false;    // a random (mostly non-contiguous) layout for every tensor
  bool with_lse = true;    // forward: request lse
  bool with_dlse = false;  // backward: pass a gradient of lse
  std::string describe() const;
};

nattn::AttentionProblem attention_problem(const CallConfig& c);
DenseSizes sizes_of(const CallConfig& c);
TokenMask mask_of(const CallConfig& c);

struct CallTensors {
  TestTensor q, k, v, ka, va;       // inputs
  TestTensor out, lse;              // forward outputs; backward inputs
  TestTensor dout, dlse;            // backward inputs
  TestTensor dq, dk, dv, dka, dva;  // backward outputs
  nattn::ForwardTensors forward_views() const;
  nattn::BackwardTensors backward_views() const;
  DenseInputs dense_inputs() const;  // the stored (rounded) input values
  std::string describe() const;      // layouts
};

// Random inputs, poisoned outputs.
CallTensors make_forward_call(const CallConfig& c, Rng& rng);
// Random inputs and dout (and dlse), out/lse from the dense oracle, poisoned gradients.
CallTensors make_backward_call(const CallConfig& c, Rng& rng);

nattn::Status run_forward(const CallConfig& c, const CallTensors& t);
nattn::Status run_backward(const CallConfig& c, const CallTensors& t);

void check_forward(const CallConfig& c, Rng& rng);
void check_backward(const CallConfig& c, Rng& rng);

// Every element of `t` written and no byte around it (for outputs of a successful call).
void expect_fully_written(const TestTensor& t, const std::string& name);

}  // namespace nattn_test
