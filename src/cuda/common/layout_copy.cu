// Layer: cuda/common. See layout_copy.h. One thread per element, 64-bit offsets; the index is
// decoded from the dense side so consecutive threads write (or read) consecutive addresses.
#include "cuda/check.h"
#include "cuda/common/layout_copy.h"

namespace nattn::cuda {
namespace {

struct CopyDims {
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t strided[kMaxDims] = {};  // the view's strides
  int64_t count = 0;
};

template <class Word, bool kToDense>
__global__ void copy_kernel(const Word* src, Word* dst, CopyDims d) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < d.count; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t rest = i, off = 0;
    for (int k = d.ndim - 1; k >= 0; --k) {
      off += (rest % d.shape[k]) * d.strided[k];
      rest /= d.shape[k];
    }
    if (kToDense)
      dst[i] = src[off];
    else
      dst[off] = src[i];
  }
}

template <bool kToDense>
Status copy(const void* src, void* dst, const TensorView& view, cudaStream_t s) {
  CopyDims d;
  d.ndim = view.ndim;
  d.count = view.numel();
  for (int k = 0; k < view.ndim; ++k) {
    d.shape[k] = view.shape[k];
    d.strided[k] = view.stride[k];
  }
  if (d.count == 0) return Status::Ok();
  constexpr int kThreads = 256;
  const int64_t blocks64 = (d.count + kThreads - 1) / kThreads;
  const unsigned blocks = unsigned(blocks64 < 65536 * 16 ? blocks64 : 65536 * 16);
  switch (dtype_size(view.dtype)) {
    case 2:
      copy_kernel<uint16_t, kToDense>
          <<<blocks, kThreads, 0, s>>>(static_cast<const uint16_t*>(src), static_cast<uint16_t*>(dst), d);
      break;
    case 4:
      copy_kernel<uint32_t, kToDense>
          <<<blocks, kThreads, 0, s>>>(static_cast<const uint32_t*>(src), static_cast<uint32_t*>(dst), d);
      break;
    default:
      copy_kernel<uint64_t, kToDense>
          <<<blocks, kThreads, 0, s>>>(static_cast<const uint64_t*>(src), static_cast<uint64_t*>(dst), d);
      break;
  }
  return check_launch(kToDense ? "layout copy to a dense buffer" : "layout copy from a dense buffer");
}

}  // namespace

void dense_strides(const TensorView& v, int64_t (&strides)[kMaxDims]) {
  int64_t s = 1;
  for (int k = v.ndim - 1; k >= 0; --k) {
    strides[k] = s;
    s *= v.shape[k];
  }
}

Status copy_to_dense(const TensorView& src, void* dense, cudaStream_t s) { return copy<true>(src.data, dense, src, s); }

Status copy_from_dense(const void* dense, const TensorView& dst, cudaStream_t s) {
  return copy<false>(dense, dst.data, dst, s);
}

}  // namespace nattn::cuda
