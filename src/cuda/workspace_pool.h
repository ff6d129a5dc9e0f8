// Layer: cuda. The library's own stream-ordered memory pools (one per device) for the
// workspaces of calls that pass no WorkspaceAllocator. The device's default pool gives its
// free memory back to the system at every stream, event or device synchronisation (its release
// threshold is 0), so a caller that syncs between calls paid for mapping the whole workspace
// again on each one: the fast backward's float32 dQ workspace is 4 bytes per query and column
// (268 MB for a 32k-token, 16-head, d128 call), and nattn-bench, which syncs around every timed
// call, measured the fast backward 0.6-0.9 ms slower on 1d-32k than the same kernels under
// torch's caching allocator (2026-12-06, fourteenth session). These pools keep what they
// reserved until release_cached_workspace_pools().
#pragma once
#include <cuda_runtime.h>

#include "nattn/status.h"

namespace nattn::cuda {

// The pool of `device` (created on first use, release threshold: keep everything).
Status workspace_pool(int device, cudaMemPool_t* pool);

// Trims every pool created so far to nothing (no allocation from them may be in flight).
Status release_cached_workspace_pools();

}  // namespace nattn::cuda
