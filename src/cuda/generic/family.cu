// Layer: cuda/generic. The generic family: exact SIMT kernels for every dtype, head dim and
// layout. The planner reaches it only for what no fused family implements.
#include "cuda/family.h"
#include "cuda/generic/generic.h"

namespace nattn::cuda {
namespace {

class GenericFamily final : public KernelFamily {
 public:
  Family id() const override { return Family::kGeneric; }
  bool implements_placement() const override { return true; }
  Status can_implement(const Call& call) const override {
    for (const Role r : {Role::kForward, Role::kBackwardDq, Role::kBackwardDkdv}) {
      int id = -1;
      NATTN_RETURN_IF_ERROR(forced_config(call.choice, Family::kGeneric, r, &id));
    }
    if (tiles_forced(call.choice))
      return Status::Invalid("choice.own_tile/walk_tile = set is invalid for the generic family: it has no tiles");
    return Status::Ok();
  }
  Status reads_in_place(const TensorView&) const override { return Status::Ok(); }
  Status plan(const Call& call, std::vector<KernelLaunch>* kernels) const override {
    kernels->clear();
    const Role roles[] = {Role::kForward, Role::kBackwardDq, Role::kBackwardDkdv};
    for (const Role r : roles) {
      if ((r == Role::kForward) == call.backward) continue;
      KernelLaunch k;
      k.role = r;
      k.config_id = find_config(Family::kGeneric, r, Elem::kAny, 0);
      kernels->push_back(k);
    }
    return Status::Ok();
  }
  Status forward(const std::vector<KernelLaunch>&, const ForwardParams& p, DType dtype, cudaStream_t s) const override {
    return generic::forward(p, dtype, s);
  }
  Status backward(const std::vector<KernelLaunch>&, const BackwardParams& p, DType dtype,
                  cudaStream_t s) const override {
    return generic::backward(p, dtype, s);
  }
};

}  // namespace

const KernelFamily& generic_family() {
  static const GenericFamily f;
  return f;
}

}  // namespace nattn::cuda
