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
  // Run the call with its heads as a grid axis (core/heads_axis.h: the rewritten problem on
  // heads_as_axis views of the same tensors, through the reference backend directly, as a
  // backend runs it; for problems heads_axis_applies accepts), checked against the oracle of
  // the call as it is.
  bool heads_axis = false;
  std::string describe() const;
};

nattn::AttentionProblem attention_problem(const CallConfig& c);
// A random call: ranks 1..max_rank, odd extents, every window parameter per axis, grouped heads,
// Dv != D, additional keys, a scale (0 and negative too), every dtype, strided views, lse and
// dlse or not.
CallConfig random_call_config(Rng& rng, int max_rank);
DenseSizes sizes_of(const CallConfig& c);
TokenMask mask_of(const CallConfig& c);

// The library's tensor slots from any set of tensors with view() and the slots' names
// (q, k, v, ka, va, out, lse; dout, dlse, dq, dk, dv, dka, dva for the backward).
template <class T>
nattn::ForwardTensors forward_views_of(const T& c) {
  nattn::ForwardTensors f;
  f.q = c.q.view();
  f.k = c.k.view();
  f.v = c.v.view();
  f.additional_k = c.ka.view();
  f.additional_v = c.va.view();
  f.out = c.out.view();
  f.lse = c.lse.view();
  return f;
}

template <class T>
nattn::BackwardTensors backward_views_of(const T& c) {
  nattn::BackwardTensors b;
  b.q = c.q.view();
  b.k = c.k.view();
  b.v = c.v.view();
  b.additional_k = c.ka.view();
  b.additional_v = c.va.view();
  b.out = c.out.view();
  b.lse = c.lse.view();
  b.dout = c.dout.view();
  b.dlse = c.dlse.view();
  b.dq = c.dq.view();
  b.dk = c.dk.view();
  b.dv = c.dv.view();
  b.d_additional_k = c.dka.view();
  b.d_additional_v = c.dva.view();
  return b;
}

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
