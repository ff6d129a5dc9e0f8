// Layer: cuda/sm90 instantiation. The sm90 backward kernels of head dim 256: every row of
// cuda/common/configs.h with family sm90, a backward role and head_dim 256 (the dK/dV kernel
// splits its output columns over two CTAs per key box: configs.h dkdv_column_split).
#include "cuda/sm90/device/launch_row.cuh"

namespace nattn::cuda::sm90 {
template void register_backward_head_dim<256>(Launcher* table);
}
