// Layer: cuda/sm80 device. Configuration choice and launch of the fused forward.
// The instantiation list below is the single source of the fused forward's variants:
// head dims 32/64/128/256 (any multiple of 8 up to 256 runs padded in the next one) x fp16/bf16.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <string>

#include "core/tile_shapes.h"
#include "cuda/check.h"
#include "cuda/sm80/device/fna.h"
#include "cuda/sm80/device/support.h"
#include "cuda/sm80/kernel/fna_forward.cuh"

namespace nattn::cuda::sm80 {
namespace {

template <class Element, int HD> struct ForwardConfig;
// 16 query rows per warp (MI = 1) keeps S and O accumulators in registers without spills.
template <class E> struct ForwardConfig<E, 32> { using T = ForwardTraits<E, 32, 128, 128, 8>; };
template <class E> struct ForwardConfig<E, 64> { using T = ForwardTraits<E, 64, 128, 128, 8>; };
// Measured on the H100 (2026-11-26): BM=128 x 8 warps beat BM=64 x 4 warps by 1.25-1.33x.
// 128-key boxes at head dim 128 (254 registers, no spills, 160 KB of shared memory) measured
// slower on the H100 (2026-11-26, bf16): flux-2d-s16 197 vs 203 TFLOP/s, hunyuan-3d 118 vs 130,
// img-2d 89 vs 94; the kernel is latency-bound (see bench/results), not overhead-bound.
template <class E> struct ForwardConfig<E, 128> { using T = ForwardTraits<E, 128, 128, 64, 8>; };
template <class E> struct ForwardConfig<E, 256> { using T = ForwardTraits<E, 256, 64, 64, 4>; };

template <class Tr>
Status launch(const Problem& problem, const ForwardParams& p, cudaStream_t stream) {
  const TileShapes shapes = choose_tile_shapes(problem, Tr::BM, Tr::BN);
  const Tiling tiling = make_tiling(p.g, shapes.q, shapes.k);
  const int64_t ctas = tiling.neighborhood_ctas;
  if (ctas > INT32_MAX) return Status::Unsupported("too many query tiles for one launch");
  auto kernel = fna_forward_kernel<Tr>;
  NATTN_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(Tr::kSmemBytes)),
                 "fused forward: setting shared memory size");
  const dim3 grid(unsigned(ctas), unsigned(p.g.heads_q), unsigned(p.g.batch));
  kernel<<<grid, Tr::kThreads, Tr::kSmemBytes, stream>>>(p, tiling);
  return check_launch("fused forward");
}

template <class Element>
Status dispatch(const Problem& problem, const ForwardParams& p, cudaStream_t s) {
  return with_head_dim<256>(padded_head_dim(p.g), [&](auto hd) {
    return launch<typename ForwardConfig<Element, decltype(hd)::value>::T>(problem, p, s);
  });
}

size_t smem_bytes(int padded_head_dim) {
  // The footprint does not depend on which 16-bit type.
  return with_head_dim<256>(padded_head_dim,
                            [](auto hd) { return ForwardConfig<__half, decltype(hd)::value>::T::kSmemBytes; });
}

}  // namespace

Status can_forward(const ForwardParams& p, DType dtype) {
  NATTN_RETURN_IF_ERROR(common_support(p.g, dtype));
  NATTN_RETURN_IF_ERROR(smem_support("the fused forward", smem_bytes(padded_head_dim(p.g))));
  const struct { const char* name; const void* ptr; const Strides& s; } rows[] = {
      {"q", p.q, p.sq}, {"k", p.k, p.sk}, {"v", p.v, p.sv}, {"out", p.out, p.so},
      {"additional_k", p.ka, p.ska}, {"additional_v", p.va, p.sva}};
  for (const auto& r : rows) NATTN_RETURN_IF_ERROR(rows_aligned(r.name, r.ptr, r.s));
  return Status::Ok();
}

Status forward(const Problem& problem, ForwardParams p, DType dtype, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (dtype == DType::kBFloat16) return dispatch<__nv_bfloat16>(problem, p, s);
  return dispatch<__half>(problem, p, s);
}

}  // namespace nattn::cuda::sm80
