// Layer: cuda. CUDA error checks that become Status values (never print-and-continue).
#pragma once
#include <cuda_runtime.h>

#include <string>

#include "nattn/status.h"

namespace nattn::cuda {

inline Status check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return Status::Ok();
  return Status::Runtime(std::string(what) + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

// After a launch: configuration errors are reported now; asynchronous faults surface at the
// caller's next synchronization, as with any CUDA library.
inline Status check_launch(const char* kernel) { return check(cudaGetLastError(), kernel); }

}  // namespace nattn::cuda

#define NATTN_CUDA_TRY(expr, what) NATTN_RETURN_IF_ERROR(::nattn::cuda::check((expr), (what)))
