// Layer: tests. Every valid one-axis configuration up to a length, for exhaustive window checks.
#pragma once
#include <cstdint>
#include <string>

#include "core/window.h"
#include "support/spec_mask.h"

namespace nattn_test {

struct AxisCase {
  int64_t L;
  SpecAxis spec;
  nattn::window::Axis lib() const { return {L, spec.kernel_size, spec.stride, spec.dilation, spec.is_causal}; }
  std::string describe() const;
};

// Calls f(AxisCase) for every L in [2, max_L], k in [2, L], s in [1, k], d with k * d <= L,
// causal and not.
template <class F>
void for_each_axis_case(int64_t max_L, F&& f) {
  for (int64_t L = 2; L <= max_L; ++L)
    for (int64_t k = 2; k <= L; ++k)
      for (int64_t d = 1; k * d <= L; ++d)
        for (int64_t s = 1; s <= k; ++s)
          for (bool causal : {false, true}) f(AxisCase{L, SpecAxis{k, s, d, causal}});
}

inline std::string AxisCase::describe() const {
  return "L=" + std::to_string(L) + " k=" + std::to_string(spec.kernel_size) + " s=" + std::to_string(spec.stride) +
         " d=" + std::to_string(spec.dilation) + (spec.is_causal ? " causal" : "");
}

}  // namespace nattn_test
