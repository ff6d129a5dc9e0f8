// Layer: tests. Short constructors of problems for targeted tests.
#pragma once
#include <array>
#include <cstdint>

#include "nattn/problem.h"

namespace nattn_test {

// A problem with batch 1, one head, head dims 4 and the given grid and window.
inline nattn::Problem make_problem(int rank, std::array<int64_t, 3> extent, nattn::Window window) {
  nattn::Problem p;
  p.rank = rank;
  p.extent = extent;
  p.window = window;
  p.batch = 1;
  p.heads_q = p.heads_kv = 1;
  p.head_dim = p.head_dim_v = 4;
  return p;
}

inline nattn::Window make_window(std::array<int64_t, 3> kernel, std::array<int64_t, 3> stride = {1, 1, 1},
                                 std::array<int64_t, 3> dilation = {1, 1, 1},
                                 std::array<bool, 3> causal = {false, false, false}) {
  nattn::Window w;
  w.kernel_size = kernel;
  w.stride = stride;
  w.dilation = dilation;
  w.is_causal = causal;
  return w;
}

}  // namespace nattn_test
