// Layer: bench. See buffers.h.
#include "bench/buffers.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "core/dtype_convert.h"
#ifdef NATTN_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace nattn::bench {
namespace {

#ifdef NATTN_WITH_CUDA
void cuda_check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "nattn-bench: %s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}
#endif

void store(DType t, void* base, int64_t i, double x) {
  switch (t) {
    case DType::kFloat32: static_cast<float*>(base)[i] = float(x); break;
    case DType::kFloat64: static_cast<double*>(base)[i] = x; break;
    case DType::kFloat16:
      static_cast<convert::half_bits*>(base)[i] = convert::from_double<convert::half_bits>(x);
      break;
    case DType::kBFloat16:
      static_cast<convert::bf16_bits*>(base)[i] = convert::from_double<convert::bf16_bits>(x);
      break;
  }
}

double load(DType t, const void* base, int64_t i) {
  switch (t) {
    case DType::kFloat32: return static_cast<const float*>(base)[i];
    case DType::kFloat64: return static_cast<const double*>(base)[i];
    case DType::kFloat16: return convert::to_double(static_cast<const convert::half_bits*>(base)[i]);
    case DType::kBFloat16: return convert::to_double(static_cast<const convert::bf16_bits*>(base)[i]);
  }
  return 0;
}

int64_t count(const std::vector<int64_t>& s) {
  int64_t n = 1;
  for (int64_t x : s) n *= x;
  return n;
}

TensorView make_view(void* data, DType t, const std::vector<int64_t>& shape, Device dev) {
  TensorView v;
  v.data = data;
  v.dtype = t;
  v.device = dev;
  v.ndim = int(shape.size());
  int64_t st = 1;
  for (int d = v.ndim - 1; d >= 0; --d) {
    v.shape[d] = shape[size_t(d)];
    v.stride[d] = st;
    st *= shape[size_t(d)];
  }
  return v;
}

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = std::fabs(a[i] - b[i]);
    if (std::isnan(d)) return NAN;
    m = std::max(m, d);
  }
  return m;
}

}  // namespace

BackendInfo best_backend(BackendKind requested) {
  for (const BackendInfo& b : backends())
    if (b.available && (requested == BackendKind::kAuto || b.kind == requested)) return b;
  for (const BackendInfo& b : backends())
    if (b.kind == requested) {
      std::fprintf(stderr, "nattn-bench: backend %s is not available: %s\n", b.name.c_str(), b.reason.c_str());
      std::exit(1);
    }
  std::fprintf(stderr, "nattn-bench: no backend available\n");
  std::exit(1);
}

std::vector<int64_t> Buffers::shape(Slot s) const {
  std::vector<int64_t> grid{p_.batch};
  for (int a = 0; a < p_.rank; ++a) grid.push_back(p_.extent[a]);
  auto g = [&](int64_t h, int64_t d) {
    auto v = grid;
    v.push_back(h);
    if (d > 0) v.push_back(d);
    return v;
  };
  const std::vector<int64_t> ak{p_.batch, p_.num_additional, p_.heads_kv, p_.head_dim};
  const std::vector<int64_t> av{p_.batch, p_.num_additional, p_.heads_kv, p_.head_dim_v};
  switch (s) {
    case kQ:
    case kDq: return g(p_.heads_q, p_.head_dim);
    case kK:
    case kDk: return g(p_.heads_kv, p_.head_dim);
    case kV:
    case kDv: return g(p_.heads_kv, p_.head_dim_v);
    case kOut:
    case kDout: return g(p_.heads_q, p_.head_dim_v);
    case kLse: return g(p_.heads_q, 0);
    case kAK:
    case kDak: return ak;
    case kAV:
    case kDav: return av;
    default: return {};
  }
}

namespace {

// n elements of type t at dst: uniform in [-1.7, 1.7) (unit variance) when random, else NaN (the
// poison of outputs, one bit pattern copied). Large problems have ~10^9 elements per tensor, which one thread fills in
// tens of seconds (GPU-machine minutes per nattn-bench run): the range is split over the
// machine's threads, each with its own xorshift stream seeded from `seed`.
void fill_values(DType t, void* dst, int64_t n, bool random, uint64_t seed) {
  if (!random) {  // one bit pattern, copied: no conversion per element
    double nan_bits = 0;
    store(t, &nan_bits, 0, NAN);
    switch (dtype_size(t)) {
      case 2: std::fill_n(static_cast<uint16_t*>(dst), n, *reinterpret_cast<uint16_t*>(&nan_bits)); return;
      case 4: std::fill_n(static_cast<uint32_t*>(dst), n, *reinterpret_cast<uint32_t*>(&nan_bits)); return;
      default: std::fill_n(static_cast<uint64_t*>(dst), n, *reinterpret_cast<uint64_t*>(&nan_bits)); return;
    }
  }
  const int64_t workers = std::clamp<int64_t>(std::thread::hardware_concurrency(), 1, 64);
  const int64_t per = std::max<int64_t>((n + workers - 1) / workers, 1 << 16);
  auto run = [=](int64_t w) {
    uint64_t state = (seed ^ (0x9E3779B97F4A7C15ull * uint64_t(w + 1))) | 1;
    const int64_t end = std::min(n, (w + 1) * per);
    for (int64_t i = w * per; i < end; ++i) {
      state ^= state << 13;
      state ^= state >> 7;
      state ^= state << 17;
      const double x = (double(state >> 11) * 0x1.0p-53 * 2.0 - 1.0) * 1.7320508;
      if (t == DType::kBFloat16) {  // round to nearest even from float (store's exact path is 10x slower)
        uint32_t f;
        const float xf = float(x);
        std::memcpy(&f, &xf, 4);
        static_cast<uint16_t*>(dst)[i] = uint16_t((f + 0x7FFFu + ((f >> 16) & 1u)) >> 16);
      } else {
        store(t, dst, i, x);
      }
    }
  };
  std::vector<std::thread> pool;
  for (int64_t w = 1; w * per < n; ++w) pool.emplace_back(run, w);
  run(0);
  for (std::thread& th : pool) th.join();
}

}  // namespace

Buffers::Buffers(const Problem& p, DType dtype, BackendKind backend, bool fill)
    : p_(p), dtype_(dtype), device_(backend == BackendKind::kCuda) {
#ifdef NATTN_WITH_CUDA
  if (device_) cuda_check(cudaStreamCreate(reinterpret_cast<cudaStream_t*>(&stream_)), "cudaStreamCreate");
#endif
  const uint64_t seed = (uint64_t(std::random_device{}()) << 32) ^ std::random_device{}();
  for (int s = 0; s < kSlots; ++s) {
    if ((s == kAK || s == kAV || s == kDak || s == kDav) && p.num_additional == 0) continue;
    const DType t = s == kLse ? DType::kFloat32 : dtype;
    const int64_t n = count(shape(Slot(s)));
    const size_t bytes = size_t(std::max<int64_t>(n, 1)) * size_t(dtype_size(t));
    if (!fill) {
#ifdef NATTN_WITH_CUDA
      if (device_) {
        cuda_check(cudaMalloc(&data_[s], bytes), "cudaMalloc");
        continue;
      }
#endif
      data_[s] = std::malloc(bytes);
      continue;
    }
    // Inputs get random values; outputs a NaN poison so unwritten elements show up.
    const bool input = s <= kAV || s == kDout;
    if (device_) {
#ifdef NATTN_WITH_CUDA
      std::unique_ptr<unsigned char[]> host(new unsigned char[bytes]);  // no zeroing pass
      fill_values(t, host.get(), n, input, seed + uint64_t(s) * 0x100000001B3ull);
      cuda_check(cudaMalloc(&data_[s], bytes), "cudaMalloc");
      cuda_check(cudaMemcpy(data_[s], host.get(), bytes, cudaMemcpyHostToDevice), "cudaMemcpy");
#endif
    } else {
      data_[s] = std::malloc(bytes);
      fill_values(t, data_[s], n, input, seed + uint64_t(s) * 0x100000001B3ull);
    }
  }
}

Buffers::~Buffers() {
  for (void* d : data_) {
    if (!d) continue;
#ifdef NATTN_WITH_CUDA
    if (device_) {
      cudaFree(d);
      continue;
    }
#endif
    std::free(d);
  }
#ifdef NATTN_WITH_CUDA
  if (stream_) cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
#endif
}

void Buffers::sync() const {
#ifdef NATTN_WITH_CUDA
  if (device_) cuda_check(cudaStreamSynchronize(static_cast<cudaStream_t>(stream_)), "kernel");
#endif
}

TensorView Buffers::view(Slot s) const {
  if (!data_[s]) return {};
  const Device dev{device_ ? DeviceType::kCUDA : DeviceType::kCPU, 0};
  return make_view(data_[s], s == kLse ? DType::kFloat32 : dtype_, shape(s), dev);
}

ForwardTensors Buffers::forward_tensors() const {
  ForwardTensors t;
  t.q = view(kQ);
  t.k = view(kK);
  t.v = view(kV);
  t.additional_k = view(kAK);
  t.additional_v = view(kAV);
  t.out = view(kOut);
  t.lse = view(kLse);
  return t;
}

BackwardTensors Buffers::backward_tensors() const {
  BackwardTensors t;
  t.q = view(kQ);
  t.k = view(kK);
  t.v = view(kV);
  t.additional_k = view(kAK);
  t.additional_v = view(kAV);
  t.out = view(kOut);
  t.lse = view(kLse);
  t.dout = view(kDout);
  t.dq = view(kDq);
  t.dk = view(kDk);
  t.dv = view(kDv);
  t.d_additional_k = view(kDak);
  t.d_additional_v = view(kDav);
  return t;
}

std::vector<double> Buffers::read(Slot s) const {
  if (!data_[s]) return {};
  const DType t = s == kLse ? DType::kFloat32 : dtype_;
  const int64_t n = count(shape(s));
  std::vector<unsigned char> host(size_t(n) * size_t(dtype_size(t)));
  if (device_) {
#ifdef NATTN_WITH_CUDA
    cuda_check(cudaMemcpy(host.data(), data_[s], host.size(), cudaMemcpyDeviceToHost), "cudaMemcpy");
#endif
  } else {
    std::memcpy(host.data(), data_[s], host.size());
  }
  std::vector<double> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) out[size_t(i)] = load(t, host.data(), i);
  return out;
}

Errors Buffers::verify(bool backward) const {
  // Float64 copies of the (already rounded) inputs, run through the CPU reference.
  std::vector<double> ref[kSlots];
  std::vector<float> lse_ref(static_cast<size_t>(count(shape(kLse))));
  for (Slot s : {kQ, kK, kV, kAK, kAV, kDout}) ref[s] = read(s);
  for (Slot s : {kOut, kDq, kDk, kDv, kDak, kDav}) ref[s].assign(size_t(count(shape(s))), 0.0);
  // The same slots as the buffers under test (additional ones only with Na > 0).
  auto v = [&](Slot s) { return data_[s] ? make_view(ref[s].data(), DType::kFloat64, shape(s), {}) : TensorView{}; };
  ForwardTensors f;
  f.q = v(kQ);
  f.k = v(kK);
  f.v = v(kV);
  f.additional_k = v(kAK);
  f.additional_v = v(kAV);
  f.out = v(kOut);
  f.lse = make_view(lse_ref.data(), DType::kFloat32, shape(kLse), {});
  Options ref_opt;
  ref_opt.backend = BackendKind::kReference;
  Status st = forward(p_, f, ref_opt);
  if (!st.ok()) {
    std::fprintf(stderr, "nattn-bench: reference forward failed: %s\n", st.message().c_str());
    std::exit(1);
  }
  Errors e;
  e.forward = max_abs_diff(read(kOut), ref[kOut]);
  if (!backward) return e;
  BackwardTensors b;
  b.q = f.q;
  b.k = f.k;
  b.v = f.v;
  b.additional_k = f.additional_k;
  b.additional_v = f.additional_v;
  b.out = f.out;
  b.lse = f.lse;
  b.dout = v(kDout);
  b.dq = v(kDq);
  b.dk = v(kDk);
  b.dv = v(kDv);
  b.d_additional_k = v(kDak);
  b.d_additional_v = v(kDav);
  st = nattn::backward(p_, b, ref_opt);
  if (!st.ok()) {
    std::fprintf(stderr, "nattn-bench: reference backward failed: %s\n", st.message().c_str());
    std::exit(1);
  }
  for (Slot s : {kDq, kDk, kDv, kDak, kDav})
    if (data_[s]) e.backward = std::max(e.backward, max_abs_diff(read(s), ref[s]));
  return e;
}

}  // namespace nattn::bench
