// Layer: cuda/sm90 device. Dispatch: one launcher per sm90 configuration row id, filled by the
// instantiation files (cuda/sm90/instantiate/hd<N>.cu). A row without a launcher is not built.
#pragma once
#include "cuda/family.h"

namespace nattn::cuda::sm90 {

// The launcher of row `id`, or null when the row is not an sm90 row or not built.
const Launcher* launcher(int id);

// Defined (explicitly instantiated) by instantiate/hd<HD>.cu (forward rows) and
// instantiate/bwd_hd<HD>.cu (backward rows).
template <int HD>
void register_head_dim(Launcher* table);
template <int HD>
void register_backward_head_dim(Launcher* table);

}  // namespace nattn::cuda::sm90
