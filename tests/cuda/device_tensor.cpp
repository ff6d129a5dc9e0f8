// Layer: tests. See device_tensor.h.
#include "device_tensor.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <sstream>
#include <stdexcept>

#include "support/call_check.h"

namespace nattn_test {
namespace {

// A CUDA failure inside a helper: gtest reports the exception as the test's failure.
void cuda_ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

}  // namespace

bool cuda_device_present() {
  static const bool present = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    return n > 0;
  }();
  return present;
}

int cuda_compute_capability() {
  if (!cuda_device_present()) return 0;
  int major = 0, minor = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0);
  return major * 10 + minor;
}

::testing::AssertionResult device_synchronized() {
  const cudaError_t e = cudaDeviceSynchronize();
  if (e == cudaSuccess) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "CUDA error after the call: " << cudaGetErrorString(e);
}

void CudaTest::SetUp() {
  if (cuda_device_present()) return;
  // Where the CUDA backend must be tested (scripts/gpu_check.sh), a missing device fails.
  const char* require = std::getenv("NATTN_REQUIRE_CUDA");
  if (require != nullptr && std::string(require) == "1") FAIL() << "NATTN_REQUIRE_CUDA=1 but no CUDA device is usable";
  GTEST_SKIP() << "no CUDA device on this machine";
}

void CudaTest::TearDown() {
  if (!cuda_device_present()) return;
  const cudaError_t sync = cudaDeviceSynchronize();
  EXPECT_EQ(sync, cudaSuccess) << "pending CUDA error after the test: " << cudaGetErrorString(sync);
  const cudaError_t last = cudaGetLastError();
  EXPECT_EQ(last, cudaSuccess) << "sticky CUDA error after the test: " << cudaGetErrorString(last);
}

// ---- DeviceTensor

DeviceTensor::DeviceTensor(std::vector<int64_t> shape, nattn::DType dtype, Layout layout, Rng& rng)
    : mirror_(std::move(shape), dtype, layout, rng) {
  allocate_and_upload();
}

DeviceTensor::DeviceTensor(std::vector<int64_t> shape, nattn::DType dtype, std::vector<int64_t> strides, int64_t origin)
    : mirror_(std::move(shape), dtype, std::move(strides), origin) {
  allocate_and_upload();
}

void DeviceTensor::allocate_and_upload() {
  void* p = nullptr;
  cuda_ok(cudaMalloc(&p, mirror_.bytes().size()), "cudaMalloc");
  device_ = std::shared_ptr<void>(p, [](void* q) { cudaFree(q); });
  upload();
}

void DeviceTensor::upload() const {
  const std::vector<unsigned char>& host = mirror_.bytes();
  cuda_ok(cudaMemcpy(device_.get(), host.data(), host.size(), cudaMemcpyHostToDevice), "cudaMemcpy to device");
}

void DeviceTensor::download() {
  std::vector<unsigned char>& host = mirror_.mutable_bytes();
  cuda_ok(cudaDeviceSynchronize(), "cudaDeviceSynchronize before a download");
  cuda_ok(cudaMemcpy(host.data(), device_.get(), host.size(), cudaMemcpyDeviceToHost), "cudaMemcpy to host");
}

bool DeviceTensor::device_unchanged() const {
  std::vector<unsigned char> now(mirror_.bytes().size());
  cuda_ok(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  cuda_ok(cudaMemcpy(now.data(), device_.get(), now.size(), cudaMemcpyDeviceToHost), "cudaMemcpy to host");
  return now == mirror_.bytes();
}

nattn::TensorView DeviceTensor::view() const {
  nattn::TensorView v = mirror_.view();
  if (!defined()) return v;
  // The same element offsets, into the device copy of the storage.
  v.data =
      static_cast<unsigned char*>(device_.get()) + (static_cast<const unsigned char*>(v.data) - mirror_.bytes().data());
  v.device = {nattn::DeviceType::kCUDA, 0};
  return v;
}

void DeviceTensor::fill_random(Rng& rng) {
  mirror_.fill_random(rng);
  upload();
}

void DeviceTensor::write(const std::vector<double>& values) {
  mirror_.write(values);
  upload();
}

std::vector<double> DeviceTensor::read() const { return mirror_.read(); }

void DeviceTensor::poison() {
  mirror_.poison();
  upload();
}

// ---- HostTensor

HostTensor::HostTensor(std::vector<int64_t> shape_, nattn::DType dtype_, const std::vector<double>* values)
    : shape(std::move(shape_)), dtype(dtype_) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  storage.assign(size_t(std::max<int64_t>(n, 1) * nattn::dtype_size(dtype)), 0);
  if (values != nullptr) write_view(view(), *values);
}

nattn::TensorView HostTensor::view() const {
  nattn::TensorView v;
  if (!defined()) return v;
  v.data = const_cast<unsigned char*>(storage.data());
  v.dtype = dtype;
  v.ndim = int(shape.size());
  int64_t st = 1;
  for (int d = v.ndim - 1; d >= 0; --d) {
    v.shape[d] = shape[size_t(d)];
    v.stride[d] = st;
    st *= shape[size_t(d)];
  }
  return v;
}

// ---- Calls

std::vector<int64_t> grid_shape(const nattn::Problem& p, int64_t heads, int64_t dim) {
  std::vector<int64_t> s{p.batch};
  for (int a = 0; a < p.rank; ++a) s.push_back(p.extent[a]);
  s.push_back(heads);
  if (dim > 0) s.push_back(dim);
  return s;
}

std::vector<int64_t> key_grid_shape(const nattn::Problem& p, int64_t heads, int64_t dim) {
  std::vector<int64_t> s{p.batch};
  for (int a = 0; a < p.rank; ++a) s.push_back(p.key_extent(a));
  s.push_back(heads);
  if (dim > 0) s.push_back(dim);
  return s;
}

Tolerance output_tolerance(nattn::DType dtype) {
  switch (dtype) {
    case nattn::DType::kFloat16: return {1e-2, 1e-2};
    case nattn::DType::kBFloat16: return {3e-2, 3e-2};
    case nattn::DType::kFloat32: return {1e-4, 1e-4};
    case nattn::DType::kFloat64: return {1e-6, 1e-6};  // the kernels' scale is a float32
  }
  return {0, 0};
}

Tolerance gradient_tolerance(nattn::DType dtype) {
  switch (dtype) {
    case nattn::DType::kFloat16: return {2e-2, 2e-2};
    case nattn::DType::kBFloat16: return {6e-2, 6e-2};
    case nattn::DType::kFloat32: return {2e-4, 2e-4};
    case nattn::DType::kFloat64: return {1e-6, 1e-6};  // Delta (dout . out) is a float32 workspace
  }
  return {0, 0};
}

// lse is float32 from float32 scores of the stored inputs in every dtype.
Tolerance cuda_lse_tolerance() { return {0, 1e-3, 1e-3}; }

std::string describe_problem(const nattn::Problem& p) {
  std::ostringstream o;
  o << "rank " << p.rank << ":";
  for (int a = 0; a < p.rank; ++a)
    o << " " << p.extent[a] << "(k" << p.window.kernel_size[a] << " s" << p.window.stride[a] << " d"
      << p.window.dilation[a] << (p.window.is_causal[a] ? " causal" : "") << ")";
  if (p.placed()) {
    o << ", placed:";
    for (int a = 0; a < p.rank; ++a)
      o << " [global " << p.global_extent(a) << ", queries at " << p.placement.query_origin[a] << ", keys "
        << p.key_extent(a) << " at " << p.placement.key_origin[a] << "]";
  }
  o << ", B " << p.batch << ", Hq " << p.heads_q << ", Hkv " << p.heads_kv << ", D " << p.head_dim << ", Dv "
    << p.head_dim_v << ", Na " << p.num_additional;
  if (p.scale) o << ", scale " << *p.scale;
  return o.str();
}

nattn::Options cuda_options() {
  nattn::Options o;
  o.backend = nattn::BackendKind::kCuda;
  return o;
}

namespace {

DeviceTensor input(std::vector<int64_t> shape, nattn::DType dtype, bool strided, Rng& rng) {
  DeviceTensor t(std::move(shape), dtype, strided ? random_layout(rng, false) : Layout::kContiguous, rng);
  t.fill_random(rng);
  return t;
}

DeviceTensor output(std::vector<int64_t> shape, nattn::DType dtype, bool strided, Rng& rng) {
  return DeviceTensor(std::move(shape), dtype, strided ? random_layout(rng, true) : Layout::kContiguous, rng);
}

void make_inputs(const nattn::Problem& p, nattn::DType dtype, bool strided, Rng& rng, DeviceTensor* q, DeviceTensor* k,
                 DeviceTensor* v, DeviceTensor* ka, DeviceTensor* va) {
  *q = input(grid_shape(p, p.heads_q, p.head_dim), dtype, strided, rng);
  *k = input(key_grid_shape(p, p.heads_kv, p.head_dim), dtype, strided, rng);
  *v = input(key_grid_shape(p, p.heads_kv, p.head_dim_v), dtype, strided, rng);
  if (p.num_additional > 0) {
    *ka = input({p.batch, p.num_additional, p.heads_kv, p.head_dim}, dtype, strided, rng);
    *va = input({p.batch, p.num_additional, p.heads_kv, p.head_dim_v}, dtype, strided, rng);
  }
}

// A float64 host copy of a device tensor's stored values (float32 for float32-only tensors).
HostTensor host_copy(const DeviceTensor& t, nattn::DType dtype = nattn::DType::kFloat64) {
  if (!t.defined()) return {};
  const std::vector<double> values = t.read();
  return HostTensor(t.shape(), dtype, &values);
}

HostTensor host_like(const DeviceTensor& t, nattn::DType dtype = nattn::DType::kFloat64) {
  return t.defined() ? HostTensor(t.shape(), dtype) : HostTensor();
}

nattn::Options reference_options() {
  nattn::Options o;
  o.backend = nattn::BackendKind::kReference;
  return o;
}

struct ReferenceForward {
  HostTensor out, lse;
};

ReferenceForward reference_forward(const nattn::Problem& p, const DeviceTensor& q, const DeviceTensor& k,
                                   const DeviceTensor& v, const DeviceTensor& ka, const DeviceTensor& va) {
  const HostTensor hq = host_copy(q), hk = host_copy(k), hv = host_copy(v), hka = host_copy(ka), hva = host_copy(va);
  ReferenceForward r{HostTensor(grid_shape(p, p.heads_q, p.head_dim_v), nattn::DType::kFloat64),
                     HostTensor(grid_shape(p, p.heads_q, 0), nattn::DType::kFloat32)};
  nattn::ForwardTensors t;
  t.q = hq.view();
  t.k = hk.view();
  t.v = hv.view();
  t.additional_k = hka.view();
  t.additional_v = hva.view();
  t.out = r.out.view();
  t.lse = r.lse.view();
  const nattn::Status s = nattn::forward(p, t, reference_options());
  if (!s.ok()) throw std::runtime_error("reference forward failed: " + s.message());
  return r;
}

void expect_written(const DeviceTensor& t, const char* name) {
  if (!t.defined()) return;
  EXPECT_EQ(t.unwritten_elements(), 0) << name << ": elements left unwritten (still poisoned)";
  EXPECT_TRUE(t.padding_poisoned()) << name << ": bytes outside the view were written";
}

}  // namespace

nattn::ForwardTensors DeviceForward::views() const { return forward_views_of(*this); }

std::string DeviceForward::describe() const {
  return describe_problem(problem) + ", " + nattn::dtype_name(dtype) + (lse.defined() ? ", lse" : "");
}

DeviceForward make_device_forward(const nattn::Problem& p, nattn::DType dtype, bool strided, bool with_lse, Rng& rng) {
  DeviceForward c;
  c.problem = p;
  c.dtype = dtype;
  make_inputs(p, dtype, strided, rng, &c.q, &c.k, &c.v, &c.ka, &c.va);
  c.out = output(grid_shape(p, p.heads_q, p.head_dim_v), dtype, strided, rng);
  if (with_lse) c.lse = output(grid_shape(p, p.heads_q, 0), nattn::DType::kFloat32, strided, rng);
  return c;
}

void expect_forward_matches_reference(DeviceForward& c) {
  SCOPED_TRACE(c.describe());
  for (const DeviceTensor* t : {&c.q, &c.k, &c.v, &c.ka, &c.va})
    if (t->defined()) {
      EXPECT_TRUE(t->device_unchanged()) << "an input was modified";
    }
  c.out.download();
  if (c.lse.defined()) c.lse.download();
  expect_written(c.out, "out");
  expect_written(c.lse, "lse");
  const ReferenceForward ref = reference_forward(c.problem, c.q, c.k, c.v, c.ka, c.va);
  expect_close(c.out.read(), ref.out.read(), output_tolerance(c.dtype), "out");
  if (c.lse.defined()) expect_close(c.lse.read(), ref.lse.read(), cuda_lse_tolerance(), "lse");
}

nattn::BackwardTensors DeviceBackward::views() const { return backward_views_of(*this); }

std::string DeviceBackward::describe() const {
  return describe_problem(problem) + ", " + nattn::dtype_name(dtype) + (dlse.defined() ? ", dlse" : "");
}

void finish_device_backward(DeviceBackward& c, bool strided, bool with_dlse, Rng& rng, DeviceTensor* dout) {
  const nattn::Problem& p = c.problem;
  const nattn::DType dtype = c.dtype;
  // out and lse hold one forward's results (stored in their dtypes): output layouts, no broadcast.
  const ReferenceForward f = reference_forward(p, c.q, c.k, c.v, c.ka, c.va);
  c.out = output(grid_shape(p, p.heads_q, p.head_dim_v), dtype, strided, rng);
  c.out.write(f.out.read());
  c.lse = output(grid_shape(p, p.heads_q, 0), nattn::DType::kFloat32, strided, rng);
  c.lse.write(f.lse.read());
  if (dout != nullptr)
    c.dout = std::move(*dout);
  else
    c.dout = input(grid_shape(p, p.heads_q, p.head_dim_v), dtype, strided, rng);
  c.dlse = with_dlse ? input(grid_shape(p, p.heads_q, 0), nattn::DType::kFloat32, strided, rng) : DeviceTensor();
  c.dq = output(grid_shape(p, p.heads_q, p.head_dim), dtype, strided, rng);
  c.dk = output(key_grid_shape(p, p.heads_kv, p.head_dim), dtype, strided, rng);
  c.dv = output(key_grid_shape(p, p.heads_kv, p.head_dim_v), dtype, strided, rng);
  if (p.num_additional > 0) {
    c.dka = output({p.batch, p.num_additional, p.heads_kv, p.head_dim}, dtype, strided, rng);
    c.dva = output({p.batch, p.num_additional, p.heads_kv, p.head_dim_v}, dtype, strided, rng);
  }
}

DeviceBackward make_device_backward(const nattn::Problem& p, nattn::DType dtype, bool strided, bool with_dlse, Rng& rng,
                                    DeviceTensor* dout) {
  DeviceBackward c;
  c.problem = p;
  c.dtype = dtype;
  make_inputs(p, dtype, strided, rng, &c.q, &c.k, &c.v, &c.ka, &c.va);
  finish_device_backward(c, strided, with_dlse, rng, dout);
  return c;
}

void expect_backward_matches_reference(DeviceBackward& c) {
  SCOPED_TRACE(c.describe());
  for (const DeviceTensor* t : {&c.q, &c.k, &c.v, &c.ka, &c.va, &c.out, &c.lse, &c.dout, &c.dlse})
    if (t->defined()) {
      EXPECT_TRUE(t->device_unchanged()) << "an input was modified";
    }
  const std::pair<const char*, DeviceTensor*> grads[] = {
      {"dq", &c.dq}, {"dk", &c.dk}, {"dv", &c.dv}, {"d_additional_k", &c.dka}, {"d_additional_v", &c.dva}};
  for (const auto& [name, t] : grads) {
    if (!t->defined()) continue;
    t->download();
    expect_written(*t, name);
  }
  // The reference on exactly what the kernels read: stored inputs, out in dtype, lse in float32.
  const HostTensor hq = host_copy(c.q), hk = host_copy(c.k), hv = host_copy(c.v), hka = host_copy(c.ka),
                   hva = host_copy(c.va), hout = host_copy(c.out), hdout = host_copy(c.dout),
                   hlse = host_copy(c.lse, nattn::DType::kFloat32), hdlse = host_copy(c.dlse, nattn::DType::kFloat32);
  HostTensor rdq = host_like(c.dq), rdk = host_like(c.dk), rdv = host_like(c.dv), rdka = host_like(c.dka),
             rdva = host_like(c.dva);
  nattn::BackwardTensors t;
  t.q = hq.view();
  t.k = hk.view();
  t.v = hv.view();
  t.additional_k = hka.view();
  t.additional_v = hva.view();
  t.out = hout.view();
  t.lse = hlse.view();
  t.dout = hdout.view();
  t.dlse = hdlse.view();
  t.dq = rdq.view();
  t.dk = rdk.view();
  t.dv = rdv.view();
  t.d_additional_k = rdka.view();
  t.d_additional_v = rdva.view();
  const nattn::Status s = nattn::backward(c.problem, t, reference_options());
  ASSERT_TRUE(s.ok()) << "reference backward failed: " << s.message();
  // A gradient can cancel to zero (a query with one key: dS = P (dP - Delta) = 0), leaving
  // only rounding, which the max|expected|-relative tolerance would compare against 0. The floor
  // ties it to the scale of the backward's outputs instead (a hundredth of the largest).
  Tolerance tol = gradient_tolerance(c.dtype);
  double largest = 0;
  for (const std::vector<double>& g : {rdq.read(), rdk.read(), rdv.read()})
    for (double x : g) largest = std::max(largest, std::abs(x));
  tol.floor = tol.atol * 1e-2 * largest;
  expect_close(c.dq.read(), rdq.read(), tol, "dq");
  expect_close(c.dk.read(), rdk.read(), tol, "dk");
  expect_close(c.dv.read(), rdv.read(), tol, "dv");
  if (c.dka.defined()) {
    expect_close(c.dka.read(), rdka.read(), tol, "d_additional_k");
    expect_close(c.dva.read(), rdva.read(), tol, "d_additional_v");
  }
}

}  // namespace nattn_test
