// Layer: cuda/sm80 device. Fused backward: not written yet; the backend runs the generic
// (exact, deterministic, slower) backward meanwhile.
#include "cuda/sm80/device/fna.h"

namespace nattn::cuda::sm80 {

Status can_backward(const BackwardParams&, DType) {
  return Status::Unsupported("the fused backward is not implemented yet");
}

Status backward(const BackwardParams&, DType, void*) {
  return Status::Unsupported("the fused backward is not implemented yet");
}

}  // namespace nattn::cuda::sm80
