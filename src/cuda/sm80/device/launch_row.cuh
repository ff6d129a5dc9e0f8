// Layer: cuda/sm80 device. A configuration row turned into its kernel: traits from the row's
// fields, the launch and the shared-memory set-up. Included only by the instantiation files.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "cuda/check.h"
#include "cuda/sm80/device/dispatch.h"
#include "cuda/sm80/kernel/fna_backward_dkdv.cuh"
#include "cuda/sm80/kernel/fna_backward_dq.cuh"
#include "cuda/sm80/kernel/fna_forward.cuh"

namespace nattn::cuda::sm80 {

template <Elem E>
using ElementOf = std::conditional_t<E == Elem::kBFloat16, __nv_bfloat16, __half>;

template <int kId>
struct Row {
  static constexpr KernelConfig c = kKernelConfigs[kId];
  static_assert(c.family == Family::kSm80 && c.stages == 2, "sm80 kernels double-buffer their walked tiles");
  using Element = ElementOf<c.elem>;
  // Forward and dQ own query boxes (block_q rows) and walk key tiles; dK/dV own key boxes.
  static constexpr int kOwn = c.role == Role::kBackwardDkdv ? c.block_kv : c.block_q;
  static constexpr int kWalk = c.role == Role::kBackwardDkdv ? c.block_q : c.block_kv;
  using Forward = ForwardTraits<Element, c.head_dim, kOwn, kWalk, c.warps>;
  using Backward = BackwardTraits<Element, c.head_dim, kOwn, kWalk, c.warps>;

  static constexpr auto kernel() {
    if constexpr (c.role == Role::kForward)
      return &fna_forward_kernel<Forward>;
    else if constexpr (c.role == Role::kBackwardDq)
      return &fna_backward_dq_kernel<Backward>;
    else
      return &fna_backward_dkdv_kernel<Backward>;
  }
  static constexpr size_t smem() {
    if constexpr (c.role == Role::kForward)
      return sizeof(typename Forward::SharedStorage);
    else if constexpr (c.role == Role::kBackwardDq)
      return sizeof(typename Backward::DqStorage);
    else
      return sizeof(typename Backward::DkdvStorage);
  }
  static constexpr int kThreads = c.warps * 32;
  // Every role, dtype and head dim has a row that runs on sm86/sm89 (configs.h): the last one.
  static_assert(next_sibling(kId) >= 0 || smem() <= size_t(kConsumerSmemOptin),
                "the last sm80 row of a role, dtype and head dim must fit 99 KB of shared memory");

  static Status prepare() {
    return check(cudaFuncSetAttribute(kernel(), cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem())),
                 "sm80: setting a kernel's shared memory size");
  }
  static Status launch(const KernelLaunch& k, const void* params, cudaStream_t stream) {
    const dim3 grid(k.grid[0], k.grid[1], k.grid[2]);
    if constexpr (c.role == Role::kForward)
      kernel()<<<grid, kThreads, smem(), stream>>>(*static_cast<const ForwardParams*>(params), k.tiling);
    else
      kernel()<<<grid, kThreads, smem(), stream>>>(*static_cast<const BackwardParams*>(params), k.tiling);
    return check_launch(role_name(c.role));
  }
};

template <int HD>
void register_head_dim(Launcher* table) {
  register_rows<Family::kSm80, HD, Row>(table);
}

}  // namespace nattn::cuda::sm80
