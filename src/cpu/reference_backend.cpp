// Layer: cpu. The reference backend's registry entry.
#include "cpu/reference.h"

namespace nattn {
namespace {

class ReferenceBackend final : public Backend {
 public:
  BackendKind kind() const override { return BackendKind::kReference; }
  const char* name() const override { return "reference"; }
  std::vector<std::string> families() const override { return {"reference"}; }
  Status available() const override { return Status::Ok(); }
  Status supports(const Problem&, DType, Device device, bool) const override {
    if (device.type != DeviceType::kCPU)
      return Status::Unsupported("runs on CPU tensors only (got " + device_name(device) + ")");
    return Status::Ok();
  }
  Status explain_forward(const Problem&, const ForwardTensors&, const Options& o, Plan* plan) const override {
    return explain(o, "forward", plan);
  }
  Status explain_backward(const Problem&, const BackwardTensors&, const Options& o, Plan* plan) const override {
    return explain(o, "backward", plan);
  }
  Status merge(const std::vector<TensorView>& outs, const std::vector<TensorView>& lses, const TensorView& out,
               const TensorView& lse, const Options&) const override {
    return reference_merge(outs, lses, out, lse);
  }
  Status forward(const Problem& p, const ForwardTensors& t, const Options& o) const override {
    NATTN_RETURN_IF_ERROR(check_choice(o));
    return reference_forward(p, t);
  }
  Status backward(const Problem& p, const BackwardTensors& t, const Options& o) const override {
    NATTN_RETURN_IF_ERROR(check_choice(o));
    return reference_backward(p, t);
  }

 private:
  // One family, any layout, no workspace: the plan only names it.
  static Status check_choice(const Options& o) {
    if (!o.choice.config_ids.empty() || o.choice.own_tile != std::array<int, 3>{0, 0, 0} ||
        o.choice.walk_tile != std::array<int, 3>{0, 0, 0})
      return Status::Invalid(
          "choice = a kernel configuration or tile shape is invalid for the reference backend: "
          "it has no configurations");
    return Status::Ok();
  }

  static Status explain(const Options& o, const char* role, Plan* plan) {
    NATTN_RETURN_IF_ERROR(check_choice(o));
    *plan = Plan{};
    plan->backend = "reference";
    plan->family = "reference";
    plan->families.push_back({"reference", true, "exact CPU reference (float64 accumulation), any dtype and layout"});
    PlannedKernel k;
    k.role = role;
    plan->kernels.push_back(k);
    return Status::Ok();
  }
};

}  // namespace

const Backend& reference_backend() {
  static const ReferenceBackend b;
  return b;
}

}  // namespace nattn
