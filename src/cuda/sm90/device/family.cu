// Layer: cuda/sm90 device. The Hopper (sm90a) family: the slot that the Hopper kernels fill
// (TMA boxes, wgmma, warp specialisation). Built for sm_90a only; until its kernels land it
// implements nothing and says so, and the planner moves on to sm80.
#include "cuda/family.h"

namespace nattn::cuda {
namespace {

class Sm90Family final : public KernelFamily {
 public:
  Family id() const override { return Family::kSm90; }
  Status can_implement(const Call& call) const override {
    if (call.device.major != 9)
      return Status::Unsupported("needs an sm90 (Hopper) device (this one is sm" + std::to_string(call.device.major) +
                                 std::to_string(call.device.minor) + ")");
    return Status::Unsupported(
        "no sm90 kernels are built yet (the Hopper family is planned; sm80 kernels run on Hopper)");
  }
  Status reads_in_place(const TensorView&) const override { return Status::Unsupported("no sm90 kernels"); }
  Status plan(const Call&, std::vector<KernelLaunch>*) const override { return Status::Unsupported("no sm90 kernels"); }
  Status forward(const std::vector<KernelLaunch>&, const ForwardParams&, DType, cudaStream_t) const override {
    return Status::Unsupported("no sm90 kernels");
  }
  Status backward(const std::vector<KernelLaunch>&, const BackwardParams&, DType, cudaStream_t) const override {
    return Status::Unsupported("no sm90 kernels");
  }
};

}  // namespace

const KernelFamily& sm90_family() {
  static const Sm90Family f;
  return f;
}

}  // namespace nattn::cuda
