// Layer: cuda/sm80 device. The launcher table (see dispatch.h). Each NATTN_SM80_HD<N> is
// defined by CMake when instantiate/hd<N>.cu is compiled in.
#include "cuda/sm80/device/dispatch.h"

namespace nattn::cuda::sm80 {

const Launcher* launcher(int id) {
  return table_launcher(id, [](Launcher* rows) {
#ifdef NATTN_SM80_HD32
    register_head_dim<32>(rows);
#endif
#ifdef NATTN_SM80_HD64
    register_head_dim<64>(rows);
#endif
#ifdef NATTN_SM80_HD128
    register_head_dim<128>(rows);
#endif
#ifdef NATTN_SM80_HD256
    register_head_dim<256>(rows);
#endif
    (void)rows;
  });
}

}  // namespace nattn::cuda::sm80
