// Layer: cuda/sm90 device. The Hopper (sm_90a) family: TMA box loads straight from the caller's
// tensors, wgmma, warp specialisation (cuda/sm90/kernel). Today it runs the forward for fp16 and
// bf16 with head dim 64 or 128 (D == Dv) and no additional keys; everything else is planned on
// the sm80 family with the reason recorded.
#include <cuda.h>

#include <array>
#include <string>

#include "core/tile_shapes.h"
#include "cuda/check.h"
#include "cuda/family.h"
#include "cuda/sm90/device/dispatch.h"
#include "cuda/sm90/kernel/traits.cuh"

namespace nattn::cuda {
namespace {

using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                 const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                 CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

// cuTensorMapEncodeTiled from the driver, found through the runtime (no libcuda link).
EncodeTiled encode_tiled() {
  static const EncodeTiled fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
      f = nullptr;
    return reinterpret_cast<EncodeTiled>(f);
  }();
  return fn;
}

// How TMA reads a [B, X.., H, D] tensor: heads packed with the head dim ([B, X.., H*D], heads
// inner) or heads as an outer dimension folded with the batch ([B*H, X.., D], e.g. a
// [B, H, X.., D] tensor viewed heads-last). -1: neither (the plan copies the tensor).
int heads_layout(const TensorView& t) {
  const int n = t.ndim;
  if (n < 3 || !(t.stride[n - 1] == 1 || t.shape[n - 1] == 1)) return -1;
  for (int i = 0; i + 2 < n; ++i)
    if (t.shape[i] != 1 && t.stride[i] % 8 != 0) return -1;
  if (t.stride[n - 2] == t.shape[n - 1] || t.shape[n - 2] == 1) return 1;
  if (t.stride[n - 2] % 8 == 0 && (t.shape[0] == 1 || t.stride[0] == t.shape[n - 2] * t.stride[n - 2])) return 0;
  return -1;
}

int heads_layout(const Strides& s, int64_t heads, int64_t head_dim, int64_t batch) {
  if (s.head == head_dim || heads == 1) return 1;
  return batch == 1 || s.batch == heads * s.head ? 0 : -1;
}

// A rank-5 map with boxes of 64 columns x the given box per axis (unused spatial axes have
// extent 1); dilation as element strides (the box spans box x dilation elements per axis).
Status encode(CUtensorMap* map, const void* base, DType dtype, const Geometry& g, int64_t heads, const Strides& s,
              const int (&shift)[3], const char* name, int* heads_inner) {
  const EncodeTiled fn = encode_tiled();
  if (fn == nullptr) return Status::Runtime("sm90: cuTensorMapEncodeTiled is not available from the driver");
  *heads_inner = heads_layout(s, heads, g.head_dim, g.batch);
  if (*heads_inner < 0) return Status::Runtime(std::string("sm90: ") + name + " has no TMA layout (planner bug)");
  const cuuint64_t es = 2;
  const bool inner = *heads_inner == 1;
  cuuint64_t dims[5] = {cuuint64_t(inner ? heads * g.head_dim : g.head_dim), cuuint64_t(g.extent[2]),
                        cuuint64_t(g.extent[1]), cuuint64_t(g.extent[0]),
                        cuuint64_t(inner ? g.batch : g.batch * heads)};
  const int64_t elem_strides[4] = {s.axis[2], s.axis[1], s.axis[0], inner ? s.batch : s.head};
  cuuint64_t strides[4];
  cuuint64_t packed = dims[0] * es;  // a dense stride for dims of extent 1, whose stride is never used
  for (int i = 0; i < 4; ++i) {
    strides[i] = dims[i + 1] == 1 ? packed : cuuint64_t(elem_strides[i]) * es;
    packed = strides[i] * dims[i + 1];
  }
  cuuint32_t box[5] = {64, 1, 1, 1, 1};
  cuuint32_t step[5] = {1, 1, 1, 1, 1};
  for (int a = 0; a < 3; ++a) {
    step[3 - a] = cuuint32_t(g.dilation[a]);
    box[3 - a] = cuuint32_t((1 << shift[a]) * g.dilation[a]);
  }
  const CUresult r =
      fn(map, dtype == DType::kBFloat16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 5,
         const_cast<void*>(base), dims, strides, box, step, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
         CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    return Status::Runtime(std::string("sm90: encoding the tensor map of ") + name + " failed (CUresult " +
                           std::to_string(int(r)) + ")");
  return Status::Ok();
}

// A TMA box spans at most 256 elements per dimension: box x dilation.
std::array<int, 3> box_caps(const Geometry& g) {
  std::array<int, 3> caps{0, 0, 0};
  for (int a = 0; a < 3; ++a) caps[a] = int(256 / g.dilation[a]);
  return caps;
}

// Where the ping-pong schedule measured faster (configs.h): head dim 64 (the softmax is heavy
// next to the products), and 1-D/2-D windows with masked tiles on every walk (stride below the
// kernel size, window smaller than the grid).
bool pingpong_pays(const Problem& p) {
  if (p.head_dim == 64) return true;
  if (p.rank > 2) return false;
  for (int a = 0; a < p.rank; ++a)
    if (p.window.stride[a] < p.window.kernel_size[a] && p.window.kernel_size[a] * p.window.dilation[a] < p.extent[a])
      return true;
  return false;
}

class Sm90Family final : public KernelFamily {
 public:
  Family id() const override { return Family::kSm90; }

  Status can_implement(const Call& call) const override {
    const Geometry& g = call.g;
    if (call.device.major != 9)
      return Status::Unsupported("needs an sm90 (Hopper) device (this one is sm" + std::to_string(call.device.major) +
                                 std::to_string(call.device.minor) + ")");
    if (call.backward)
      return Status::Unsupported("no sm90 backward kernels yet (the fused sm80 backward runs on Hopper)");
    if (call.dtype != DType::kFloat16 && call.dtype != DType::kBFloat16)
      return Status::Unsupported(std::string("sm90 kernels take float16/bfloat16 (got ") + dtype_name(call.dtype) +
                                 ")");
    if (g.head_dim != g.head_dim_v || (g.head_dim != 64 && g.head_dim != 128))
      return Status::Unsupported("the sm90 forward takes head_dim == head_dim_v in {64, 128} (got " +
                                 std::to_string(g.head_dim) + ", " + std::to_string(g.head_dim_v) + ")");
    if (g.num_additional > 0) return Status::Unsupported("the sm90 forward has no additional keys yet");
    for (int a = 0; a < 3; ++a) {
      if (g.dilation[a] > 8)
        return Status::Unsupported("the sm90 forward takes dilation <= 8 (TMA element strides; got " +
                                   std::to_string(g.dilation[a]) + ")");
      if (g.extent[a] >= (int64_t(1) << 31)) return Status::Unsupported("the sm90 forward needs extents < 2^31");
    }
    if (g.heads_q > 65535 || g.batch > 65535) return Status::Unsupported("sm90 kernels need batch and heads <= 65535");
    int id = -1;
    NATTN_RETURN_IF_ERROR(config_for(call, &id));
    const Launcher* l = sm90::launcher(id);
    if (l->smem > call.device.smem_optin)
      return Status::Unsupported("the sm90 forward (config " + std::to_string(id) + ") needs " +
                                 std::to_string(l->smem) + " bytes of shared memory; this device allows " +
                                 std::to_string(call.device.smem_optin));
    return Status::Ok();
  }

  // TMA reads rows with a unit-stride head dim from a 16-byte aligned base, every other stride a
  // multiple of 16 bytes, heads either packed with the head dim or folded with the batch.
  Status reads_in_place(const TensorView& t) const override {
    if (reinterpret_cast<uintptr_t>(t.data) % 16 != 0) return Status::Unsupported("its rows are not 16-byte aligned");
    if (heads_layout(t) < 0)
      return Status::Unsupported(
          "TMA boxes need a unit-stride head dim, strides that are multiples of 8 elements and heads either "
          "packed with the head dim or folded with the batch (batch stride = heads x head stride)");
    return Status::Ok();
  }

  Status plan(const Call& call, std::vector<KernelLaunch>* kernels) const override {
    kernels->clear();
    const Problem& p = call.problem;
    const Geometry& g = call.g;
    KernelLaunch k;
    k.role = Role::kForward;
    NATTN_RETURN_IF_ERROR(config_for(call, &k.config_id));
    const KernelConfig& c = kKernelConfigs[k.config_id];
    const Launcher* l = sm90::launcher(k.config_id);
    TileShapes shapes;
    if (tiles_forced(call.choice)) {
      NATTN_RETURN_IF_ERROR(forced_tiles(call.choice, p, c.block_q, c.block_kv, &shapes));
    } else {
      shapes = choose_tile_shapes(p, c.block_q, c.block_kv, TileRole::kQueriesOwned, box_caps(g));
      if (shapes.key_tiles < 0)
        return Status::Unsupported("no box of " + std::to_string(c.block_q) + " queries and " +
                                   std::to_string(c.block_kv) +
                                   " keys fits the TMA limit of 256 elements per axis (box x dilation)");
    }
    const std::array<int, 3> caps = box_caps(g);
    for (int a = 0; a < 3; ++a)
      if (shapes.q[a] > caps[a] || shapes.k[a] > caps[a])
        return Status::Invalid("choice.own_tile/walk_tile = " + std::to_string(shapes.q[a]) + "/" +
                               std::to_string(shapes.k[a]) + " on axis " + std::to_string(a) +
                               " is invalid for sm90: a TMA box spans at most 256 elements (box x dilation " +
                               std::to_string(g.dilation[a]) + ")");
    k.own = shapes.q;
    k.walk = shapes.k;
    k.walked_tiles = shapes.key_tiles;
    k.tiling = make_tiling(g, k.own, k.walk);
    if (k.tiling.neighborhood_ctas > INT32_MAX)
      return Status::Unsupported("too many tiles for one launch (" + std::to_string(k.tiling.neighborhood_ctas) + ")");
    k.grid[0] = unsigned(k.tiling.neighborhood_ctas);
    k.grid[1] = unsigned(g.heads_q);
    k.grid[2] = unsigned(g.batch);
    k.threads = l->threads;
    k.smem = l->smem;
    NATTN_RETURN_IF_ERROR(l->prepare());
    kernels->push_back(k);
    return Status::Ok();
  }

  Status forward(const std::vector<KernelLaunch>& kernels, const ForwardParams& p, DType dtype,
                 cudaStream_t s) const override {
    const KernelLaunch& k = kernels[0];
    sm90::ForwardArgs args;
    args.p = p;
    args.tl = k.tiling;
    NATTN_RETURN_IF_ERROR(
        encode(&args.tma_q, p.q, dtype, p.g, p.g.heads_q, p.sq, k.tiling.own_shift, "q", &args.heads_inner[0]));
    NATTN_RETURN_IF_ERROR(
        encode(&args.tma_k, p.k, dtype, p.g, p.g.heads_kv, p.sk, k.tiling.walk_shift, "k", &args.heads_inner[1]));
    NATTN_RETURN_IF_ERROR(
        encode(&args.tma_v, p.v, dtype, p.g, p.g.heads_kv, p.sv, k.tiling.walk_shift, "v", &args.heads_inner[2]));
    return sm90::launcher(k.config_id)->launch(k, &args, s);
  }

  Status backward(const std::vector<KernelLaunch>&, const BackwardParams&, DType, cudaStream_t) const override {
    return Status::Unsupported("no sm90 backward kernels yet");
  }

 private:
  static Status config_for(const Call& call, int* id) {
    NATTN_RETURN_IF_ERROR(forced_config(call.choice, Family::kSm90, Role::kForward, id));
    const Elem e = call.dtype == DType::kBFloat16 ? Elem::kBFloat16 : Elem::kHalf;
    if (*id >= 0) {
      const KernelConfig& c = kKernelConfigs[*id];
      if (c.elem != e || c.head_dim != call.g.head_dim)
        return Status::Invalid("choice.config_ids has " + std::to_string(*id) +
                               ", which is invalid for this call: it is a " + elem_name(c.elem) + " row of head dim " +
                               std::to_string(c.head_dim) + "; the call is " + dtype_name(call.dtype) +
                               " with head_dim " + std::to_string(call.g.head_dim));
    } else {
      *id = find_config(Family::kSm90, Role::kForward, e, int(call.g.head_dim), pingpong_pays(call.problem));
    }
    if (*id < 0 || sm90::launcher(*id) == nullptr)
      return Status::Unsupported("the sm90 configuration for head dim " + std::to_string(call.g.head_dim) +
                                 " is not built into this library (CMake NATTN_HEAD_DIMS)");
    return Status::Ok();
  }
};

}  // namespace

const KernelFamily& sm90_family() {
  static const Sm90Family f;
  return f;
}

}  // namespace nattn::cuda
