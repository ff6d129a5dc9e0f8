// Layer: cuda. Plans of the CUDA backend: the family and its launches, the tensors copied into
// (or out of) dense buffers, the workspace layout, and the public explanation. Plans are cached
// by everything that decides them (problem, dtype, strides and 16-byte alignment of every
// tensor, device, options), so a repeated call only looks its plan up and launches.
#pragma once
#include <cstddef>
#include <memory>
#include <vector>

#include "cuda/family.h"

namespace nattn::cuda {

// A tensor of the call as the planner sees it.
struct Slot {
  const char* name;
  const TensorView* view;
  bool output;
  bool fused;  // read or written by the fused kernels (float32 lse/dlse are read by plain loads)
};

struct CudaPlan {
  const KernelFamily* family = nullptr;
  std::vector<KernelLaunch> kernels;
  struct Copy {
    int slot;       // index into the call's slots
    size_t offset;  // of its dense buffer in the workspace
  };
  std::vector<Copy> copies;
  size_t delta_offset = 0;                 // backward: the Delta rows
  size_t scratch_offset = 0, scratch = 0;  // the kernels' shared scratch (KernelLaunch::scratch)
  size_t workspace = 0;                    // bytes
  Plan explained;
  // Set when the call runs with its heads as a grid axis (core/heads_axis.h): the plan of the
  // rewritten call, which the backend runs on heads_as_axis views of the call's tensors (this
  // plan's other fields are unused then; `explained` is the rewritten call's, with a note).
  std::shared_ptr<const CudaPlan> heads_axis;
};

// Whether the CUDA backend runs the call with its heads as a grid axis: where the rewrite is
// exact (heads_axis_applies) and cuts the fused kernels' walked boxes (128 queries, 128 keys)
// to at most 3/4; never with forced boxes (they name the call's own axes), nor where a 3-D
// rewrite with batch > 1 would cost the sm90 kernels their head-dim zero fill (D = Dv = 32, 64,
// 128 or 256 there). NATTN_HEADS_AXIS=0 turns it off (for A/B timing).
bool heads_axis_pays(const Problem& p, const Options& o);

// The kernels' copy of a problem.
Geometry geometry_of(const Problem& p);

// The plan of a validated call (from the cache when the same call was planned before).
Status plan_call(const Problem& p, DType dtype, bool backward, const Options& o, const std::vector<Slot>& slots,
                 std::shared_ptr<const CudaPlan>* plan, bool* cached);

}  // namespace nattn::cuda
