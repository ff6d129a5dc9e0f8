// Layer: core. The phases a call's host time is traced in (nattn/host_trace.h) and the scoped
// timer each layer puts around its phase.
#pragma once
#include <chrono>
#include <cstdint>

#include "nattn/host_trace.h"

namespace nattn {

enum class HostPhase : int {
  kCall,              // the whole C++ call (api layer), validation to return
  kValidate,          // argument checks
  kChooseBackend,     // which backend runs it
  kPlanLookup,        // CUDA: the plan cache (a miss includes planning)
  kWorkspace,         // CUDA: workspace allocation
  kBindCopies,        // CUDA: layout copies in
  kDelta,             // CUDA backward: the Delta pre-pass launch
  kFamily,            // CUDA: the kernel family's forward/backward (encodes and launches)
  kEncodeMaps,        // sm90: TMA tensor maps (from the cache or encoded)
  kEncode,            // sm90: the driver encodes among them (the cache's misses)
  kLaunch,            // sm90: kernel launches
  kCopyOut,           // CUDA: layout copies out
  kWorkspaceRelease,  // CUDA: workspace release
  kCount
};

void host_trace_add(HostPhase phase, int64_t ns);

// Adds the time from construction to destruction to `phase`, when tracing was on at construction.
class HostPhaseTimer {
 public:
  explicit HostPhaseTimer(HostPhase phase) : phase_(phase), on_(host_trace_enabled()) {
    if (on_) start_ = std::chrono::steady_clock::now();
  }
  ~HostPhaseTimer() {
    if (on_)
      host_trace_add(
          phase_,
          std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start_).count());
  }
  HostPhaseTimer(const HostPhaseTimer&) = delete;
  HostPhaseTimer& operator=(const HostPhaseTimer&) = delete;

 private:
  HostPhase phase_;
  bool on_;
  std::chrono::steady_clock::time_point start_{};
};

}  // namespace nattn
