// Layer: cuda. The CUDA backend's registry entry.
#pragma once
#include "core/backend.h"

namespace nattn {
const Backend& cuda_backend();
}
