// Layer: cuda/sm90 device. A configuration row turned into its kernel (see the sm80 twin):
// traits from the row's fields, the launch with its tensor maps, and the shared-memory set-up.
#pragma once
#include <type_traits>

#include "cuda/check.h"
#include "cuda/sm90/device/dispatch.h"
#include "cuda/sm90/kernel/fna_backward_dkdv.cuh"
#include "cuda/sm90/kernel/fna_backward_dq.cuh"
#include "cuda/sm90/kernel/fna_forward.cuh"

namespace nattn::cuda::sm90 {

// The dynamic shared memory an H100/H200 block may opt into (227 KB).
inline constexpr size_t kSm90SmemOptin = 232448;

// Lets kernel take `bytes` of dynamic shared memory (past the 48 KB default).
template <class Kernel>
Status allow_smem(Kernel* kernel, size_t bytes) {
  return check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)),
               "sm90: setting a kernel's shared memory size");
}

template <Elem E>
using ElementOf = std::conditional_t<E == Elem::kBFloat16, cutlass::bfloat16_t, cutlass::half_t>;

template <int kId>
struct Row {
  static constexpr KernelConfig c = kKernelConfigs[kId];
  static_assert(c.family == Family::kSm90 && c.role == Role::kForward && c.block_q == 128 && c.warps == 12,
                "sm90 forward rows: 128 query rows in two consumer warpgroups and a producer");
  using Traits = ForwardTraits<ElementOf<c.elem>, c.head_dim, c.block_kv, c.stages, c.pingpong, c.poly_exp>;
  static constexpr size_t smem() { return sizeof(typename Traits::SharedStorage); }
  static constexpr int kThreads = Traits::kThreads;

  static Status prepare() { return allow_smem(fna_forward_kernel<Traits>, smem()); }
  static constexpr size_t persistent_smem() { return 0; }  // forward rows: persistence is in the kernel
  static Status launch(const KernelLaunch& k, const void* args, cudaStream_t stream) {
    const dim3 grid(k.grid[0], k.grid[1], k.grid[2]);
    fna_forward_kernel<Traits><<<grid, kThreads, smem(), stream>>>(*static_cast<const ForwardArgs*>(args));
    return check_launch("sm90 forward");
  }
};

template <int kId>
struct DkdvRow {
  static constexpr KernelConfig c = kKernelConfigs[kId];
  static_assert(c.family == Family::kSm90 && (c.role == Role::kBackwardDkdv || c.role == Role::kBackwardDkdvDq) &&
                    c.block_kv == 128 && c.warps == 12,
                "sm90 dK/dV rows: 128 own keys in two consumer warpgroups and a producer");
  using Traits =
      DkdvTraits<ElementOf<c.elem>, c.head_dim, c.block_q, c.stages, c.role == Role::kBackwardDkdvDq, c.ctas_per_sm>;
  static constexpr size_t smem() { return sizeof(typename Traits::SharedStorage); }
  static_assert(smem() <= kSm90SmemOptin / c.ctas_per_sm - (c.ctas_per_sm - 1) * 1024,
                "an sm90 dK/dV row's shared memory exceeds the H100's opt-in limit (per resident CTA)");
  static constexpr int kThreads = Traits::kThreads;
  // The persistent variant (has_persistent_backward rows; BackwardArgs::items > 0).
  static constexpr bool kPersistentBuilt = has_persistent_backward(c);
  using PersistentTraits = std::conditional_t<
      kPersistentBuilt,
      DkdvTraits<ElementOf<c.elem>, c.head_dim, c.block_q, c.stages, c.role == Role::kBackwardDkdvDq, 1, true>,
      Traits>;  // (unused where not built)
  static constexpr size_t persistent_smem() {
    return kPersistentBuilt ? sizeof(typename PersistentTraits::SharedStorage) : 0;
  }
  static_assert(persistent_smem() <= kSm90SmemOptin,
                "an sm90 dK/dV row's persistent variant exceeds the H100's shared-memory opt-in limit");

  // The fast rows' ordered variant (the deterministic mode's fast kernel; BackwardArgs::dq_order
  // set): the same row with its dQ adds in a fixed order.
  static constexpr bool kOrderedBuilt = c.role == Role::kBackwardDkdvDq;
  using OrderedTraits = std::conditional_t<
      kOrderedBuilt, DkdvTraits<ElementOf<c.elem>, c.head_dim, c.block_q, c.stages, true, c.ctas_per_sm, false, true>,
      Traits>;  // (unused where not built)
  static_assert(sizeof(typename OrderedTraits::SharedStorage) == smem(),
                "the ordered variant shares the fast kernel's shared memory layout (the plan's smem)");

  static Status prepare() {
    if constexpr (kPersistentBuilt)
      NATTN_RETURN_IF_ERROR(allow_smem(fna_backward_dkdv_persistent_kernel<PersistentTraits>, persistent_smem()));
    if constexpr (kOrderedBuilt) NATTN_RETURN_IF_ERROR(allow_smem(fna_backward_dkdv_kernel<OrderedTraits>, smem()));
    return allow_smem(fna_backward_dkdv_kernel<Traits>, smem());
  }
  static Status launch(const KernelLaunch& k, const void* args, cudaStream_t stream) {
    const dim3 grid(k.grid[0], k.grid[1], k.grid[2]);
    const BackwardArgs& a = *static_cast<const BackwardArgs*>(args);
    if constexpr (kPersistentBuilt)
      if (a.items > 0) {
        fna_backward_dkdv_persistent_kernel<PersistentTraits><<<grid, kThreads, persistent_smem(), stream>>>(a);
        return check_launch(Traits::kFastDq ? "sm90 backward dK/dV with dQ (persistent)"
                                            : "sm90 backward dK/dV (persistent)");
      }
    if constexpr (kOrderedBuilt)
      if (a.dq_order != nullptr) {
        fna_backward_dkdv_kernel<OrderedTraits><<<grid, kThreads, smem(), stream>>>(a);
        return check_launch("sm90 backward dK/dV with dQ (ordered adds)");
      }
    fna_backward_dkdv_kernel<Traits><<<grid, kThreads, smem(), stream>>>(a);
    return check_launch("sm90 backward dK/dV");
  }
};

template <int kId>
struct DqRow {
  static constexpr KernelConfig c = kKernelConfigs[kId];
  static_assert(c.family == Family::kSm90 && c.role == Role::kBackwardDq && c.block_q == 128 && c.warps == 12,
                "sm90 dQ rows: 128 own queries in two consumer warpgroups and a producer");
  using Traits = DqTraits<ElementOf<c.elem>, c.head_dim, c.block_kv, c.stages, c.ctas_per_sm>;
  static constexpr size_t smem() { return sizeof(typename Traits::SharedStorage); }
  static_assert(smem() <= kSm90SmemOptin / c.ctas_per_sm - (c.ctas_per_sm - 1) * 1024,
                "an sm90 dQ row's shared memory exceeds the H100's opt-in limit (per resident CTA)");
  static constexpr int kThreads = Traits::kThreads;
  // The persistent variant (has_persistent_backward rows; BackwardArgs::items > 0).
  static constexpr bool kPersistentBuilt = has_persistent_backward(c);
  using PersistentTraits =
      std::conditional_t<kPersistentBuilt, DqTraits<ElementOf<c.elem>, c.head_dim, c.block_kv, c.stages, 1, true>,
                         Traits>;  // (unused where not built)
  static constexpr size_t persistent_smem() {
    return kPersistentBuilt ? sizeof(typename PersistentTraits::SharedStorage) : 0;
  }
  static_assert(persistent_smem() <= kSm90SmemOptin,
                "an sm90 dQ row's persistent variant exceeds the H100's shared-memory opt-in limit");

  static Status prepare() {
    if constexpr (kPersistentBuilt)
      NATTN_RETURN_IF_ERROR(allow_smem(fna_backward_dq_persistent_kernel<PersistentTraits>, persistent_smem()));
    return allow_smem(fna_backward_dq_kernel<Traits>, smem());
  }
  static Status launch(const KernelLaunch& k, const void* args, cudaStream_t stream) {
    const dim3 grid(k.grid[0], k.grid[1], k.grid[2]);
    const BackwardArgs& a = *static_cast<const BackwardArgs*>(args);
    if constexpr (kPersistentBuilt)
      if (a.items > 0) {
        fna_backward_dq_persistent_kernel<PersistentTraits><<<grid, kThreads, persistent_smem(), stream>>>(a);
        return check_launch("sm90 backward dQ (persistent)");
      }
    fna_backward_dq_kernel<Traits><<<grid, kThreads, smem(), stream>>>(a);
    return check_launch("sm90 backward dQ");
  }
};

// The rows of one role and head dim (the forward and backward kernels of a head dim are
// compiled in separate files, so they build in parallel).
template <Role kRole, int HD, template <int> class R, int... kIds>
void register_role_rows(Launcher* table, std::integer_sequence<int, kIds...>) {
  auto one = [&](auto id) {
    constexpr int kId = decltype(id)::value;
    constexpr KernelConfig c = kKernelConfigs[kId];
    if constexpr (c.family == Family::kSm90 && c.role == kRole && c.head_dim == HD)
      table[kId] =
          Launcher{&R<kId>::prepare, &R<kId>::launch, R<kId>::smem(), R<kId>::kThreads, R<kId>::persistent_smem()};
  };
  (one(std::integral_constant<int, kIds>{}), ...);
}

template <int HD>
void register_head_dim(Launcher* table) {
  register_role_rows<Role::kForward, HD, Row>(table, std::make_integer_sequence<int, kNumConfigs>{});
}

template <int HD>
void register_backward_head_dim(Launcher* table) {
  register_role_rows<Role::kBackwardDq, HD, DqRow>(table, std::make_integer_sequence<int, kNumConfigs>{});
  register_role_rows<Role::kBackwardDkdv, HD, DkdvRow>(table, std::make_integer_sequence<int, kNumConfigs>{});
  register_role_rows<Role::kBackwardDkdvDq, HD, DkdvRow>(table, std::make_integer_sequence<int, kNumConfigs>{});
}

}  // namespace nattn::cuda::sm90
