// Layer: tests. Seeded randomness, strided host tensors of any dtype, poisoning, comparison.
#pragma once
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "nattn/tensor.h"

namespace nattn_test {

// A random generator with a fresh seed per check (from std::random_device, or from the
// environment variable NATTN_TEST_SEED to replay a failure). Put
// `SCOPED_TRACE(rng.trace())` in every check so a failure prints the seed.
class Rng {
 public:
  Rng();
  explicit Rng(uint64_t seed) : seed_(seed), engine_(seed) {}
  uint64_t seed() const { return seed_; }
  std::string trace() const;
  int64_t integer(int64_t lo, int64_t hi);  // uniform in [lo, hi]
  double uniform(double lo, double hi);
  bool coin(double p_true = 0.5);
  template <class T>
  const T& pick(const std::vector<T>& v) {
    return v[size_t(integer(0, int64_t(v.size()) - 1))];
  }

 private:
  uint64_t seed_;
  std::mt19937_64 engine_;
};

// A fixture with a fresh Rng whose seed every failure of the test prints.
class SeededTest : public ::testing::Test {
 protected:
  Rng rng;

 private:
  ::testing::ScopedTrace trace_{__FILE__, __LINE__, rng.trace()};
};

// How a tensor's elements are laid out in its storage.
enum class Layout {
  kContiguous,  // row-major
  kPadded,      // row-major with gaps between rows of every dim and an offset origin
  kPermuted,    // dims stored in a random order, padded
  kBroadcast,   // like kPadded but stride 0 on the first dim (inputs only)
};
const char* layout_name(Layout l);
// A random non-contiguous layout for an output (never broadcast) or an input.
Layout random_layout(Rng& rng, bool is_output);

// Values of any host view in logical row-major order, and stores into one (rounded to dtype).
std::vector<double> read_view(const nattn::TensorView& v);
void write_view(const nattn::TensorView& v, const std::vector<double>& values);

// A tensor in host memory of any dtype, viewed with a layout. Storage bytes outside the view
// (padding) are tracked so that writes outside an output's view are caught.
class TestTensor {
 public:
  TestTensor() = default;  // absent (view().ndim == 0)
  TestTensor(std::vector<int64_t> shape, nattn::DType dtype, Layout layout, Rng& rng);
  // Explicit element strides (any, 0 included) and offset of the first element in storage.
  TestTensor(std::vector<int64_t> shape, nattn::DType dtype, std::vector<int64_t> strides, int64_t origin);

  bool defined() const { return !shape_.empty(); }
  nattn::TensorView view() const;
  const std::vector<int64_t>& shape() const { return shape_; }
  nattn::DType dtype() const { return dtype_; }
  Layout layout() const { return layout_; }
  int64_t numel() const;

  // Values in logical row-major order, converted to double.
  std::vector<double> read() const;
  // Stores values (rounded to the dtype); aliased elements keep the last write.
  void write(const std::vector<double>& values);
  // Uniform values in [-1, 1] (never all zeros), stored; read() gives the stored truth.
  void fill_random(Rng& rng);

  // Every storage byte, in and around the view, set to 0xFF: a NaN in every dtype.
  void poison();
  bool all_poisoned() const;           // nothing was written anywhere
  int64_t unwritten_elements() const;  // elements of the view still holding the poison
  bool padding_poisoned() const;       // no byte outside the view was written
  const std::vector<unsigned char>& bytes() const { return storage_; }
  std::vector<unsigned char>& mutable_bytes() { return storage_; }  // e.g. filled from a device copy

 private:
  int64_t offset_of(int64_t linear) const;
  void allocate();

  std::vector<int64_t> shape_, stride_;
  nattn::DType dtype_ = nattn::DType::kFloat32;
  Layout layout_ = Layout::kContiguous;
  int64_t origin_ = 0;  // element offset of the view's first element in storage
  std::vector<unsigned char> storage_;
};

// Comparison of an implementation's values against the oracle's, elementwise:
// |actual - expected| <= atol * max|expected| + rtol * |expected| + floor.
struct Tolerance {
  double atol;
  double rtol;
  double floor = 0;
};
// Outputs computed in double from the same inputs as the oracle's, then stored in dtype.
Tolerance storage_tolerance(nattn::DType dtype);
Tolerance lse_tolerance();  // float32 logsumexp

// Adds a failure describing the worst elements when the values differ; returns whether close.
bool expect_close(const std::vector<double>& actual, const std::vector<double>& expected, Tolerance tol,
                  const std::string& what);

}  // namespace nattn_test
