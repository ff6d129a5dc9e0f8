// Layer: core. The backend interface and the registry that picks one for a call.
// Every backend says what it supports and, when it does not, why (the error of an
// automatic choice lists each backend's reason).
#pragma once
#include <vector>

#include "nattn/api.h"

namespace nattn {

class Backend {
 public:
  virtual ~Backend() = default;
  virtual BackendKind kind() const = 0;
  virtual const char* name() const = 0;
  // Ok when built in and usable on this machine; otherwise why not.
  virtual Status available() const = 0;
  // Ok when this backend can run the (already validated) call; otherwise why not.
  virtual Status supports(const Problem& p, DType dtype, Device device, bool backward) const = 0;
  virtual Status forward(const Problem& p, const ForwardTensors& t, const Options& o) const = 0;
  virtual Status backward(const Problem& p, const BackwardTensors& t, const Options& o) const = 0;
};

// Every backend compiled into the library, best first.
const std::vector<const Backend*>& registry();

// The backend for a call: the requested one if it supports the call, or with kAuto the
// first in registry order that does. The error lists each candidate's reason.
Status choose_backend(const Problem& p, DType dtype, Device device, bool backward,
                      BackendKind requested, const Backend** chosen);

}  // namespace nattn
