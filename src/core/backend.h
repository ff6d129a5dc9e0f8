// Layer: core. The backend interface and the choice of a backend for a call. Every backend
// says what it supports and, when it does not, why (the error of an automatic choice lists
// each backend's reason). Core knows no concrete backend: the API layer (src/api/registry.cpp)
// lists them.
#pragma once
#include <string>
#include <vector>

#include "nattn/api.h"

namespace nattn {

class Backend {
 public:
  virtual ~Backend() = default;
  virtual BackendKind kind() const = 0;
  virtual const char* name() const = 0;
  // The kernel families this backend plans among, in order of preference.
  virtual std::vector<std::string> families() const = 0;
  // Ok when built in and usable on this machine; otherwise why not.
  virtual Status available() const = 0;
  // Ok when this backend can run the (already validated) call; otherwise why not.
  virtual Status supports(const Problem& p, DType dtype, Device device, bool backward) const = 0;
  // Plans (or finds the cached plan of) a validated call, without running it.
  virtual Status explain_forward(const Problem& p, const ForwardTensors& t, const Options& o, Plan* plan) const = 0;
  virtual Status explain_backward(const Problem& p, const BackwardTensors& t, const Options& o, Plan* plan) const = 0;
  virtual Status forward(const Problem& p, const ForwardTensors& t, const Options& o) const = 0;
  virtual Status backward(const Problem& p, const BackwardTensors& t, const Options& o) const = 0;
  // merge_attentions of validated views on this backend's device.
  virtual Status merge(const std::vector<TensorView>& outs, const std::vector<TensorView>& lses, const TensorView& out,
                       const TensorView& lse, const Options& o) const = 0;
  // Rows of this backend's kernel configuration table (none for backends without one).
  virtual std::vector<KernelConfigInfo> kernel_configs() const { return {}; }
  // Gives back the memory its workspace pools keep between calls (release_cached_workspace).
  virtual Status release_cached_workspace() const { return Status::Ok(); }
};

// Every backend compiled into the library, best first (defined by the API layer).
const std::vector<const Backend*>& registry();

// The backend for a call: the requested one if it supports the call, or with kAuto the
// first in registry order that does; a forced family (Options::choice.family) picks the
// backend that has it. The error lists each candidate's reason.
Status choose_backend(const Problem& p, DType dtype, Device device, bool backward, const Options& o,
                      const Backend** chosen);

}  // namespace nattn
