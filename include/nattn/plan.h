// Layer: public API. Plans: which kernel family and configuration runs a call, why the others
// do not, and what the call needs besides its tensors (copies, workspace). A plan is made once
// per distinct call (problem, dtypes, layouts, device, options) and cached; `explain_*` shows
// the plan without running anything.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "nattn/problem.h"
#include "nattn/status.h"

namespace nattn {

// One kernel family of the chosen backend and what the planner made of it.
struct FamilyVerdict {
  std::string family;  // "sm90", "sm80", "generic" (CUDA); "reference" (CPU)
  bool chosen = false;
  std::string reason;  // why not, when not chosen; what it runs, when chosen
};

// One kernel launch of a plan.
struct PlannedKernel {
  std::string role;                       // "forward", "backward_dq", "backward_dkdv", "delta", "copy q", ...
  int config_id = -1;                     // row of kernel_configs(); -1 for kernels outside the table
  std::array<int, 3> own_tile{1, 1, 1};   // box a CTA owns, per axis (queries, or keys for dK/dV)
  std::array<int, 3> walk_tile{1, 1, 1};  // boxes it walks, per axis
  std::array<int64_t, 3> grid{0, 0, 0};
  int threads = 0;
  int64_t smem_bytes = 0;
  double walked_tiles = 0;  // walked boxes per (batch, head), the tensor-core work
};

struct Plan {
  std::string backend;                  // "cuda" or "reference"
  std::string family;                   // family of the attention kernels
  std::vector<FamilyVerdict> families;  // every family of the backend, in order of preference
  std::vector<std::string> copies;      // tensors copied into (or out of) contiguous buffers, and why
  std::vector<PlannedKernel> kernels;   // in launch order
  int64_t workspace_bytes = 0;          // device scratch the call takes from the workspace allocator
  bool cached = false;                  // the plan came from the plan cache
  std::string to_json() const;
};

// A row of the kernel configuration table (the one source of the fused kernels' variants).
struct KernelConfigInfo {
  int id = -1;
  std::string family;  // "sm80", ...
  std::string role;    // "forward", "backward_dq", "backward_dkdv"
  std::string dtype;   // "float16", "bfloat16"
  int head_dim = 0;    // padded head dim the row is instantiated for (max(D, Dv) rounds up to it)
  int block_q = 0;     // query rows per tile (owned for forward/dQ, walked for dK/dV)
  int block_kv = 0;    // key rows per tile (walked for forward/dQ, owned for dK/dV)
  int warps = 0;
  int stages = 0;         // walked-tile buffers in flight
  bool pingpong = false;  // consumer warpgroups take turns issuing their products (sm90)
  bool poly_exp = false;  // a quarter of the softmax's 2^x on the FMA units (sm90 forward)
  int ctas_per_sm = 1;    // CTAs resident per SM (sm90 backward rows for small grids: 2)
  bool built = false;     // compiled into this library (CMake NATTN_HEAD_DIMS drops rows)
};
std::vector<KernelConfigInfo> kernel_configs();

}  // namespace nattn
