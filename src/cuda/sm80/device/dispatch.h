// Layer: cuda/sm80 device. Dispatch: one launcher per configuration row id, filled by the
// instantiation files (cuda/sm80/instantiate/hd<N>.cu, one per head dim; CMake's
// NATTN_HEAD_DIMS picks which are compiled). A row without a launcher is not built.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>

#include "cuda/family.h"

namespace nattn::cuda::sm80 {

// The launcher of row `id`, or null when the row is not an sm80 row or not built.
const Launcher* launcher(int id);

// Defined (explicitly instantiated) by instantiate/hd<HD>.cu: fills table[id] for the sm80 rows
// of head dim HD.
template <int HD>
void register_head_dim(Launcher* table);

}  // namespace nattn::cuda::sm80
