// Layer: cuda. The ordered family list, device attributes and forced configuration choices.
#include <mutex>
#include <string>
#include <vector>

#include "cuda/family.h"
#include "cuda/sm80/device/dispatch.h"

namespace nattn::cuda {

const std::vector<const KernelFamily*>& kernel_families() {
  static const std::vector<const KernelFamily*> list = {&sm90_family(), &sm80_family(), &generic_family()};
  return list;
}

const DeviceInfo& device_info(int index) {
  constexpr int kMaxDevices = 64;
  static DeviceInfo info[kMaxDevices];
  static std::once_flag once[kMaxDevices];
  const int i = index >= 0 && index < kMaxDevices ? index : 0;
  std::call_once(once[i], [i] {
    DeviceInfo& d = info[i];
    d.index = i;
    int optin = 0;
    cudaDeviceGetAttribute(&d.major, cudaDevAttrComputeCapabilityMajor, i);
    cudaDeviceGetAttribute(&d.minor, cudaDevAttrComputeCapabilityMinor, i);
    cudaDeviceGetAttribute(&d.sm_count, cudaDevAttrMultiProcessorCount, i);
    cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, i);
    d.smem_optin = size_t(optin);
  });
  return info[i];
}

bool config_built(int id) {
  if (id < 0 || id >= kNumConfigs) return false;
  switch (kKernelConfigs[id].family) {
    case Family::kGeneric: return true;
    case Family::kSm80: return sm80::launcher(id) != nullptr;
    case Family::kSm90: return false;  // the family has no kernels yet
  }
  return false;
}

Status forced_config(const KernelChoice& choice, Family family, Role role, int* id) {
  *id = -1;
  for (const int c : choice.config_ids) {
    if (c < 0 || c >= kNumConfigs)
      return Status::Invalid("choice.config_ids has " + std::to_string(c) + ", which is invalid: must be a row id of " +
                             "kernel_configs() (0.." + std::to_string(kNumConfigs - 1) + ")");
    if (kKernelConfigs[c].role != role) continue;
    if (kKernelConfigs[c].family != family)  // another family's row: that family plans the call
      return Status::Unsupported("choice.config_ids has " + std::to_string(c) + ", a row of the " +
                                 family_name(kKernelConfigs[c].family) + " family");
    if (*id >= 0)
      return Status::Invalid("choice.config_ids has " + std::to_string(*id) + " and " + std::to_string(c) +
                             ", which is invalid: at most one row per kernel role (" + role_name(role) + ")");
    *id = c;
  }
  return Status::Ok();
}

}  // namespace nattn::cuda
