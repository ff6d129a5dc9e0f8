// Layer: cuda/sm90 device. Tensor maps of the sm90 kernels over the caller's tensors: which
// MapMode (kernel/traits.cuh) a tensor can be read in, and the maps of a launch, encoded by
// cuTensorMapEncodeTiled from the driver or found in a cache of encoded maps (a repeated call
// with the same tensors encodes nothing).
#pragma once
#include <cuda.h>

#include <cstdint>

#include "cuda/common/params.h"
#include "nattn/status.h"
#include "nattn/tensor.h"

namespace nattn::cuda::sm90 {

// The layouts a [B, X.., H, C] tensor view can have for TMA: unit-stride head dim, 16-byte
// multiples elsewhere. Apart maps take any head stride but need a spare TMA dimension (no third
// spatial axis, or batch 1); otherwise heads are packed with the head dim (inner) or folded with
// the batch. -1: none.
int map_mode(const TensorView& t);

// A grid (or the additional keys as a 1-D grid) as a tensor map can see it.
struct MapGrid {
  int64_t extent[3];
  int64_t dilation[3];
  int shift[3];  // log2 of the box per axis, in group positions
};

// One tensor map to encode: the tensor, its strides, the boxes it is read in, heads and C.
struct MapSource {
  const void* base;
  const Strides& s;
  const MapGrid& m;
  int64_t heads, cols;
  const char* name;
};

// Encodes maps[0..n) into tma/mode/cols (the caller traces a launch's maps as one encode_maps
// phase) (a map of an empty tensor, base null, is skipped), in
// boxes of min(padded, 64) columns; float16/bfloat16 operands or float32 (the fast backward's
// dQ workspace, the backward's row workspace of 4 floats a row). A map encoded before from the
// same inputs comes from the cache.
Status encode_maps(const MapSource* maps, int n, DType dtype, int64_t batch, int padded, CUtensorMap* tma, int* mode,
                   int* cols);

}  // namespace nattn::cuda::sm90
