// Layer: cuda/sm80 device. Shared "can the fused kernels run this" checks and helpers.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <type_traits>

#include "core/tile_shapes.h"
#include "cuda/params.h"
#include "nattn/status.h"
#include "nattn/tensor.h"

namespace nattn::cuda::sm80 {

// max(D, Dv) rounded up to an instantiated head dim.
inline int padded_head_dim(const Geometry& g) {
  const int64_t d = g.head_dim > g.head_dim_v ? g.head_dim : g.head_dim_v;
  return d <= 32 ? 32 : d <= 64 ? 64 : d <= 128 ? 128 : 256;
}

// The one switch over instantiated head dims: calls f(std::integral_constant<int, HD>{}) for a
// padded head dim (32, 64, 128, and 256 where kMax is 256). Callers have checked hd <= kMax.
template <int kMax, class F>
auto with_head_dim(int hd, F&& f) {
  static_assert(kMax == 128 || kMax == 256, "instantiated head dims end at 128 or 256");
  if (hd == 32) return f(std::integral_constant<int, 32>{});
  if (hd == 64) return f(std::integral_constant<int, 64>{});
  if constexpr (kMax == 256) {
    if (hd == 256) return f(std::integral_constant<int, 256>{});
  }
  return f(std::integral_constant<int, 128>{});
}

inline Status common_support(const Geometry& g, DType dtype) {
  if (dtype != DType::kFloat16 && dtype != DType::kBFloat16)
    return Status::Unsupported(std::string("fused kernels take float16/bfloat16 (got ") + dtype_name(dtype) + ")");
  int dev = 0, major = 0;
  cudaGetDevice(&dev);
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess || major < 8)
    return Status::Unsupported("fused kernels need compute capability 8.0 or newer");
  if (g.head_dim % 8 != 0 || g.head_dim_v % 8 != 0 || g.head_dim > 256 || g.head_dim_v > 256)
    return Status::Unsupported("fused kernels need head dims that are multiples of 8 up to 256 (got " +
                               std::to_string(g.head_dim) + ", " + std::to_string(g.head_dim_v) + ")");
  for (int a = 0; a < 3; ++a)
    if (g.extent[a] >= (int64_t(1) << 30)) return Status::Unsupported("fused kernels need extents < 2^30");
  if (g.heads_q > 65535 || g.batch > 65535) return Status::Unsupported("fused kernels need batch and heads <= 65535");
  return Status::Ok();
}

// Launch tiling for box shapes chosen by choose_tile_shapes (powers of two). `own` is the
// box each CTA owns (queries for forward/dQ, keys for dK/dV), `walk` the boxes it walks.
inline Tiling make_tiling(const Geometry& g, const std::array<int, 3>& own, const std::array<int, 3>& walk) {
  Tiling t;
  t.neighborhood_ctas = 1;
  for (int a = 0; a < 3; ++a) {
    t.fixed_shift[a] = log2_ceil(own[a]);
    t.walk_shift[a] = log2_ceil(walk[a]);
    const int64_t longest = (g.extent[a] + g.dilation[a] - 1) / g.dilation[a];  // group 0 is the longest
    t.fixed_tiles[a] = (longest + own[a] - 1) / own[a];
    t.neighborhood_ctas *= t.fixed_tiles[a] * g.dilation[a];
  }
  return t;
}

// Whether a kernel needing `bytes` of dynamic shared memory can launch on the current device
// (sm90: 227 KB per block; sm80: 163 KB; sm86/sm89: 99 KB).
inline bool smem_fits(size_t bytes) {
  int dev = 0, optin = 0;
  cudaGetDevice(&dev);
  if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) return false;
  return bytes <= size_t(optin);
}

inline Status smem_support(const char* kernel, size_t bytes) {
  if (smem_fits(bytes)) return Status::Ok();
  return Status::Unsupported(std::string(kernel) + " needs " + std::to_string(bytes) +
                             " bytes of shared memory per block, more than this device allows");
}

// Rows must be unit-stride and 16-byte aligned for cp.async.
inline Status rows_aligned(const char* name, const void* ptr, const Strides& s) {
  if (ptr == nullptr) return Status::Ok();
  const bool ok = s.dim == 1 && reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && s.batch % 8 == 0 &&
                  s.axis[0] % 8 == 0 && s.axis[1] % 8 == 0 && s.axis[2] % 8 == 0 && s.head % 8 == 0;
  if (!ok)
    return Status::Unsupported(std::string(name) +
                               ": fused kernels need unit-stride head dims and 16-byte aligned rows");
  return Status::Ok();
}

}  // namespace nattn::cuda::sm80
