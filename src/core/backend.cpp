// Layer: core. Backend choice.
#include "core/backend.h"

#include <algorithm>
#include <string>

namespace nattn {

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

std::vector<KernelConfigInfo> kernel_configs() {
  std::vector<KernelConfigInfo> out;
  for (const Backend* b : registry()) {
    const std::vector<KernelConfigInfo> rows = b->kernel_configs();
    out.insert(out.end(), rows.begin(), rows.end());
  }
  return out;
}

Status release_cached_workspace() {
  for (const Backend* b : registry()) NATTN_RETURN_IF_ERROR(b->release_cached_workspace());
  return Status::Ok();
}

namespace {
bool has_family(const Backend& b, const std::string& family) {
  const std::vector<std::string> f = b.families();
  return std::find(f.begin(), f.end(), family) != f.end();
}

std::string known_families() {
  std::string all;
  for (const Backend* b : registry())
    for (const std::string& f : b->families()) all += (all.empty() ? "" : ", ") + f;
  return all;
}
}  // namespace

Status choose_backend(const Problem& p, DType dtype, Device device, bool backward, const Options& o,
                      const Backend** chosen) {
  const std::string& family = o.choice.family;
  std::string reasons;
  bool family_known = family.empty();
  for (const Backend* b : registry()) {
    if (o.backend != BackendKind::kAuto && b->kind() != o.backend) continue;
    if (!family.empty()) {
      if (!has_family(*b, family)) continue;
      family_known = true;
    }
    Status s = b->available();
    if (s.ok()) s = b->supports(p, dtype, device, backward);
    if (s.ok()) {
      *chosen = b;
      return s;
    }
    reasons += std::string(reasons.empty() ? "" : "; ") + b->name() + ": " + s.message();
  }
  if (!family_known)
    return Status::Invalid("choice.family = \"" + family + "\" is invalid: must be empty (automatic) or one of " +
                           known_families() + " (the kernel families of this build)");
  if (reasons.empty())
    return Status::Unsupported(std::string("backend = ") + backend_name(o.backend) +
                               (family.empty() ? "" : " with family " + family) + " is not built into this library");
  return Status::Unsupported(std::string("no backend can run this call (backend = ") + backend_name(o.backend) +
                             (family.empty() ? "" : ", family = " + family) + "): " + reasons);
}

}  // namespace nattn
