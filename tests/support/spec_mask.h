// Layer: tests. SPEC.md's neighborhood, transcribed independently of src/core (the oracle).
#pragma once
#include <cstdint>
#include <vector>

#include "nattn/problem.h"

namespace nattn_test {

// The parameters of one spatial axis (SPEC.md "Parameters, per spatial axis").
struct SpecAxis {
  int64_t kernel_size = 2;  // k
  int64_t stride = 1;       // s
  int64_t dilation = 1;     // d
  bool is_causal = false;
};

// True when query index i attends to key index j along one axis of extent L.
bool spec_attends(const SpecAxis& axis, int64_t L, int64_t i, int64_t j);

// Axis a of a problem.
SpecAxis spec_axis(const nattn::Problem& p, int a);

// Multi-axis: tokens are row-major indices over X1..Xr; the neighborhood is the Cartesian
// product of the per-axis key sets.
bool spec_attends(const nattn::Problem& p, int64_t query_token, int64_t key_token);

// Which keys each query token attends to (additional keys excluded).
struct TokenMask {
  int64_t tokens = 0;
  std::vector<char> allowed;  // [query * tokens + key]
  bool operator()(int64_t q, int64_t k) const { return allowed[size_t(q * tokens + k)] != 0; }
};

TokenMask spec_mask(const nattn::Problem& p);
// Dense attention (api.h): every key, or every earlier-or-equal key when causal.
TokenMask dense_mask(int64_t tokens, bool is_causal);

}  // namespace nattn_test
