// Layer: cpu. The reference backend's registry entry.
#include "cpu/reference.h"

namespace nattn {
namespace {

class ReferenceBackend final : public Backend {
 public:
  BackendKind kind() const override { return BackendKind::kReference; }
  const char* name() const override { return "reference"; }
  Status available() const override { return Status::Ok(); }
  Status supports(const Problem&, DType, Device device, bool) const override {
    if (device.type != DeviceType::kCPU)
      return Status::Unsupported("runs on CPU tensors only (got " + device_name(device) + ")");
    return Status::Ok();
  }
  Status forward(const Problem& p, const ForwardTensors& t, const Options&) const override {
    return reference_forward(p, t);
  }
  Status backward(const Problem& p, const BackwardTensors& t, const Options&) const override {
    return reference_backward(p, t);
  }
};

}  // namespace

const Backend& reference_backend() {
  static const ReferenceBackend b;
  return b;
}

}  // namespace nattn
