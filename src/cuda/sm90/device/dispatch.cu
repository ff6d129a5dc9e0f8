// Layer: cuda/sm90 device. The launcher table (see dispatch.h); NATTN_SM90_HD<N> and
// NATTN_SM90_BWD_HD<N> are defined by CMake when instantiate/hd<N>.cu and bwd_hd<N>.cu are compiled in.
#include "cuda/sm90/device/dispatch.h"

namespace nattn::cuda::sm90 {

const Launcher* launcher(int id) {
  return table_launcher(id, [](Launcher* rows) {
#ifdef NATTN_SM90_HD32
    register_head_dim<32>(rows);
#endif
#ifdef NATTN_SM90_HD64
    register_head_dim<64>(rows);
#endif
#ifdef NATTN_SM90_HD128
    register_head_dim<128>(rows);
#endif
#ifdef NATTN_SM90_HD256
    register_head_dim<256>(rows);
#endif
#ifdef NATTN_SM90_BWD_HD32
    register_backward_head_dim<32>(rows);
#endif
#ifdef NATTN_SM90_BWD_HD64
    register_backward_head_dim<64>(rows);
#endif
#ifdef NATTN_SM90_BWD_HD128
    register_backward_head_dim<128>(rows);
#endif
#ifdef NATTN_SM90_BWD_HD256
    register_backward_head_dim<256>(rows);
#endif
    (void)rows;
  });
}

}  // namespace nattn::cuda::sm90
