// Layer: cuda/sm90 device. Dispatch: one launcher per sm90 configuration row id, filled by the
// instantiation files (cuda/sm90/instantiate/hd<N>.cu). A row without a launcher is not built.
#pragma once
#include "cuda/family.h"

namespace nattn::cuda::sm90 {

// The launcher of row `id`, or null when the row is not an sm90 row or not built.
const Launcher* launcher(int id);

// Backward rows with a persistent variant of their kernel (chosen for short walks,
// device/family.cu persistent_items; launched by the row's launcher when BackwardArgs::items > 0): the
// deterministic dQ and dK/dV rows and the fast dK/dV rows (not their ordered variant) of head
// dims 64 and 128 with one CTA per SM. Head dim 256 and the two-CTA rows have none.
constexpr bool has_persistent_backward(const KernelConfig& c) {
  return c.family == Family::kSm90 &&
         (c.role == Role::kBackwardDq || c.role == Role::kBackwardDkdv || c.role == Role::kBackwardDkdvDq) &&
         c.ctas_per_sm == 1 && (c.head_dim == 64 || c.head_dim == 128);
}

// Defined (explicitly instantiated) by instantiate/hd<HD>.cu (forward rows) and
// instantiate/bwd_hd<HD>.cu (backward rows).
template <int HD>
void register_head_dim(Launcher* table);
template <int HD>
void register_backward_head_dim(Launcher* table);

}  // namespace nattn::cuda::sm90
