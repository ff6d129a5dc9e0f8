// Layer: cuda/sm80 collective. The walk mainloop shared by the fused kernels: walked tiles are
// double-buffered with cp.async, one barrier per tile. Steps rotate through TileWalk::ring:
// slot k is computed from buffer buf while ring_next(k) loads into buf ^ 1, and thread 0
// publishes the step after next once the barrier that starts step k has passed (nobody reads
// that slot any more).
#pragma once
#include "cuda/common/tile_walk.h"
#include "cuda/sm80/collective/smem_tile.cuh"

namespace nattn::cuda::sm80 {

// All threads, after TileWalk::start_ring and a barrier: load(step, buf) issues the cp.async
// copies of a step into buffer buf; compute(step, buf) consumes it.
template <class Load, class Compute>
__device__ __forceinline__ void run_walk(TileWalk& w, Load&& load, Compute&& compute) {
  if (w.ring[0].valid) load(w.ring[0], 0);
  cp_async_commit();
  for (int slot = 0, buf = 0; w.ring[slot].valid; slot = ring_next(slot), buf ^= 1) {
    cp_async_wait<0>();
    __syncthreads();  // this step's tile landed in `buf`; everyone is done with the other buffer
    const int slot1 = ring_next(slot), slot2 = ring_next(slot1);
    if (w.ring[slot1].valid) load(w.ring[slot1], buf ^ 1);
    cp_async_commit();
    if (threadIdx.x == 0) w.ring[slot2] = w.advance();
    compute(w.ring[slot], buf);
  }
}

}  // namespace nattn::cuda::sm80
