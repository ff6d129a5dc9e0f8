// Layer: public API. A non-owning view of a strided tensor in host or device memory.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <string>

namespace nattn {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };
enum class DeviceType : int { kCPU = 0, kCUDA = 1 };

struct Device {
  DeviceType type = DeviceType::kCPU;
  int index = 0;
  bool operator==(const Device& o) const { return type == o.type && index == o.index; }
  bool operator!=(const Device& o) const { return !(*this == o); }
};

int dtype_size(DType t);
const char* dtype_name(DType t);
std::string device_name(Device d);

// Batch + up to 3 spatial axes + heads + head dim.
inline constexpr int kMaxDims = 6;

// Shape and strides are in elements; strides may be any non-negative value (views, permutes,
// packed qkv), and every offset is computed in 64 bits. A view with ndim == 0 is "absent"
// (used for optional tensors: lse, additional keys/values, dlse).
struct TensorView {
  void* data = nullptr;
  DType dtype = DType::kFloat32;
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t stride[kMaxDims] = {};
  Device device{};

  bool defined() const { return ndim > 0; }
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[i];
    return n;
  }
  // A row-major view of `data`.
  static TensorView contiguous(void* data, DType dtype, std::initializer_list<int64_t> shape, Device device = {}) {
    TensorView t;
    t.data = data;
    t.dtype = dtype;
    t.device = device;
    t.ndim = static_cast<int>(shape.size());
    int i = 0;
    for (int64_t s : shape) t.shape[i++] = s;
    int64_t st = 1;
    for (int d = t.ndim - 1; d >= 0; --d) {
      t.stride[d] = st;
      st *= t.shape[d];
    }
    return t;
  }
};

std::string shape_string(const TensorView& t);

}  // namespace nattn
