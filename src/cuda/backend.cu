// Layer: cuda. The CUDA backend: converts validated views to kernel parameters and picks the
// kernel: forward runs the fused tensor-core kernel (sm80+, fp16/bf16, unit-stride rows) when it
// can implement the call and the generic exact kernel otherwise (fp32, fp64, odd layouts);
// backward likewise (the fused backward takes head dims up to 128).
#include "cuda/backend.h"

#include <string>

#include "cuda/check.h"
#include "cuda/generic/generic.h"
#include "cuda/params.h"
#include "cuda/sm80/device/fna.h"

namespace nattn {
namespace {

// Restores the caller's current device on scope exit.
class DeviceGuard {
 public:
  explicit DeviceGuard(int index) {
    cudaGetDevice(&previous_);
    if (previous_ != index) cudaSetDevice(index);
  }
  ~DeviceGuard() { cudaSetDevice(previous_); }
 private:
  int previous_ = 0;
};

cuda::Strides strides_of(const TensorView& t, int rank) {
  cuda::Strides s;
  if (!t.defined()) return s;
  s.batch = t.stride[0];
  for (int a = 0; a < rank; ++a) s.axis[a] = t.stride[1 + a];
  s.head = t.stride[rank + 1];
  s.dim = t.ndim > rank + 2 ? t.stride[rank + 2] : 1;
  return s;
}

// Additional keys/values [B, Na, H, D] have the layout of a rank-1 grid: Na is axis 0.
cuda::Strides additional_strides(const TensorView& t) { return strides_of(t, 1); }

// Strides of a contiguous [B, X1..Xr, Hq] float tensor (the backward's Delta workspace).
cuda::Strides contiguous_lse_strides(const Problem& p) {
  cuda::Strides s;
  int64_t inner = p.heads_q;
  s.head = 1;
  for (int a = p.rank - 1; a >= 0; --a) {
    s.axis[a] = inner;
    inner *= p.extent[a];
  }
  s.batch = inner;
  return s;
}

cuda::Geometry geometry(const Problem& p) {
  cuda::Geometry g;
  g.rank = p.rank;
  for (int a = 0; a < 3; ++a) {
    const bool used = a < p.rank;
    g.extent[a] = used ? p.extent[a] : 1;
    g.kernel[a] = used ? p.window.kernel_size[a] : 1;
    g.stride[a] = used ? p.window.stride[a] : 1;
    g.dilation[a] = used ? p.window.dilation[a] : 1;
    g.causal[a] = used && p.window.is_causal[a];
  }
  g.batch = p.batch;
  g.heads_q = p.heads_q;
  g.heads_kv = p.heads_kv;
  g.head_dim = p.head_dim;
  g.head_dim_v = p.head_dim_v;
  g.num_additional = p.num_additional;
  g.tokens = p.tokens();
  g.scale = float(p.effective_scale());
  return g;
}

class CudaBackend final : public Backend {
 public:
  BackendKind kind() const override { return BackendKind::kCuda; }
  const char* name() const override { return "cuda"; }

  Status available() const override {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
      cudaGetLastError();  // clear the sticky "no device" error
      return Status::Unsupported(std::string("no usable CUDA device (") + cudaGetErrorString(e) + ")");
    }
    if (n == 0) return Status::Unsupported("no CUDA device present");
    return Status::Ok();
  }

  Status supports(const Problem&, DType, Device device, bool) const override {
    if (device.type != DeviceType::kCUDA)
      return Status::Unsupported("runs on CUDA tensors only (got " + device_name(device) + ")");
    return Status::Ok();
  }

  Status forward(const Problem& p, const ForwardTensors& t, const Options& o) const override {
    DeviceGuard guard(t.q.device.index);
    cuda::ForwardParams fp;
    fp.g = geometry(p);
    fp.q = t.q.data; fp.k = t.k.data; fp.v = t.v.data;
    fp.ka = t.additional_k.data; fp.va = t.additional_v.data;
    fp.out = t.out.data;
    fp.lse = t.lse.defined() ? static_cast<float*>(t.lse.data) : nullptr;
    fp.sq = strides_of(t.q, p.rank); fp.sk = strides_of(t.k, p.rank); fp.sv = strides_of(t.v, p.rank);
    fp.so = strides_of(t.out, p.rank); fp.slse = strides_of(t.lse, p.rank);
    fp.ska = additional_strides(t.additional_k); fp.sva = additional_strides(t.additional_v);
    if (cuda::sm80::can_forward(fp, t.q.dtype).ok()) return cuda::sm80::forward(p, fp, t.q.dtype, o.stream);
    return cuda::generic::forward(fp, t.q.dtype, o.stream);
  }

  Status backward(const Problem& p, const BackwardTensors& t, const Options& o) const override {
    DeviceGuard guard(t.q.device.index);
    cuda::BackwardParams bp;
    bp.g = geometry(p);
    bp.q = t.q.data; bp.k = t.k.data; bp.v = t.v.data;
    bp.ka = t.additional_k.data; bp.va = t.additional_v.data;
    bp.out = t.out.data; bp.dout = t.dout.data;
    bp.lse = static_cast<const float*>(t.lse.data);
    bp.dlse = t.dlse.defined() ? static_cast<const float*>(t.dlse.data) : nullptr;
    bp.dq = t.dq.data; bp.dk = t.dk.data; bp.dv = t.dv.data;
    bp.dka = t.d_additional_k.data; bp.dva = t.d_additional_v.data;
    bp.sq = strides_of(t.q, p.rank); bp.sk = strides_of(t.k, p.rank); bp.sv = strides_of(t.v, p.rank);
    bp.so = strides_of(t.out, p.rank); bp.sdo = strides_of(t.dout, p.rank);
    bp.slse = strides_of(t.lse, p.rank); bp.sdlse = strides_of(t.dlse, p.rank);
    bp.sdq = strides_of(t.dq, p.rank); bp.sdk = strides_of(t.dk, p.rank); bp.sdv = strides_of(t.dv, p.rank);
    bp.ska = additional_strides(t.additional_k); bp.sva = additional_strides(t.additional_v);
    bp.sdka = additional_strides(t.d_additional_k); bp.sdva = additional_strides(t.d_additional_v);
    const cudaStream_t s = static_cast<cudaStream_t>(o.stream);
    const size_t bytes = size_t(p.batch * p.tokens() * p.heads_q) * sizeof(float);
    NATTN_CUDA_TRY(cudaMallocAsync(reinterpret_cast<void**>(&bp.delta), bytes, s), "allocating the backward workspace");
    bp.sdelta = contiguous_lse_strides(p);
    Status st = cuda::sm80::can_backward(bp, t.q.dtype).ok() ? cuda::sm80::backward(p, bp, t.q.dtype, o.stream)
                                                            : cuda::generic::backward(bp, t.q.dtype, o.stream);
    const Status freed = cuda::check(cudaFreeAsync(bp.delta, s), "freeing the backward workspace");
    return st.ok() ? freed : st;
  }
};

}  // namespace

const Backend& cuda_backend() {
  static const CudaBackend b;
  return b;
}

}  // namespace nattn
