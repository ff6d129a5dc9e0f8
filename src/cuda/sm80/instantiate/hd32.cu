// Layer: cuda/sm80 instantiation. The sm80 kernels of head dim 32: every row of
// cuda/common/configs.h with family sm80 and head_dim 32 (forward, backward, fp16, bf16).
#include "cuda/sm80/device/launch_row.cuh"

namespace nattn::cuda::sm80 {
template void register_head_dim<32>(Launcher* table);
}
