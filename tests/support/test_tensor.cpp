// Layer: tests. Seeded randomness, strided host tensors, poisoning, comparison (test_tensor.h).
#include "support/test_tensor.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <sstream>

#include "core/dtype_convert.h"

namespace nattn_test {
namespace {

constexpr unsigned char kPoison = 0xFF;

uint64_t fresh_seed() {
  if (const char* env = std::getenv("NATTN_TEST_SEED")) return std::strtoull(env, nullptr, 10);
  std::random_device rd;
  return (uint64_t(rd()) << 32) ^ uint64_t(rd());
}

double load(const unsigned char* p, nattn::DType t) {
  using namespace nattn::convert;
  switch (t) {
    case nattn::DType::kFloat32: {
      float x;
      std::memcpy(&x, p, 4);
      return x;
    }
    case nattn::DType::kFloat64: {
      double x;
      std::memcpy(&x, p, 8);
      return x;
    }
    case nattn::DType::kFloat16: {
      half_bits x;
      std::memcpy(&x.bits, p, 2);
      return to_double(x);
    }
    case nattn::DType::kBFloat16: {
      bf16_bits x;
      std::memcpy(&x.bits, p, 2);
      return to_double(x);
    }
  }
  return NAN;
}

void store(unsigned char* p, nattn::DType t, double v) {
  using namespace nattn::convert;
  switch (t) {
    case nattn::DType::kFloat32: {
      const float x = float(v);
      std::memcpy(p, &x, 4);
      return;
    }
    case nattn::DType::kFloat64: std::memcpy(p, &v, 8); return;
    case nattn::DType::kFloat16: {
      const half_bits x = from_double<half_bits>(v);
      std::memcpy(p, &x.bits, 2);
      return;
    }
    case nattn::DType::kBFloat16: {
      const bf16_bits x = from_double<bf16_bits>(v);
      std::memcpy(p, &x.bits, 2);
      return;
    }
  }
}

// Element offset of the row-major `linear` index of a view.
int64_t view_offset(const nattn::TensorView& v, int64_t linear) {
  int64_t off = 0;
  for (int d = v.ndim - 1; d >= 0; --d) {
    off += (linear % v.shape[d]) * v.stride[d];
    linear /= v.shape[d];
  }
  return off;
}

}  // namespace

Rng::Rng() : Rng(fresh_seed()) {}

std::string Rng::trace() const {
  return "seed = " + std::to_string(seed_) + " (replay: NATTN_TEST_SEED=" + std::to_string(seed_) + ")";
}

int64_t Rng::integer(int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(engine_); }
double Rng::uniform(double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(engine_); }
bool Rng::coin(double p_true) { return std::bernoulli_distribution(p_true)(engine_); }

const char* layout_name(Layout l) {
  switch (l) {
    case Layout::kContiguous: return "contiguous";
    case Layout::kPadded: return "padded";
    case Layout::kPermuted: return "permuted";
    case Layout::kBroadcast: return "broadcast";
  }
  return "?";
}

Layout random_layout(Rng& rng, bool is_output) {
  const int64_t n = is_output ? 2 : 3;
  switch (rng.integer(0, n)) {
    case 0: return Layout::kContiguous;
    case 1: return Layout::kPadded;
    case 2: return Layout::kPermuted;
    default: return Layout::kBroadcast;
  }
}

TestTensor::TestTensor(std::vector<int64_t> shape, nattn::DType dtype, Layout layout, Rng& rng)
    : shape_(std::move(shape)), stride_(shape_.size()), dtype_(dtype), layout_(layout) {
  const size_t n = shape_.size();
  std::vector<size_t> order(n);  // order[0] is the outermost dim in storage
  std::iota(order.begin(), order.end(), size_t(0));
  if (layout == Layout::kPermuted) std::shuffle(order.begin(), order.end(), std::mt19937_64(rng.integer(0, 1 << 30)));
  const bool pad = layout != Layout::kContiguous;
  int64_t step = 1;
  for (size_t i = n; i-- > 0;) {
    const size_t d = order[i];
    stride_[d] = step;
    step *= std::max<int64_t>(shape_[d], 1) + (pad ? rng.integer(0, 2) : 0);
  }
  if (pad) {
    // A size-1 dim may have any stride; 0 and large ones are legal views too.
    for (size_t d = 0; d < n; ++d)
      if (shape_[d] == 1) stride_[d] = rng.pick(std::vector<int64_t>{0, 1, 5, 1000});
    origin_ = rng.integer(0, 5);
  }
  if (layout == Layout::kBroadcast && n > 0) stride_[0] = 0;
  allocate();
}

TestTensor::TestTensor(std::vector<int64_t> shape, nattn::DType dtype, std::vector<int64_t> strides, int64_t origin)
    : shape_(std::move(shape)), stride_(std::move(strides)), dtype_(dtype), origin_(origin) {
  allocate();
}

void TestTensor::allocate() {
  int64_t max_off = 0;
  for (size_t d = 0; d < shape_.size(); ++d) max_off += std::max<int64_t>(shape_[d] - 1, 0) * stride_[d];
  storage_.assign(size_t((origin_ + max_off + 4) * nattn::dtype_size(dtype_)), kPoison);
}

int64_t TestTensor::numel() const {
  int64_t n = 1;
  for (int64_t s : shape_) n *= s;
  return n;
}

nattn::TensorView TestTensor::view() const {
  nattn::TensorView v;
  if (!defined()) return v;
  v.data = const_cast<unsigned char*>(storage_.data()) + origin_ * nattn::dtype_size(dtype_);
  v.dtype = dtype_;
  v.ndim = int(shape_.size());
  for (int d = 0; d < v.ndim; ++d) {
    v.shape[d] = shape_[size_t(d)];
    v.stride[d] = stride_[size_t(d)];
  }
  return v;
}

int64_t TestTensor::offset_of(int64_t linear) const { return origin_ + view_offset(view(), linear); }

std::vector<double> read_view(const nattn::TensorView& v) {
  std::vector<double> out(static_cast<size_t>(v.numel()));
  const auto* base = static_cast<const unsigned char*>(v.data);
  for (int64_t i = 0; i < v.numel(); ++i)
    out[size_t(i)] = load(base + view_offset(v, i) * nattn::dtype_size(v.dtype), v.dtype);
  return out;
}

void write_view(const nattn::TensorView& v, const std::vector<double>& values) {
  auto* base = static_cast<unsigned char*>(v.data);
  for (int64_t i = 0; i < v.numel(); ++i)
    store(base + view_offset(v, i) * nattn::dtype_size(v.dtype), v.dtype, values[size_t(i)]);
}

std::vector<double> TestTensor::read() const { return read_view(view()); }

void TestTensor::write(const std::vector<double>& values) { write_view(view(), values); }

void TestTensor::fill_random(Rng& rng) {
  std::vector<double> v(static_cast<size_t>(numel()));
  for (double& x : v) x = rng.uniform(-1.0, 1.0);
  write(v);
}

void TestTensor::poison() { std::fill(storage_.begin(), storage_.end(), kPoison); }

bool TestTensor::all_poisoned() const {
  return std::all_of(storage_.begin(), storage_.end(), [](unsigned char b) { return b == kPoison; });
}

int64_t TestTensor::unwritten_elements() const {
  const int es = nattn::dtype_size(dtype_);
  int64_t n = 0;
  for (int64_t i = 0; i < numel(); ++i) {
    const unsigned char* p = &storage_[size_t(offset_of(i) * es)];
    n += std::all_of(p, p + es, [](unsigned char b) { return b == kPoison; });
  }
  return n;
}

bool TestTensor::padding_poisoned() const {
  const int es = nattn::dtype_size(dtype_);
  std::vector<char> in_view(storage_.size(), 0);
  for (int64_t i = 0; i < numel(); ++i) std::fill_n(in_view.begin() + offset_of(i) * es, es, 1);
  for (size_t b = 0; b < storage_.size(); ++b)
    if (!in_view[b] && storage_[b] != kPoison) return false;
  return true;
}

Tolerance storage_tolerance(nattn::DType dtype) {
  // The only error left is rounding the result to dtype (half an ulp, 2^-(significand bits + 1)
  // relative) and double summation order (atol, for sums that cancel).
  switch (dtype) {
    case nattn::DType::kFloat64: return {1e-12, 1e-12};
    case nattn::DType::kFloat32: return {1e-10, 1.5e-7};        // 2^-24 = 6.0e-8
    case nattn::DType::kFloat16: return {1e-10, 6e-4, 3.5e-8};  // 2^-11 = 4.9e-4; subnormals 2^-25
    case nattn::DType::kBFloat16: return {1e-10, 4.5e-3};       // 2^-8 = 3.9e-3
  }
  return {0, 0};
}

Tolerance lse_tolerance() { return {1e-6, 1e-6}; }

bool expect_close(const std::vector<double>& actual, const std::vector<double>& expected, Tolerance tol,
                  const std::string& what) {
  if (actual.size() != expected.size()) {
    ADD_FAILURE() << what << ": " << actual.size() << " values, expected " << expected.size();
    return false;
  }
  // Infinite expected values (lse = -inf of a query without keys) must match exactly and do not
  // scale the tolerance of the others.
  double scale = 0;
  for (double e : expected)
    if (std::isfinite(e)) scale = std::max(scale, std::fabs(e));
  int64_t bad = 0;
  std::ostringstream msg;
  for (size_t i = 0; i < actual.size(); ++i) {
    if (std::isinf(expected[i]) && actual[i] == expected[i]) continue;
    const double err = std::fabs(actual[i] - expected[i]);
    if (err <= tol.atol * scale + tol.rtol * std::fabs(expected[i]) + tol.floor) continue;  // NaN fails
    if (bad++ < 5)
      msg << "\n  [" << i << "] actual " << actual[i] << " expected " << expected[i] << " (err " << err << ")";
  }
  if (bad == 0) return true;
  ADD_FAILURE() << what << ": " << bad << " of " << actual.size() << " values differ (atol " << tol.atol
                << " * max|expected| " << scale << ", rtol " << tol.rtol << ", floor " << tol.floor << ")" << msg.str();
  return false;
}

}  // namespace nattn_test
