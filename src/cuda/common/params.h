// Layer: cuda. Plain parameter structs shared by host launch code and kernels (no CUDA
// types, no torch). Every offset is 64-bit; strides are in elements.
#pragma once
#include <cstdint>

namespace nattn::cuda {

// A strided [B, X1..Xr, H, D] (or [B, Na, H, D]) tensor: base + b*batch + sum x_a*axis[a] + h*head + c*dim.
struct Strides {
  int64_t batch = 0;
  int64_t axis[3] = {0, 0, 0};
  int64_t head = 0;
  int64_t dim = 1;
};

struct Geometry {
  int rank = 1;
  int64_t extent[3] = {1, 1, 1};  // the query box (the whole grid unless placed)
  int64_t kernel[3] = {1, 1, 1};
  int64_t stride[3] = {1, 1, 1};
  int64_t dilation[3] = {1, 1, 1};
  bool causal[3] = {false, false, false};
  int64_t batch = 1, heads_q = 1, heads_kv = 1, head_dim = 1, head_dim_v = 1, num_additional = 0;
  int64_t tokens = 1;
  float scale = 1.f;
  // The scale unrounded (Problem::effective_scale): the generic kernels' float64 path multiplies
  // by it (float(scale) is off by up to 2^-24 relative, ~3e-8 in a float64 output); the
  // float paths round it to `scale`, the same value as before.
  double scale_exact = 1.0;
  // Placed boxes (SPEC.md "Placed boxes"): windows are evaluated on an axis of extent
  // global[a]; queries are the box at query_origin (extent[]), keys the box at key_origin
  // (key_extent[]). Unplaced: global = key_extent = extent, origins 0, placed false. Only
  // families that implement placement (KernelFamily::implements_placement) read these.
  bool placed = false;
  int64_t global[3] = {1, 1, 1};
  int64_t query_origin[3] = {0, 0, 0};
  int64_t key_origin[3] = {0, 0, 0};
  int64_t key_extent[3] = {1, 1, 1};
  int64_t key_tokens = 1;
};

struct ForwardParams {
  Geometry g;
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const void* ka = nullptr;
  const void* va = nullptr;
  void* out = nullptr;
  float* lse = nullptr;  // may be null
  Strides sq, sk, sv, ska, sva, so, slse;
};

// The strides of a contiguous [B, X1..Xr, Hq, cols] float workspace over the query box (Delta:
// cols 1, [B, X.., Hq]; the fast backward's dQ partial sums: cols = head_dim).
inline Strides contiguous_query_strides(const Geometry& g, int64_t cols) {
  Strides s;
  s.dim = 1;
  s.head = cols;
  int64_t inner = g.heads_q * cols;
  for (int a = g.rank - 1; a >= 0; --a) {
    s.axis[a] = inner;
    inner *= g.extent[a];
  }
  s.batch = inner;
  return s;
}

// Floats per query row in the backward's row workspace (BackwardParams::rows).
constexpr int kRowColumns = 4;

struct BackwardParams {
  Geometry g;
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const void* ka = nullptr;
  const void* va = nullptr;
  const void* out = nullptr;
  const void* dout = nullptr;
  const float* lse = nullptr;
  const float* dlse = nullptr;
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
  void* dka = nullptr;
  void* dva = nullptr;
  // The Delta pre-pass's row workspace (cuda/common/delta.h), the only place the backward
  // kernels read lse and Delta from: per query row four floats, [B, N, Hq, kRowColumns]
  // contiguous (srows: its strides as a [B, X1..Xr, Hq, kRowColumns] tensor): the row's lse in the
  // log2 domain (+inf for a row without keys, so P = 0 there), Delta, and two zeros (a TMA box
  // row is at least 16 bytes: the sm90 dK/dV kernel's producer loads a walked box's rows with its
  // Q and dO). The generic kernels take Delta from it and the exact lse from `lse`.
  float* rows = nullptr;
  // The fast mode's float32 dQ partial sums ([B, X1..Xr, Hq, D] contiguous, zeroed by the Delta
  // pre-pass before the kernels add into it, already times the scale; null in deterministic mode).
  float* dq_accum = nullptr;
  Strides sq, sk, sv, ska, sva, so, sdo, slse, sdlse, sdq, sdk, sdv, sdka, sdva, sdq_accum;
  Strides srows;  // set by the backend
};

// Box shapes of one fused-kernel launch, in group positions (one dilation group per axis).
// Every extent is a power of two so kernels split a box row into coordinates with shifts.
struct Tiling {
  int own_shift[3] = {0, 0, 0};      // log2 of each CTA's own box: queries (forward, dQ) or keys (dK/dV)
  int walk_shift[3] = {0, 0, 0};     // log2 of the boxes it walks over its union
  int64_t own_tiles[3] = {1, 1, 1};  // own boxes per axis per dilation group
  int64_t neighborhood_ctas = 1;     // own boxes over every dilation group
};

}  // namespace nattn::cuda
