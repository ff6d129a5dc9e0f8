// Layer: public API. Entry points: neighborhood attention, dense attention, merging.
#pragma once
#include <array>
#include <cstddef>
#include <string>
#include <vector>

#include "nattn/plan.h"
#include "nattn/problem.h"
#include "nattn/status.h"
#include "nattn/tensor.h"

namespace nattn {

// Which implementation runs a call. kAuto picks the best one that supports the inputs.
enum class BackendKind : int { kAuto = 0, kReference = 1, kCuda = 2 };

// Forces a kernel family, configuration or tile shape (experiments, the autotuner). A choice the
// call cannot use is an error with the reason, never a silent fallback.
struct KernelChoice {
  std::string family;                     // "" = automatic; else "sm90", "sm80", "generic", "reference"
  std::vector<int> config_ids;            // rows of kernel_configs(), at most one per kernel role
  std::array<int, 3> own_tile{0, 0, 0};   // forward/dQ query box per axis (powers of two whose
  std::array<int, 3> walk_tile{0, 0, 0};  // product is the config's block); 0s = chosen by the plan
  bool empty() const {
    return family.empty() && config_ids.empty() && own_tile == std::array<int, 3>{0, 0, 0} &&
           walk_tile == std::array<int, 3>{0, 0, 0};
  }
};

// Device scratch (backward Delta and dQ workspaces, layout copies). Without one, CUDA calls
// allocate on the call's stream from a memory pool the library keeps per device, which holds
// what it reserved between calls (as a caching allocator does: a call that syncs its stream
// does not give the memory back and map it again on the next call); release_cached_workspace()
// returns it. `allocate` returns nullptr on failure.
struct WorkspaceAllocator {
  void* (*allocate)(size_t bytes, void* ctx) = nullptr;
  void (*release)(void* ptr, void* ctx) = nullptr;
  void* ctx = nullptr;
};

struct Options {
  BackendKind backend = BackendKind::kAuto;
  void* stream = nullptr;      // cudaStream_t for device backends; ignored on CPU
  bool deterministic = false;  // backward: bitwise reproducible results (the reference always is)
  KernelChoice choice;
  WorkspaceAllocator workspace;
};

struct ForwardTensors {
  TensorView q, k, v;
  TensorView additional_k, additional_v;  // required iff Problem::num_additional > 0
  TensorView out;
  TensorView lse;  // optional output, float32 [B, X.., Hq]
};

struct BackwardTensors {
  TensorView q, k, v;
  TensorView additional_k, additional_v;
  TensorView out, lse, dout;  // lse is required here: forward's float32 logsumexp
  TensorView dlse;            // optional float32 gradient of lse (when lse fed later computation)
  TensorView dq, dk, dv;
  TensorView d_additional_k, d_additional_v;  // required iff num_additional > 0
};

// Neighborhood attention (SPEC.md). Validates everything first; nothing is written on error.
Status forward(const Problem& problem, const ForwardTensors& t, const Options& options = {});
Status backward(const Problem& problem, const BackwardTensors& t, const Options& options = {});

// Dense attention over [B, N, H, D] tensors (additional_* must be absent).
Status attention_forward(const AttentionProblem& problem, const ForwardTensors& t, const Options& options = {});
Status attention_backward(const AttentionProblem& problem, const BackwardTensors& t, const Options& options = {});

// The plan a call would run (family, configuration, tiles, copies, workspace, and why each other
// family was not chosen), without running anything. Validates like the calls themselves.
Status explain_forward(const Problem& problem, const ForwardTensors& t, const Options& options, Plan* plan);
Status explain_backward(const Problem& problem, const BackwardTensors& t, const Options& options, Plan* plan);
Status explain_attention_forward(const AttentionProblem& problem, const ForwardTensors& t, const Options& options,
                                 Plan* plan);
Status explain_attention_backward(const AttentionProblem& problem, const BackwardTensors& t, const Options& options,
                                  Plan* plan);

// Merges partial attentions over disjoint key sets into one softmax:
//   lse = log(sum_i exp(lse_i)),  out = sum_i exp(lse_i - lse) * out_i.
// outs[i]: [..., H, Dv] (same shape, dtype, device), lses[i]: [..., H] float32.
// Partials whose lse is -inf contribute nothing; if all are -inf, out = 0 and lse = -inf.
// Runs on the backend of out's device (Options::stream orders it on CUDA).
Status merge_attentions(const std::vector<TensorView>& outs, const std::vector<TensorView>& lses, const TensorView& out,
                        const TensorView& lse, const Options& options = {});

// Gives the memory that the library's workspace pools keep between calls (calls without a
// WorkspaceAllocator) back to the system; the next such call reserves what it needs again.
// Call it with no nattn call in flight on any stream. Ok when there is nothing to release.
Status release_cached_workspace();

// What each backend built into this library can do here, and why not when it can't.
struct BackendInfo {
  BackendKind kind;
  std::string name;
  bool available;
  std::string reason;  // empty when available
};
std::vector<BackendInfo> backends();
const char* backend_name(BackendKind kind);

}  // namespace nattn
