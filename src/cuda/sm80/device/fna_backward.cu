// Layer: cuda/sm80 device. Configuration choice and launch of the fused backward: Delta
// (generic kernel, memory-bound), then dQ (CTAs own query boxes) and dK/dV (CTAs own key
// boxes, plus tiles of additional keys). Head dims 32/64/128 x fp16/bf16 are instantiated
// here (any multiple of 8 up to 128 runs padded); larger head dims take the generic kernels.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <string>

#include "core/tile_shapes.h"
#include "cuda/check.h"
#include "cuda/generic/generic.h"
#include "cuda/sm80/device/fna.h"
#include "cuda/sm80/device/support.h"
#include "cuda/sm80/kernel/fna_backward_dkdv.cuh"
#include "cuda/sm80/kernel/fna_backward_dq.cuh"

namespace nattn::cuda::sm80 {
namespace {

// dQ: 128 own queries over 8 warps (16 rows each), 64-key walked tiles.
// dK/dV: 128 own keys over 8 warps, 64-query walked tiles; at head dim 128 the dK and dV
// accumulators take 128 registers, and 64-query tiles spilled (ptxas, sm_90): 32 there.
template <class E, int HD> struct BackwardConfig {
  using Dq = BackwardTraits<E, HD, 128, 64, 8>;
  using Dkdv = BackwardTraits<E, HD, 128, (HD > 64 ? 32 : 64), 8>;
};

template <class Kernel>
Status set_smem(Kernel kernel, size_t bytes, const char* what) {
  return check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)), what);
}

template <class C>
Status launch(const Problem& problem, const BackwardParams& p, cudaStream_t stream) {
  using Dq = typename C::Dq;
  using Dkdv = typename C::Dkdv;
  {
    const TileShapes shapes = choose_tile_shapes(problem, Dq::BM, Dq::BN);
    const Tiling tiling = make_tiling(p.g, shapes.q, shapes.k);
    if (tiling.neighborhood_ctas > INT32_MAX) return Status::Unsupported("too many query tiles for one launch");
    auto kernel = fna_backward_dq_kernel<Dq>;
    NATTN_RETURN_IF_ERROR(set_smem(kernel, Dq::kSmemDq, "fused backward dq: setting shared memory size"));
    const dim3 grid(unsigned(tiling.neighborhood_ctas), unsigned(p.g.heads_q), unsigned(p.g.batch));
    kernel<<<grid, Dq::kThreads, Dq::kSmemDq, stream>>>(p, tiling);
    NATTN_RETURN_IF_ERROR(check_launch("fused backward dq"));
  }
  {
    const TileShapes shapes = choose_tile_shapes(problem, Dkdv::BN, Dkdv::BM, TileRole::kKeysFixed);
    const Tiling tiling = make_tiling(p.g, shapes.k, shapes.q);
    const int64_t ctas = tiling.neighborhood_ctas + (p.g.num_additional + Dkdv::BM - 1) / Dkdv::BM;
    if (ctas > INT32_MAX) return Status::Unsupported("too many key tiles for one launch");
    auto kernel = fna_backward_dkdv_kernel<Dkdv>;
    NATTN_RETURN_IF_ERROR(set_smem(kernel, Dkdv::kSmemDkdv, "fused backward dk/dv: setting shared memory size"));
    const dim3 grid(unsigned(ctas), unsigned(p.g.heads_kv), unsigned(p.g.batch));
    kernel<<<grid, Dkdv::kThreads, Dkdv::kSmemDkdv, stream>>>(p, tiling);
    NATTN_RETURN_IF_ERROR(check_launch("fused backward dk/dv"));
  }
  return Status::Ok();
}

template <class Element>
Status dispatch(const Problem& problem, const BackwardParams& p, cudaStream_t s) {
  return with_head_dim<128>(padded_head_dim(p.g), [&](auto hd) {
    return launch<BackwardConfig<Element, decltype(hd)::value>>(problem, p, s);
  });
}

// The larger of the two kernels' footprints (the same for both 16-bit types).
size_t smem_bytes(int padded_head_dim) {
  return with_head_dim<128>(padded_head_dim, [](auto hd) {
    using C = BackwardConfig<__half, decltype(hd)::value>;
    return C::Dq::kSmemDq > C::Dkdv::kSmemDkdv ? C::Dq::kSmemDq : C::Dkdv::kSmemDkdv;
  });
}

}  // namespace

Status can_backward(const BackwardParams& p, DType dtype) {
  NATTN_RETURN_IF_ERROR(common_support(p.g, dtype));
  const int hd = padded_head_dim(p.g);
  if (hd > 128)
    return Status::Unsupported("the fused backward takes head dims up to 128 (got " +
                               std::to_string(p.g.head_dim > p.g.head_dim_v ? p.g.head_dim : p.g.head_dim_v) + ")");
  NATTN_RETURN_IF_ERROR(smem_support("the fused backward", smem_bytes(hd)));
  const struct { const char* name; const void* ptr; const Strides& s; } rows[] = {
      {"q", p.q, p.sq}, {"k", p.k, p.sk}, {"v", p.v, p.sv}, {"dout", p.dout, p.sdo},
      {"dq", p.dq, p.sdq}, {"dk", p.dk, p.sdk}, {"dv", p.dv, p.sdv},
      {"additional_k", p.ka, p.ska}, {"additional_v", p.va, p.sva},
      {"d_additional_k", p.dka, p.sdka}, {"d_additional_v", p.dva, p.sdva}};
  for (const auto& r : rows) NATTN_RETURN_IF_ERROR(rows_aligned(r.name, r.ptr, r.s));
  return Status::Ok();
}

Status backward(const Problem& problem, const BackwardParams& p, DType dtype, void* stream) {
  NATTN_RETURN_IF_ERROR(generic::backward_delta(p, dtype, stream));
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (dtype == DType::kBFloat16) return dispatch<__nv_bfloat16>(problem, p, s);
  return dispatch<__half>(problem, p, s);
}

}  // namespace nattn::cuda::sm80
