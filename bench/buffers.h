// Layer: bench. Random input buffers for one problem on the backend's device, and the
// float64-reference check of what a backend computed in them.
#pragma once
#include <cstdint>
#include <vector>

#include "nattn/nattn.h"

namespace nattn::bench {

// The backend `requested` resolves to on this machine (kAuto: the best available one).
BackendInfo best_backend(BackendKind requested);

struct Errors {
  double forward = 0;   // max |out - out_ref|
  double backward = 0;  // max over dq, dk, dv (and additional grads) of |g - g_ref|
};

class Buffers {
 public:
  // `fill` = false allocates without writing anything (for plans only: `nattn-bench --explain`).
  Buffers(const Problem& p, DType dtype, BackendKind backend, bool fill = true);
  ~Buffers();
  Buffers(const Buffers&) = delete;
  Buffers& operator=(const Buffers&) = delete;

  ForwardTensors forward_tensors() const;
  BackwardTensors backward_tensors() const;
  void* stream() const { return stream_; }
  void sync() const;
  // Compares what the last forward (and backward) wrote with the float64 reference.
  Errors verify(bool backward) const;

 private:
  enum Slot { kQ, kK, kV, kAK, kAV, kOut, kLse, kDout, kDq, kDk, kDv, kDak, kDav, kSlots };
  TensorView view(Slot s) const;
  std::vector<double> read(Slot s) const;  // element values as double
  std::vector<int64_t> shape(Slot s) const;

  Problem p_;
  DType dtype_;
  bool device_;
  void* stream_ = nullptr;
  void* data_[kSlots] = {};
};

}  // namespace nattn::bench
