// Layer: cuda/sm90 instantiation. The sm90 kernels of head dim 32: every row of
// cuda/common/configs.h with family sm90 and head_dim 32.
#include "cuda/sm90/device/launch_row.cuh"

namespace nattn::cuda::sm90 {
template void register_head_dim<32>(Launcher* table);
}
