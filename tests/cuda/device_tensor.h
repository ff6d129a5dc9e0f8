// Layer: tests. Tensors in CUDA device memory with a host mirror of their storage (poison,
// layouts, values), float64 host copies for the CPU reference backend, and the fixture that
// skips every CUDA test on a machine without a CUDA device.
#pragma once
#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "nattn/nattn.h"
#include "support/test_tensor.h"

namespace nattn_test {

// Whether a CUDA device is usable (asked once; clears the sticky "no device" error).
bool cuda_device_present();
// The compute capability of device 0 (major * 10 + minor), 0 without a device.
int cuda_compute_capability();

// Waits for the device; a failure carries the CUDA error (use right after a library call, inside
// the test's traces, so a failing kernel is reported with the problem that ran it).
::testing::AssertionResult device_synchronized();

// Every CUDA test: a fresh seeded Rng (SeededTest), skipped without a device (failed instead
// when NATTN_REQUIRE_CUDA=1); after each test, no CUDA error may be pending.
class CudaTest : public SeededTest {
 protected:
  void SetUp() override;
  void TearDown() override;
};

// A strided tensor whose storage lives on device 0, mirrored on the host. Values and poison
// are set on the mirror and uploaded; download() brings the device storage back.
class DeviceTensor {
 public:
  DeviceTensor() = default;  // absent (view().ndim == 0)
  // Row-major, or one of TestTensor's random layouts (padded, permuted, broadcast).
  DeviceTensor(std::vector<int64_t> shape, nattn::DType dtype, Layout layout, Rng& rng);
  // Explicit element strides and offset of the first element in the storage (any strides,
  // 0 included: the storage holds max offset + 1 elements past `origin`).
  DeviceTensor(std::vector<int64_t> shape, nattn::DType dtype, std::vector<int64_t> strides, int64_t origin);
  DeviceTensor(const DeviceTensor&) = delete;  // one owner of the device storage
  DeviceTensor& operator=(const DeviceTensor&) = delete;
  DeviceTensor(DeviceTensor&&) = default;
  DeviceTensor& operator=(DeviceTensor&&) = default;

  bool defined() const { return mirror_.defined(); }
  const std::vector<int64_t>& shape() const { return mirror_.shape(); }
  nattn::DType dtype() const { return mirror_.dtype(); }
  int64_t numel() const { return mirror_.numel(); }
  nattn::TensorView view() const;                                 // on the device
  nattn::TensorView host_view() const { return mirror_.view(); }  // on the host mirror

  // Uniform values in [-1, 1] into the view (stored in dtype), uploaded; read() gives them back.
  void fill_random(Rng& rng);
  void write(const std::vector<double>& values);  // stored in dtype, uploaded
  std::vector<double> read() const;               // the mirror's values (download() first for outputs)
  void poison();                                  // 0xFF in every storage byte (NaN in every dtype), uploaded
  void download();                                // device storage -> mirror

  // On the mirror: elements of the view still holding the poison; bytes outside it written.
  int64_t unwritten_elements() const { return mirror_.unwritten_elements(); }
  bool padding_poisoned() const { return mirror_.padding_poisoned(); }
  bool all_poisoned() const { return mirror_.all_poisoned(); }
  // Whether the device storage still equals the mirror (inputs a call must leave alone).
  bool device_unchanged() const;

 private:
  void allocate_and_upload();
  void upload() const;

  TestTensor mirror_;  // the storage's host image: layout, values, poison checks
  std::shared_ptr<void> device_;
};

// A contiguous host tensor of float64 (or float32 for lse-like tensors) for the reference backend.
struct HostTensor {
  HostTensor() = default;
  HostTensor(std::vector<int64_t> shape, nattn::DType dtype, const std::vector<double>* values = nullptr);
  bool defined() const { return !shape.empty(); }
  nattn::TensorView view() const;
  std::vector<double> read() const { return read_view(view()); }
  std::vector<int64_t> shape;
  nattn::DType dtype = nattn::DType::kFloat64;
  std::vector<unsigned char> storage;
};

// [B, X1..Xr, heads, dim] (dim <= 0: [B, X1..Xr, heads]).
std::vector<int64_t> grid_shape(const nattn::Problem& p, int64_t heads, int64_t dim);
// The same over the key box [B, K1..Kr, heads, dim] (placed problems; = grid_shape unless placed).
std::vector<int64_t> key_grid_shape(const nattn::Problem& p, int64_t heads, int64_t dim);

// Tolerances against the float64 reference on the same stored inputs, relative to the largest
// expected magnitude (atol) and to each value (rtol), for outputs and gradients of a dtype.
Tolerance output_tolerance(nattn::DType dtype);
Tolerance gradient_tolerance(nattn::DType dtype);
Tolerance cuda_lse_tolerance();

// One forward call's tensors on the device, and its check against the reference backend.
struct DeviceForward {
  nattn::Problem problem;
  nattn::DType dtype = nattn::DType::kBFloat16;
  DeviceTensor q, k, v, ka, va, out, lse;
  nattn::ForwardTensors views() const;
  std::string describe() const;
};

// Random inputs (row-major, or random layouts when `strided`), poisoned outputs.
DeviceForward make_device_forward(const nattn::Problem& p, nattn::DType dtype, bool strided, bool with_lse, Rng& rng);
// After a successful call: inputs unchanged, every output element written (and nothing around
// them), values close to the reference backend's float64 results on the same inputs.
void expect_forward_matches_reference(DeviceForward& c);

struct DeviceBackward {
  nattn::Problem problem;
  nattn::DType dtype = nattn::DType::kBFloat16;
  DeviceTensor q, k, v, ka, va, out, lse, dout, dlse, dq, dk, dv, dka, dva;
  nattn::BackwardTensors views() const;
  std::string describe() const;
};

// Random inputs and dout (dlse when `with_dlse`), out/lse from the reference forward (stored
// in the call's dtypes), poisoned gradients. `dout`, when given, replaces the random dout.
DeviceBackward make_device_backward(const nattn::Problem& p, nattn::DType dtype, bool strided, bool with_dlse, Rng& rng,
                                    DeviceTensor* dout = nullptr);
// The rest of a backward call for the inputs c already holds (q, k, v, ka, va, perhaps replaced
// after make_device_backward): out/lse from the reference forward, dout, dlse, poisoned gradients.
void finish_device_backward(DeviceBackward& c, bool strided, bool with_dlse, Rng& rng, DeviceTensor* dout = nullptr);
void expect_backward_matches_reference(DeviceBackward& c);

// Short description of a problem for traces.
std::string describe_problem(const nattn::Problem& p);

// Options that run on the CUDA backend.
nattn::Options cuda_options();

}  // namespace nattn_test
