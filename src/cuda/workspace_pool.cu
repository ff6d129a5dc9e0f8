// Layer: cuda. See workspace_pool.h.
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "cuda/check.h"
#include "cuda/workspace_pool.h"

namespace nattn::cuda {
namespace {

std::mutex& pools_mutex() {
  static std::mutex m;
  return m;
}

std::map<int, cudaMemPool_t>& pools() {
  static std::map<int, cudaMemPool_t> p;  // never destroyed: calls may run during static teardown
  return p;
}

}  // namespace

Status workspace_pool(int device, cudaMemPool_t* pool) {
  std::lock_guard<std::mutex> lock(pools_mutex());
  auto it = pools().find(device);
  if (it != pools().end()) {
    *pool = it->second;
    return Status::Ok();
  }
  cudaMemPoolProps props = {};
  props.allocType = cudaMemAllocationTypePinned;
  props.handleTypes = cudaMemHandleTypeNone;
  props.location.type = cudaMemLocationTypeDevice;
  props.location.id = device;
  cudaMemPool_t created = nullptr;
  NATTN_RETURN_IF_ERROR(check(cudaMemPoolCreate(&created, &props),
                              ("creating the workspace pool of device " + std::to_string(device)).c_str()));
  uint64_t keep = UINT64_MAX;  // hold reserved memory across synchronisations
  const Status s = check(cudaMemPoolSetAttribute(created, cudaMemPoolAttrReleaseThreshold, &keep),
                         "setting the workspace pool's release threshold");
  if (!s.ok()) {
    cudaMemPoolDestroy(created);
    return s;
  }
  pools()[device] = created;
  *pool = created;
  return Status::Ok();
}

Status release_cached_workspace_pools() {
  std::lock_guard<std::mutex> lock(pools_mutex());
  for (const auto& [device, pool] : pools())
    NATTN_RETURN_IF_ERROR(
        check(cudaMemPoolTrimTo(pool, 0), ("trimming the workspace pool of device " + std::to_string(device)).c_str()));
  return Status::Ok();
}

}  // namespace nattn::cuda
