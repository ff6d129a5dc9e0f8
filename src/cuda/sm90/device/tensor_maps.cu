// Layer: cuda/sm90 device. See tensor_maps.h.
#include <cuda_runtime.h>

#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>

#include "core/host_trace.h"
#include "cuda/sm90/device/tensor_maps.h"
#include "cuda/sm90/kernel/traits.cuh"

namespace nattn::cuda::sm90 {
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

// The same choice from a kernel's strides (the plan made the tensor readable: map_mode >= 0).
// An apart map drops axis 3, so only boxes of one position along it can use one.
int map_mode(const MapGrid& m, const Strides& s, int64_t batch, int64_t heads, int64_t cols) {
  if (m.extent[2] == 1 && m.shift[2] == 0) return kHeadsApart;
  if (batch == 1) return kHeadsApartB1;
  if (s.head == cols || heads == 1) return kHeadsInner;
  return kHeadsFolded;
}

// A rank-5 map with boxes of pw columns x the box per axis (unused axes have extent 1);
// dilation as element strides (the box spans box x dilation elements per axis). Elements are
// float16/bfloat16 (the operands) or float32 (the fast backward's dQ workspace); a box row of
// pw elements is swizzled at its own width (128, 64 or 32 bytes).
Status encode(CUtensorMap* map, const void* base, DType dtype, const MapGrid& m, int64_t batch, int64_t heads,
              int64_t cols, const Strides& s, int pw, const char* name, int* mode) {
  const EncodeTiled fn = encode_tiled();
  if (fn == nullptr) return Status::Runtime("sm90: cuTensorMapEncodeTiled is not available from the driver");
  *mode = map_mode(m, s, batch, heads, cols);
  const cuuint64_t es = dtype == DType::kFloat32 ? 4 : 2;
  const CUtensorMapDataType type = dtype == DType::kFloat32    ? CU_TENSOR_MAP_DATA_TYPE_FLOAT32
                                   : dtype == DType::kBFloat16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
                                                               : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  const cuuint64_t row_bytes = cuuint64_t(pw) * es;
  // 16-byte rows (the backward's row workspace, read as plain float rows) are not swizzled.
  const CUtensorMapSwizzle swizzle = row_bytes == 128  ? CU_TENSOR_MAP_SWIZZLE_128B
                                     : row_bytes == 64 ? CU_TENSOR_MAP_SWIZZLE_64B
                                     : row_bytes == 32 ? CU_TENSOR_MAP_SWIZZLE_32B
                                                       : CU_TENSOR_MAP_SWIZZLE_NONE;
  cuuint64_t dims[5];
  int64_t elem_strides[4];
  cuuint32_t box[5] = {cuuint32_t(pw), 1, 1, 1, 1};
  cuuint32_t step[5] = {1, 1, 1, 1, 1};
  // TMA dimension of spatial axis a (X1 outermost), per mode.
  int axis_dim[3];
  switch (*mode) {
    case kHeadsInner:
    case kHeadsFolded: {
      const bool inner = *mode == kHeadsInner;
      dims[0] = cuuint64_t(inner ? heads * cols : cols);
      dims[4] = cuuint64_t(inner ? batch : batch * heads);
      elem_strides[3] = inner ? s.batch : s.head;
      axis_dim[0] = 3, axis_dim[1] = 2, axis_dim[2] = 1;
      break;
    }
    case kHeadsApart:
      dims[0] = cuuint64_t(cols), dims[1] = cuuint64_t(heads), dims[4] = cuuint64_t(batch);
      elem_strides[0] = s.head, elem_strides[3] = s.batch;
      axis_dim[0] = 3, axis_dim[1] = 2, axis_dim[2] = -1;
      break;
    default:  // kHeadsApartB1
      dims[0] = cuuint64_t(cols), dims[1] = cuuint64_t(heads);
      elem_strides[0] = s.head;
      axis_dim[0] = 4, axis_dim[1] = 3, axis_dim[2] = 2;
      break;
  }
  for (int a = 0; a < 3; ++a) {
    const int d = axis_dim[a];
    if (d < 0) continue;
    dims[d] = cuuint64_t(m.extent[a]);
    elem_strides[d - 1] = s.axis[a];
    step[d] = cuuint32_t(m.dilation[a]);
    box[d] = cuuint32_t((1 << m.shift[a]) * m.dilation[a]);
  }
  cuuint64_t strides[4];
  cuuint64_t packed = dims[0] * es;  // a dense stride for dims of extent 1, whose stride is never used
  for (int i = 0; i < 4; ++i) {
    strides[i] = dims[i + 1] == 1 ? packed : cuuint64_t(elem_strides[i]) * es;
    packed = strides[i] * dims[i + 1];
  }
  const CUresult r = fn(map, type, 5, const_cast<void*>(base), dims, strides, box, step, CU_TENSOR_MAP_INTERLEAVE_NONE,
                        swizzle, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    return Status::Runtime(std::string("sm90: encoding the tensor map of ") + name + " failed (CUresult " +
                           std::to_string(int(r)) + ")");
  return Status::Ok();
}

// Encoded maps by everything an encode reads. Steady-state loops call with the same tensors
// (or with blocks torch's caching allocator hands back), and an encode is a driver call that
// validates every field (the host trace's encode phase). A map is a function of its inputs, so
// a hit is the map the encode would make. Bounded: past 4096 maps it starts over.
struct MapKey {
  const void* base;
  int dtype, pw;
  int64_t batch, heads, cols;
  MapGrid m;
  Strides s;
  // Built zeroed (padding too), copied whole: keys compare and hash bytewise.
  bool operator==(const MapKey& o) const { return std::memcmp(this, &o, sizeof(MapKey)) == 0; }
};

struct MapKeyHash {
  size_t operator()(const MapKey& k) const {
    uint64_t h = 1469598103934665603ull;  // FNV-1a over the key's bytes
    const unsigned char* b = reinterpret_cast<const unsigned char*>(&k);
    for (size_t i = 0; i < sizeof(MapKey); ++i) h = (h ^ b[i]) * 1099511628211ull;
    return size_t(h);
  }
};

struct CachedMap {
  CUtensorMap map;
  int mode;
};

class MapCache {
 public:
  bool find(const MapKey& k, CUtensorMap* map, int* mode) {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = maps_.find(k);
    if (it == maps_.end()) return false;
    *map = it->second.map;
    *mode = it->second.mode;
    return true;
  }
  void put(const MapKey& k, const CUtensorMap& map, int mode) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (maps_.size() >= kMaxMaps) maps_.clear();
    maps_[k] = CachedMap{map, mode};
  }

 private:
  static constexpr size_t kMaxMaps = 4096;
  std::mutex mutex_;
  std::unordered_map<MapKey, CachedMap, MapKeyHash> maps_;
};

MapCache& map_cache() {
  static MapCache c;
  return c;
}

}  // namespace

int map_mode(const TensorView& t) {
  const int n = t.ndim;
  if (n < 4 || !(t.stride[n - 1] == 1 || t.shape[n - 1] == 1)) return -1;
  for (int i = 0; i + 1 < n; ++i)
    if (t.shape[i] != 1 && t.stride[i] % 8 != 0) return -1;
  if (n <= 5 || t.shape[n - 3] == 1) return kHeadsApart;  // rank <= 2, or X3 == 1
  if (t.shape[0] == 1) return kHeadsApartB1;
  if (t.stride[n - 2] == t.shape[n - 1] || t.shape[n - 2] == 1) return kHeadsInner;
  if (t.shape[0] == 1 || t.stride[0] == t.shape[n - 2] * t.stride[n - 2]) return kHeadsFolded;
  return -1;
}

Status encode_maps(const MapSource* maps, int n, DType dtype, int64_t batch, int padded, CUtensorMap* tma, int* mode,
                   int* cols) {
  const int pw = padded >= 64 ? 64 : padded;
  for (int i = 0; i < n; ++i) {
    const MapSource& m = maps[i];
    cols[i] = int(m.cols);
    mode[i] = 0;
    if (m.base == nullptr) continue;
    MapKey key;
    std::memset(&key, 0, sizeof key);  // padding bytes too: keys compare bytewise
    key.base = m.base;
    key.dtype = int(dtype);
    key.pw = pw;
    key.batch = batch;
    key.heads = m.heads;
    key.cols = m.cols;
    key.m = m.m;
    key.s = m.s;
    if (map_cache().find(key, &tma[i], &mode[i])) continue;
    HostPhaseTimer miss(HostPhase::kEncode);
    NATTN_RETURN_IF_ERROR(encode(&tma[i], m.base, dtype, m.m, batch, m.heads, m.cols, m.s, pw, m.name, &mode[i]));
    map_cache().put(key, tma[i], mode[i]);
  }
  return Status::Ok();
}

}  // namespace nattn::cuda::sm90
