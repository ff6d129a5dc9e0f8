// Layer: cuda/sm90 device. The launcher table (see dispatch.h); NATTN_SM90_HD<N> is defined by
// CMake when instantiate/hd<N>.cu is compiled in.
#include "cuda/sm90/device/dispatch.h"

namespace nattn::cuda::sm90 {
namespace {

struct Table {
  Launcher rows[kNumConfigs] = {};
  Table() {
#ifdef NATTN_SM90_HD64
    register_head_dim<64>(rows);
#endif
#ifdef NATTN_SM90_HD128
    register_head_dim<128>(rows);
#endif
  }
};

}  // namespace

const Launcher* launcher(int id) {
  static const Table table;
  if (id < 0 || id >= kNumConfigs || table.rows[id].launch == nullptr) return nullptr;
  return &table.rows[id];
}

}  // namespace nattn::cuda::sm90
