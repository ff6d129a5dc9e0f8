// Layer: core. Backend registry and choice.
#include "core/backend.h"

#include <string>

#include "cpu/reference.h"
#ifdef NATTN_WITH_CUDA
#include "cuda/backend.h"
#endif

namespace nattn {

const std::vector<const Backend*>& registry() {
  static const std::vector<const Backend*> list = {
#ifdef NATTN_WITH_CUDA
      &cuda_backend(),
#endif
      &reference_backend(),
  };
  return list;
}

const char* backend_name(BackendKind kind) {
  switch (kind) {
    case BackendKind::kAuto: return "auto";
    case BackendKind::kReference: return "reference";
    case BackendKind::kCuda: return "cuda";
  }
  return "unknown";
}

std::vector<BackendInfo> backends() {
  std::vector<BackendInfo> out;
  bool have_cuda = false;
  for (const Backend* b : registry()) {
    const Status s = b->available();
    out.push_back({b->kind(), b->name(), s.ok(), s.message()});
    have_cuda |= b->kind() == BackendKind::kCuda;
  }
  if (!have_cuda)
    out.push_back({BackendKind::kCuda, "cuda", false,
                   "this build of nattn has no CUDA backend (configure with NATTN_CUDA=ON where nvcc exists)"});
  return out;
}

Status choose_backend(const Problem& p, DType dtype, Device device, bool backward,
                      BackendKind requested, const Backend** chosen) {
  std::string reasons;
  for (const Backend* b : registry()) {
    if (requested != BackendKind::kAuto && b->kind() != requested) continue;
    Status s = b->available();
    if (s.ok()) s = b->supports(p, dtype, device, backward);
    if (s.ok()) {
      *chosen = b;
      return s;
    }
    reasons += std::string(reasons.empty() ? "" : "; ") + b->name() + ": " + s.message();
  }
  if (reasons.empty())
    return Status::Unsupported(std::string("backend = ") + backend_name(requested) +
                               " is not built into this library");
  return Status::Unsupported(std::string("no backend can run this call (backend = ") +
                             backend_name(requested) + "): " + reasons);
}

}  // namespace nattn
