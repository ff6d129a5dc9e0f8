// Layer: cuda/common. The merge of partial attentions (see merge.h): one warp per row
// [..., H], each lane a strided slice of Dv; the softmax weights of the partials are computed
// once per row, in registers. Memory-bound: every input element is read once.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "cuda/check.h"
#include "cuda/common/element.cuh"
#include "cuda/common/merge.h"

namespace nattn {
namespace {

constexpr int kMaxPartials = 16;  // per launch: the parameter block stays well under 4 KiB
constexpr int kWarpsPerBlock = 8;

struct Partial {
  const void* out;
  const float* lse;
  int64_t out_stride[kMaxDims];  // row dims, then Dv
  int64_t lse_stride[kMaxDims];  // row dims
};

struct MergeParams {
  int n;         // partials merged by this launch
  int row_dims;  // out.ndim - 1: the dims of a row [..., H]
  int64_t rows;  // product of the row dims
  int64_t dv;
  int64_t shape[kMaxDims];
  Partial in[kMaxPartials];
  void* out;
  float* lse;
  int64_t out_stride[kMaxDims];
  int64_t lse_stride[kMaxDims];
};
static_assert(sizeof(MergeParams) <= 4096, "kernel parameters are limited to 4 KiB");

template <class T>
__global__ void __launch_bounds__(kWarpsPerBlock * 32) merge_kernel(const MergeParams p) {
  using A = cuda::generic::Acc<T>;
  const int lane = int(threadIdx.x) % 32;
  const int64_t row = int64_t(blockIdx.x) * kWarpsPerBlock + int64_t(threadIdx.x) / 32;
  if (row >= p.rows) return;

  // Element offsets of the row in every tensor, from its index along each row dim.
  int64_t out_off = 0, lse_off = 0, in_off[kMaxPartials], in_lse_off[kMaxPartials];
#pragma unroll
  for (int i = 0; i < kMaxPartials; ++i) in_off[i] = in_lse_off[i] = 0;
  int64_t r = row;
  for (int d = p.row_dims - 1; d >= 0; --d) {
    const int64_t c = r % p.shape[d];
    r /= p.shape[d];
    out_off += c * p.out_stride[d];
    lse_off += c * p.lse_stride[d];
#pragma unroll
    for (int i = 0; i < kMaxPartials; ++i) {
      if (i >= p.n) break;
      in_off[i] += c * p.in[i].out_stride[d];
      in_lse_off[i] += c * p.in[i].lse_stride[d];
    }
  }

  // Weights w_i = exp(lse_i - m) / sum; as in reference_merge, a row whose largest lse is not
  // finite (every partial empty) gets out = 0 and lse = that value.
  A w[kMaxPartials];
  A m = -INFINITY;
#pragma unroll
  for (int i = 0; i < kMaxPartials; ++i) {
    if (i >= p.n) break;
    w[i] = A(p.in[i].lse[in_lse_off[i]]);
    m = m < w[i] ? w[i] : m;
  }
  const bool finite = isfinite(m);
  A total = m;
  if (finite) {
    A sum = 0;
#pragma unroll
    for (int i = 0; i < kMaxPartials; ++i) {
      if (i >= p.n) break;
      w[i] = exp(w[i] - m);
      sum += w[i];
    }
#pragma unroll
    for (int i = 0; i < kMaxPartials; ++i) {
      if (i >= p.n) break;
      w[i] /= sum;
    }
    total = m + log(sum);
  }

  const int64_t last = p.row_dims;  // the Dv dim
  T* out = static_cast<T*>(p.out) + out_off;
  for (int64_t d = lane; d < p.dv; d += 32) {
    A acc = 0;
    if (finite) {
#pragma unroll
      for (int i = 0; i < kMaxPartials; ++i) {
        if (i >= p.n) break;
        if (w[i] == A(0)) continue;  // an empty partial's out may hold anything
        const T* o = static_cast<const T*>(p.in[i].out) + in_off[i];
        acc += w[i] * cuda::generic::to_acc(o[d * p.in[i].out_stride[last]]);
      }
    }
    out[d * p.out_stride[last]] = cuda::generic::from_acc<T>(acc);
  }
  // In a later round out/lse are also partial 0: every lane has read them by now.
  __syncwarp();
  if (lane == 0) p.lse[lse_off] = float(total);
}

void copy_strides(const TensorView& t, int64_t* s) {
  for (int d = 0; d < t.ndim; ++d) s[d] = t.stride[d];
}

template <class T>
Status launch_rounds(const std::vector<TensorView>& outs, const std::vector<TensorView>& lses, const TensorView& out,
                     const TensorView& lse, cudaStream_t stream) {
  MergeParams p{};
  p.row_dims = out.ndim - 1;
  p.rows = 1;
  for (int d = 0; d < p.row_dims; ++d) {
    p.shape[d] = out.shape[d];
    p.rows *= out.shape[d];
  }
  p.dv = out.shape[out.ndim - 1];
  p.out = out.data;
  p.lse = static_cast<float*>(lse.data);
  copy_strides(out, p.out_stride);
  copy_strides(lse, p.lse_stride);
  if (p.rows == 0) return Status::Ok();
  const int64_t blocks = (p.rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
  if (blocks > INT32_MAX)
    return Status::Unsupported("merge_attentions: " + std::to_string(p.rows) + " rows are too many for one launch");

  // Round 1 merges the first kMaxPartials partials into out/lse; each later round merges
  // out/lse (as partial 0) with up to kMaxPartials - 1 more.
  size_t next = 0;
  bool first = true;
  while (next < outs.size()) {
    int n = 0;
    if (!first) {
      p.in[0] = {out.data, static_cast<const float*>(lse.data), {}, {}};
      copy_strides(out, p.in[0].out_stride);
      copy_strides(lse, p.in[0].lse_stride);
      n = 1;
    }
    for (; n < kMaxPartials && next < outs.size(); ++n, ++next) {
      p.in[n] = {outs[next].data, static_cast<const float*>(lses[next].data), {}, {}};
      copy_strides(outs[next], p.in[n].out_stride);
      copy_strides(lses[next], p.in[n].lse_stride);
    }
    p.n = n;
    merge_kernel<T><<<unsigned(blocks), kWarpsPerBlock * 32, 0, stream>>>(p);
    NATTN_RETURN_IF_ERROR(cuda::check_launch("merge_attentions"));
    first = false;
  }
  return Status::Ok();
}

}  // namespace

Status cuda_merge(const std::vector<TensorView>& outs, const std::vector<TensorView>& lses, const TensorView& out,
                  const TensorView& lse, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (out.dtype) {
    case DType::kFloat32: return launch_rounds<float>(outs, lses, out, lse, s);
    case DType::kFloat64: return launch_rounds<double>(outs, lses, out, lse, s);
    case DType::kFloat16: return launch_rounds<__half>(outs, lses, out, lse, s);
    case DType::kBFloat16: return launch_rounds<__nv_bfloat16>(outs, lses, out, lse, s);
  }
  return Status::Invalid("out.dtype is invalid");
}

}  // namespace nattn
