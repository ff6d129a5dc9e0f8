// Layer: cuda. The ordered family list, device attributes and forced configuration choices.
#include <cerrno>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

#include "core/tile_shapes.h"
#include "cuda/family.h"
#include "cuda/sm80/device/dispatch.h"
#include "cuda/sm90/device/dispatch.h"

namespace nattn::cuda {
namespace {

// A forced box shape: powers of two over the problem's axes (1 past them) whose product is `rows`.
Status check_tile(const char* name, const std::array<int, 3>& tile, int rank, int rows) {
  int product = 1;
  for (int a = 0; a < 3; ++a) {
    const int t = tile[a];
    const bool ok = a < rank ? (t > 0 && (t & (t - 1)) == 0) : (t == 0 || t == 1);
    if (!ok)
      return Status::Invalid(std::string("choice.") + name + "[" + std::to_string(a) + "] = " + std::to_string(t) +
                             " is invalid: must be a power of two on the problem's axes and 0 or 1 past them");
    product *= a < rank ? t : 1;
  }
  if (product != rows)
    return Status::Invalid(std::string("choice.") + name + " = " + std::to_string(tile[0]) + "x" +
                           std::to_string(tile[1]) + "x" + std::to_string(tile[2]) + " is invalid: its rows (" +
                           std::to_string(product) + ") must equal the configuration's " + std::to_string(rows));
  return Status::Ok();
}

std::array<int, 3> ones_past_rank(std::array<int, 3> t, int rank) {
  for (int a = rank; a < 3; ++a) t[a] = 1;
  return t;
}

}  // namespace

// Launch tiling for power-of-two box shapes: `own` is the box each CTA owns (queries for
// forward/dQ, keys for dK/dV), `walk` the boxes it walks.
Tiling make_tiling(const Geometry& g, const std::array<int, 3>& own, const std::array<int, 3>& walk, bool keys_owned) {
  Tiling t;
  t.neighborhood_ctas = 1;
  for (int a = 0; a < 3; ++a) {
    t.own_shift[a] = log2_ceil(own[a]);
    t.walk_shift[a] = log2_ceil(walk[a]);
    // The own side's box: the query box, or the key box when keys are owned (the same unless
    // placed). A box of X indices holds at most ceil(X / d) positions of any group (group 0's
    // count when the box starts at 0).
    const int64_t x = keys_owned && g.placed ? g.key_extent[a] : g.extent[a];
    const int64_t longest = (x + g.dilation[a] - 1) / g.dilation[a];
    t.own_tiles[a] = (longest + own[a] - 1) / own[a];
    t.neighborhood_ctas *= t.own_tiles[a] * g.dilation[a];
  }
  return t;
}

Status forced_tiles(const KernelChoice& choice, const Problem& p, int block_q, int block_kv, TileShapes* shapes) {
  NATTN_RETURN_IF_ERROR(check_tile("own_tile", choice.own_tile, p.rank, block_q));
  NATTN_RETURN_IF_ERROR(check_tile("walk_tile", choice.walk_tile, p.rank, block_kv));
  shapes->q = ones_past_rank(choice.own_tile, p.rank);
  shapes->k = ones_past_rank(choice.walk_tile, p.rank);
  shapes->key_tiles = count_key_tiles(p, shapes->q, shapes->k);
  return Status::Ok();
}

const std::vector<const KernelFamily*>& kernel_families() {
  static const std::vector<const KernelFamily*> list = {&sm90_family(), &sm80_family(), &generic_family()};
  return list;
}

namespace {

// NATTN_SMEM_LIMIT, parsed once: bytes (0 = unset) or the error.
struct SmemLimitHook {
  size_t bytes = 0;
  std::string error;
};

const SmemLimitHook& smem_limit_hook() {
  static const SmemLimitHook hook = [] {
    SmemLimitHook h;
    const char* e = std::getenv("NATTN_SMEM_LIMIT");
    if (e == nullptr || *e == '\0') return h;
    char* end = nullptr;
    errno = 0;
    const unsigned long long v = std::strtoull(e, &end, 10);
    if (errno != 0 || *end != '\0' || v == 0 || e[0] == '-')
      h.error = std::string("NATTN_SMEM_LIMIT = '") + e +
                "' is invalid: must be a positive number of bytes (a test hook; unset it to use the device's limit)";
    else
      h.bytes = size_t(v);
    return h;
  }();
  return hook;
}

}  // namespace

Status smem_limit_hook_status() {
  const SmemLimitHook& h = smem_limit_hook();
  return h.error.empty() ? Status::Ok() : Status::Invalid(h.error);
}

std::string smem_limit_note() {
  const size_t b = smem_limit_hook().bytes;
  return b == 0 ? "" : " (lowered to " + std::to_string(b) + " by NATTN_SMEM_LIMIT)";
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
    const size_t forced = smem_limit_hook().bytes;  // the test hook (family.h)
    if (forced > 0 && forced < d.smem_optin) d.smem_optin = forced;
  });
  return info[i];
}

bool config_built(int id) {
  if (id < 0 || id >= kNumConfigs) return false;
  switch (kKernelConfigs[id].family) {
    case Family::kGeneric: return true;
    case Family::kSm80: return sm80::launcher(id) != nullptr;
    case Family::kSm90: return sm90::launcher(id) != nullptr;
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
