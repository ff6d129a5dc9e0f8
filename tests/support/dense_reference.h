// Layer: tests. Dense masked attention in double over all tokens: the forward/backward oracle.
// Tensors are row-major vectors: q [B, N, Hq, D], k [B, N, Hkv, D], v [B, N, Hkv, Dv],
// additional keys/values [B, Na, Hkv, D|Dv], out [B, N, Hq, Dv], lse [B, N, Hq].
#pragma once
#include <cstdint>
#include <vector>

#include "nattn/problem.h"
#include "support/spec_mask.h"

namespace nattn_test {

struct DenseSizes {
  int64_t batch = 1, tokens = 1, heads_q = 1, heads_kv = 1, head_dim = 1, head_dim_v = 1;
  int64_t num_additional = 0;
  double scale = 1.0;
};
// Sizes of a problem; scale follows SPEC.md (default 1/sqrt(D), an explicit one as given).
DenseSizes dense_sizes(const nattn::Problem& p);
DenseSizes dense_sizes(const nattn::AttentionProblem& p);

struct DenseInputs {
  std::vector<double> q, k, v, ka, va;
};
struct DenseForward {
  std::vector<double> out, lse;
};
struct DenseGrads {
  std::vector<double> dq, dk, dv, dka, dva;
};

// Every query attends to the keys the mask allows plus every additional key (one softmax).
DenseForward dense_forward(const DenseSizes& s, const TokenMask& mask, const DenseInputs& in);

// Analytic gradients of the forward for upstream gradients dout (and dlse when not null).
// With `received`, the gradients a backward computes from forward's results as it receives
// them (out rounded to a storage dtype, lse to float32): P = exp(s - lse), and the softmax
// term sum_j P_j dP_j as dout . out. Without, everything from the exact forward.
DenseGrads dense_backward(const DenseSizes& s, const TokenMask& mask, const DenseInputs& in,
                          const std::vector<double>& dout, const std::vector<double>* dlse,
                          const DenseForward* received = nullptr);

}  // namespace nattn_test
