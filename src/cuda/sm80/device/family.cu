// Layer: cuda/sm80 device. The sm80 family (fused mma.sync kernels for sm80 and newer): what it
// implements, which layouts it reads in place, and its plan: one configuration row per kernel
// role (forward; or backward dQ and dK/dV), box shapes chosen by exact tile count
// (core/tile_shapes.h) unless forced, grids, shared memory.
#include <array>
#include <string>

#include "core/tile_shapes.h"
#include "cuda/check.h"
#include "cuda/family.h"
#include "cuda/sm80/device/dispatch.h"

namespace nattn::cuda {
namespace {

class Sm80Family final : public KernelFamily {
 public:
  Family id() const override { return Family::kSm80; }
  // Placed boxes: own boxes cover the query box (keys for dK/dV), walks are clipped to the
  // other box (common/tile_walk.h), windows to the key box (fragment/mask.cuh). Checked on an
  // H100 by tests/python/test_cuda_placement.py and CudaSm80Placement.* (the NaN gradients of
  // the first run, 2026-11-27 at 0d90521, were the tests' own faults fixed in 7d2da6c).
  bool implements_placement() const override { return true; }

  Status can_implement(const Call& call) const override {
    const Geometry& g = call.g;
    if (call.dtype != DType::kFloat16 && call.dtype != DType::kBFloat16)
      return Status::Unsupported(std::string("fused kernels take float16/bfloat16 (got ") + dtype_name(call.dtype) +
                                 ")");
    if (call.device.major < 8)
      return Status::Unsupported("fused kernels need compute capability 8.0 or newer (device is sm" +
                                 std::to_string(call.device.major) + std::to_string(call.device.minor) + ")");
    if (g.head_dim % 8 != 0 || g.head_dim_v % 8 != 0)
      return Status::Unsupported("fused kernels need head dims that are multiples of 8 (got " +
                                 std::to_string(g.head_dim) + ", " + std::to_string(g.head_dim_v) + ")");
    // Group positions are 32-bit in the walk (placed: positions on the global grid).
    for (int a = 0; a < 3; ++a)
      if (g.extent[a] >= (int64_t(1) << 30) || (g.placed && g.global[a] >= (int64_t(1) << 30)))
        return Status::Unsupported("fused kernels need extents < 2^30 (global extents when placed)");
    if (g.heads_q > 65535 || g.batch > 65535) return Status::Unsupported("fused kernels need batch and heads <= 65535");
    for (const Role r : roles(call)) {
      int id = -1;
      NATTN_RETURN_IF_ERROR(config_for(call, r, &id));
      const Launcher* l = sm80::launcher(id);
      if (l->smem > call.device.smem_optin)
        return Status::Unsupported(std::string("the fused ") + role_name(r) + " kernel (config " + std::to_string(id) +
                                   ") needs " + std::to_string(l->smem) +
                                   " bytes of shared memory per block; this device allows " +
                                   std::to_string(call.device.smem_optin) + smem_limit_note());
    }
    return Status::Ok();
  }

  // Rows are read with 16-byte cp.async (and written with 4-byte stores): unit-stride head
  // dim, 16-byte aligned base and every stride of a dim longer than 1 a multiple of 8 elements.
  Status reads_in_place(const TensorView& t) const override {
    const bool aligned = reinterpret_cast<uintptr_t>(t.data) % 16 == 0;
    bool strides_ok = t.ndim > 0 && (t.stride[t.ndim - 1] == 1 || t.shape[t.ndim - 1] == 1);
    for (int i = 0; i + 1 < t.ndim; ++i) strides_ok &= t.shape[i] == 1 || t.stride[i] % 8 == 0;
    if (aligned && strides_ok) return Status::Ok();
    return Status::Unsupported(
        !aligned ? "its rows are not 16-byte aligned"
                 : "fused kernels need a unit-stride head dim and row strides that are multiples of 8 elements");
  }

  Status plan(const Call& call, std::vector<KernelLaunch>* kernels) const override {
    kernels->clear();
    const Problem& p = call.problem;
    const Geometry& g = call.g;
    for (const Role r : roles(call)) {
      KernelLaunch k;
      k.role = r;
      NATTN_RETURN_IF_ERROR(config_for(call, r, &k.config_id, &k.note));
      const KernelConfig& c = kKernelConfigs[k.config_id];
      const Launcher* l = sm80::launcher(k.config_id);
      const bool keys_owned = r == Role::kBackwardDkdv;
      TileShapes shapes;
      if (!keys_owned && tiles_forced(call.choice)) {
        NATTN_RETURN_IF_ERROR(forced_tiles(call.choice, p, c.block_q, c.block_kv, &shapes));
      } else {
        shapes =
            choose_tile_shapes(p, c.block_q, c.block_kv, keys_owned ? TileRole::kKeysOwned : TileRole::kQueriesOwned);
      }
      k.own = keys_owned ? shapes.k : shapes.q;
      k.walk = keys_owned ? shapes.q : shapes.k;
      k.walked_tiles = shapes.key_tiles;
      k.tiling = make_tiling(g, k.own, k.walk, keys_owned);
      int64_t ctas = k.tiling.neighborhood_ctas;
      if (keys_owned) ctas += (g.num_additional + c.block_kv - 1) / c.block_kv;  // tiles of additional keys
      if (ctas > INT32_MAX) return Status::Unsupported("too many tiles for one launch (" + std::to_string(ctas) + ")");
      k.grid[0] = unsigned(ctas);
      k.grid[1] = unsigned(keys_owned ? g.heads_kv : g.heads_q);
      k.grid[2] = unsigned(g.batch);
      k.threads = l->threads;
      k.smem = l->smem;
      NATTN_RETURN_IF_ERROR(l->prepare());
      kernels->push_back(k);
    }
    return Status::Ok();
  }

  Status forward(const std::vector<KernelLaunch>& kernels, const ForwardParams& p, DType,
                 cudaStream_t s) const override {
    return sm80::launcher(kernels[0].config_id)->launch(kernels[0], &p, s);
  }

  Status backward(const std::vector<KernelLaunch>& kernels, const BackwardParams& p, DType,
                  cudaStream_t s) const override {
    for (const KernelLaunch& k : kernels) NATTN_RETURN_IF_ERROR(sm80::launcher(k.config_id)->launch(k, &p, s));
    return Status::Ok();
  }

 private:
  static std::vector<Role> roles(const Call& call) {
    if (call.backward) return {Role::kBackwardDq, Role::kBackwardDkdv};
    return {Role::kForward};
  }

  // The row for a role: forced by the choice, or the fastest row of the smallest head dim
  // covering max(D, Dv) whose shared memory fits the device (configs.h lists siblings fastest
  // first). `why` says why a faster sibling was passed over.
  static Status config_for(const Call& call, Role r, int* id, std::string* why = nullptr) {
    NATTN_RETURN_IF_ERROR(forced_config(call.choice, Family::kSm80, r, id));
    const Elem e = call.dtype == DType::kBFloat16 ? Elem::kBFloat16 : Elem::kHalf;
    const int64_t hd = call.g.head_dim > call.g.head_dim_v ? call.g.head_dim : call.g.head_dim_v;
    if (*id >= 0) {
      const KernelConfig& c = kKernelConfigs[*id];
      if (c.elem != e || c.head_dim < hd)
        return Status::Invalid("choice.config_ids has " + std::to_string(*id) +
                               ", which is invalid for this call: it is a " + elem_name(c.elem) + " row of head dim " +
                               std::to_string(c.head_dim) + "; the call is " + dtype_name(call.dtype) +
                               " with max(head_dim, head_dim_v) = " + std::to_string(hd));
      return built(*id);
    }
    const int limit = max_head_dim(Family::kSm80, r);
    if (hd > limit)
      return Status::Unsupported(std::string("the fused ") + role_name(r) + " kernels take head dims up to " +
                                 std::to_string(limit) + " (got " + std::to_string(hd) + ")");
    std::string passed;  // the faster siblings that did not fit
    for (int i = find_config(Family::kSm80, r, e, padded_head_dim(Family::kSm80, r, int(hd))); i >= 0;
         i = next_sibling(i)) {
      *id = i;
      NATTN_RETURN_IF_ERROR(built(i));
      const size_t need = sm80::launcher(i)->smem;
      if (need <= call.device.smem_optin) break;
      passed += (passed.empty() ? "" : ", ") + std::string("config ") + std::to_string(i) + " needs " +
                std::to_string(need) + " bytes";
    }
    // (A last row that does not fit either is refused by can_implement with its size.)
    if (why != nullptr && !passed.empty())
      *why = std::string(role_name(r)) + " runs config " + std::to_string(*id) + ", a smaller-tile row, because " +
             passed + " of shared memory per block and this device allows " + std::to_string(call.device.smem_optin) +
             smem_limit_note();
    return Status::Ok();
  }

  static Status built(int id) {
    if (sm80::launcher(id) != nullptr) return Status::Ok();
    return Status::Unsupported("configuration " + std::to_string(id) + " (sm80 " + role_name(kKernelConfigs[id].role) +
                               ", head dim " + std::to_string(kKernelConfigs[id].head_dim) +
                               ") is not built into this library (CMake NATTN_HEAD_DIMS)");
  }
};

}  // namespace

const KernelFamily& sm80_family() {
  static const Sm80Family f;
  return f;
}

}  // namespace nattn::cuda
