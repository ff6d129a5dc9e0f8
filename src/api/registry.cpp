// Layer: api. The backends compiled into this library, best first: the only place that names
// concrete backends (core plans and chooses through the Backend interface).
#include "core/backend.h"
#include "cpu/reference.h"
#ifdef NATTN_WITH_CUDA
#include "cuda/backend.h"
#endif

namespace nattn {

const std::vector<const Backend*>& registry() {
  static const std::vector<const Backend*> list = {
#ifdef NATTN_WITH_CUDA
      &cuda_backend(),
#endif
      &reference_backend(),
  };
  return list;
}

}  // namespace nattn
