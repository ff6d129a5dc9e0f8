// Layer: core. Names and sizes of dtypes and devices, shape printing.
#include "nattn/tensor.h"

#include <sstream>

namespace nattn {

int dtype_size(DType t) {
  switch (t) {
    case DType::kFloat32: return 4;
    case DType::kFloat16: return 2;
    case DType::kBFloat16: return 2;
    case DType::kFloat64: return 8;
  }
  return 1;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::kFloat32: return "float32";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    case DType::kFloat64: return "float64";
  }
  return "unknown";
}

std::string device_name(Device d) {
  // The index of a CPU device is shown only when set, so that a mismatch of indices reads as one.
  if (d.type == DeviceType::kCPU) return d.index == 0 ? "cpu" : "cpu:" + std::to_string(d.index);
  if (d.type == DeviceType::kCUDA) return "cuda:" + std::to_string(d.index);
  return "unknown";
}

std::string shape_string(const TensorView& t) {
  std::ostringstream o;
  o << "[";
  for (int i = 0; i < t.ndim; ++i) o << (i ? ", " : "") << t.shape[i];
  o << "]";
  return o.str();
}

}  // namespace nattn
