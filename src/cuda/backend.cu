// Layer: cuda. The CUDA backend: plans each call once (cuda/planner.h: family, configuration,
// copies, workspace), then per call only looks the plan up, binds the tensors to kernel
// parameters, runs the layout copies and the family's launches.
#include <array>
#include <string>

#include "core/heads_axis.h"
#include "core/host_trace.h"
#include "cuda/backend.h"
#include "cuda/check.h"
#include "cuda/common/delta.h"
#include "cuda/common/dq_convert.h"
#include "cuda/common/layout_copy.h"
#include "cuda/common/merge.h"
#include "cuda/common/params.h"
#include "cuda/planner.h"
#include "cuda/workspace_pool.h"

namespace nattn {
namespace {

using cuda::CudaPlan;
using cuda::Slot;

// Restores the caller's current device on scope exit.
class DeviceGuard {
 public:
  explicit DeviceGuard(int index) {
    cudaGetDevice(&previous_);
    if (previous_ != index) cudaSetDevice(index);
  }
  ~DeviceGuard() {
    int now = previous_;
    cudaGetDevice(&now);
    if (now != previous_) cudaSetDevice(previous_);
  }

 private:
  int previous_ = 0;
};

// Device scratch for one call, from the caller's allocator or, stream-ordered, from the
// library's pool of the call's device (cuda/workspace_pool.h says why not the default pool).
class Workspace {
 public:
  Workspace(const WorkspaceAllocator& a, cudaStream_t s, int device) : alloc_(a), stream_(s), device_(device) {}
  Status acquire(size_t bytes) {
    if (bytes == 0) return Status::Ok();
    HostPhaseTimer phase(HostPhase::kWorkspace);
    if (alloc_.allocate != nullptr) {
      ptr_ = alloc_.allocate(bytes, alloc_.ctx);
      if (ptr_ == nullptr)
        return Status::Runtime("workspace allocator returned null for " + std::to_string(bytes) + " bytes");
      return Status::Ok();
    }
    cudaMemPool_t pool = nullptr;
    NATTN_RETURN_IF_ERROR(cuda::workspace_pool(device_, &pool));
    return cuda::check(cudaMallocFromPoolAsync(&ptr_, bytes, pool, stream_), "allocating the workspace");
  }
  ~Workspace() {
    if (ptr_ == nullptr) return;
    HostPhaseTimer phase(HostPhase::kWorkspaceRelease);
    if (alloc_.release != nullptr)
      alloc_.release(ptr_, alloc_.ctx);
    else
      cudaFreeAsync(ptr_, stream_);
  }
  char* at(size_t offset) const { return static_cast<char*>(ptr_) + offset; }

 private:
  WorkspaceAllocator alloc_;
  cudaStream_t stream_;
  int device_;
  void* ptr_ = nullptr;
};

cuda::Strides strides_of(const TensorView& t, int rank) {
  cuda::Strides s;
  if (!t.defined()) return s;
  s.batch = t.stride[0];
  for (int a = 0; a < rank; ++a) s.axis[a] = t.stride[1 + a];
  s.head = t.stride[rank + 1];
  s.dim = t.ndim > rank + 2 ? t.stride[rank + 2] : 1;
  return s;
}

// Additional keys/values [B, Na, H, D] have the layout of a rank-1 grid: Na is axis 0.
cuda::Strides additional_strides(const TensorView& t) { return strides_of(t, 1); }

// The call's tensors with copied ones rebound to their dense buffers; inputs are copied in.
template <size_t N>
Status bind_copies(const CudaPlan& plan, const std::vector<Slot>& slots, const Workspace& ws, cudaStream_t s,
                   std::array<TensorView, N>* views) {
  for (const CudaPlan::Copy& c : plan.copies) {
    const TensorView& original = *slots[size_t(c.slot)].view;
    TensorView& dense = (*views)[size_t(c.slot)];
    dense.data = ws.at(c.offset);
    cuda::dense_strides(original, dense.stride);
    if (!slots[size_t(c.slot)].output) NATTN_RETURN_IF_ERROR(cuda::copy_to_dense(original, dense.data, s));
  }
  return Status::Ok();
}

Status copy_outputs(const CudaPlan& plan, const std::vector<Slot>& slots, const Workspace& ws, cudaStream_t s) {
  for (const CudaPlan::Copy& c : plan.copies)
    if (slots[size_t(c.slot)].output)
      NATTN_RETURN_IF_ERROR(cuda::copy_from_dense(ws.at(c.offset), *slots[size_t(c.slot)].view, s));
  return Status::Ok();
}

std::vector<Slot> forward_slots(const ForwardTensors& t) {
  return {{"q", &t.q, false, true},
          {"k", &t.k, false, true},
          {"v", &t.v, false, true},
          {"additional_k", &t.additional_k, false, true},
          {"additional_v", &t.additional_v, false, true},
          {"out", &t.out, true, true},
          {"lse", &t.lse, true, false}};
}

std::vector<Slot> backward_slots(const BackwardTensors& t) {
  return {{"q", &t.q, false, true},
          {"k", &t.k, false, true},
          {"v", &t.v, false, true},
          {"additional_k", &t.additional_k, false, true},
          {"additional_v", &t.additional_v, false, true},
          {"out", &t.out, false, false},
          {"lse", &t.lse, false, false},
          {"dout", &t.dout, false, true},
          {"dlse", &t.dlse, false, false},
          {"dq", &t.dq, true, true},
          {"dk", &t.dk, true, true},
          {"dv", &t.dv, true, true},
          {"d_additional_k", &t.d_additional_k, true, true},
          {"d_additional_v", &t.d_additional_v, true, true}};
}

// A call's plan (cached); `slots` point into *t. Where the plan says the heads run as a grid
// axis, *p and *t (so the views the slots point to) become the rewritten call and *plan its plan.
template <class Tensors>
Status lookup_plan(Problem* p, Tensors* t, DType dtype, bool backward, const Options& o, const std::vector<Slot>& slots,
                   std::shared_ptr<const CudaPlan>* plan) {
  HostPhaseTimer phase(HostPhase::kPlanLookup);
  bool cached = false;
  NATTN_RETURN_IF_ERROR(cuda::plan_call(*p, dtype, backward, o, slots, plan, &cached));
  if ((*plan)->heads_axis) {
    *t = heads_as_axis(*t, *p);
    *p = heads_as_axis(*p);
    *plan = (*plan)->heads_axis;
  }
  return Status::Ok();
}

// The plan's workspace and the call's tensors `v` (in slot order) with the ones the plan copies
// rebound to dense buffers, the inputs among them copied in.
template <size_t N>
Status begin_call(const CudaPlan& plan, const Options& o, const std::vector<Slot>& slots, Workspace* ws,
                  std::array<TensorView, N>* v) {
  NATTN_RETURN_IF_ERROR(ws->acquire(plan.workspace));
  HostPhaseTimer phase(HostPhase::kBindCopies);
  return bind_copies(plan, slots, *ws, static_cast<cudaStream_t>(o.stream), v);
}

class CudaBackend final : public Backend {
 public:
  BackendKind kind() const override { return BackendKind::kCuda; }
  const char* name() const override { return "cuda"; }

  std::vector<std::string> families() const override {
    std::vector<std::string> out;
    for (const cuda::KernelFamily* f : cuda::kernel_families()) out.push_back(f->name());
    return out;
  }

  // Asked once per process: the device count does not change under a running process.
  Status available() const override {
    static const Status s = [] {
      int n = 0;
      const cudaError_t e = cudaGetDeviceCount(&n);
      if (e != cudaSuccess) {
        cudaGetLastError();  // clear the sticky "no device" error
        return Status::Unsupported(std::string("no usable CUDA device (") + cudaGetErrorString(e) + ")");
      }
      if (n == 0) return Status::Unsupported("no CUDA device present");
      return Status::Ok();
    }();
    return s;
  }

  Status supports(const Problem&, DType, Device device, bool) const override {
    if (device.type != DeviceType::kCUDA)
      return Status::Unsupported("runs on CUDA tensors only (got " + device_name(device) + ")");
    return Status::Ok();
  }

  std::vector<KernelConfigInfo> kernel_configs() const override;
  Status release_cached_workspace() const override { return cuda::release_cached_workspace_pools(); }

  Status merge(const std::vector<TensorView>& outs, const std::vector<TensorView>& lses, const TensorView& out,
               const TensorView& lse, const Options& o) const override {
    DeviceGuard guard(out.device.index);
    return cuda_merge(outs, lses, out, lse, o.stream);
  }

  Status explain_forward(const Problem& p, const ForwardTensors& t, const Options& o, Plan* out) const override {
    DeviceGuard guard(t.q.device.index);
    return explain(p, t.q.dtype, false, o, forward_slots(t), out);
  }

  Status explain_backward(const Problem& p, const BackwardTensors& t, const Options& o, Plan* out) const override {
    DeviceGuard guard(t.q.device.index);
    return explain(p, t.q.dtype, true, o, backward_slots(t), out);
  }

  Status forward(const Problem& call, const ForwardTensors& tensors, const Options& o) const override {
    DeviceGuard guard(tensors.q.device.index);
    Problem p = call;
    ForwardTensors t = tensors;
    std::shared_ptr<const CudaPlan> plan;
    const std::vector<Slot> slots = forward_slots(t);
    NATTN_RETURN_IF_ERROR(lookup_plan(&p, &t, t.q.dtype, false, o, slots, &plan));
    const cudaStream_t s = static_cast<cudaStream_t>(o.stream);
    Workspace ws(o.workspace, s, tensors.q.device.index);
    std::array<TensorView, 7> v{t.q, t.k, t.v, t.additional_k, t.additional_v, t.out, t.lse};
    NATTN_RETURN_IF_ERROR(begin_call(*plan, o, slots, &ws, &v));
    cuda::ForwardParams fp;
    fp.g = cuda::geometry_of(p);
    fp.q = v[0].data;
    fp.k = v[1].data;
    fp.v = v[2].data;
    fp.ka = v[3].data;
    fp.va = v[4].data;
    fp.out = v[5].data;
    fp.lse = v[6].defined() ? static_cast<float*>(v[6].data) : nullptr;
    fp.sq = strides_of(v[0], p.rank);
    fp.sk = strides_of(v[1], p.rank);
    fp.sv = strides_of(v[2], p.rank);
    fp.so = strides_of(v[5], p.rank);
    fp.slse = strides_of(v[6], p.rank);
    fp.ska = additional_strides(v[3]);
    fp.sva = additional_strides(v[4]);
    {
      HostPhaseTimer phase(HostPhase::kFamily);
      NATTN_RETURN_IF_ERROR(plan->family->forward(plan->kernels, fp, t.q.dtype, s));
    }
    HostPhaseTimer phase(HostPhase::kCopyOut);
    return copy_outputs(*plan, slots, ws, s);
  }

  Status backward(const Problem& call, const BackwardTensors& tensors, const Options& o) const override {
    DeviceGuard guard(tensors.q.device.index);
    Problem p = call;
    BackwardTensors t = tensors;
    std::shared_ptr<const CudaPlan> plan;
    const std::vector<Slot> slots = backward_slots(t);
    NATTN_RETURN_IF_ERROR(lookup_plan(&p, &t, t.q.dtype, true, o, slots, &plan));
    const cudaStream_t s = static_cast<cudaStream_t>(o.stream);
    Workspace ws(o.workspace, s, tensors.q.device.index);
    std::array<TensorView, 14> v{t.q,    t.k,  t.v,  t.additional_k, t.additional_v,   t.out,           t.lse, t.dout,
                                 t.dlse, t.dq, t.dk, t.dv,           t.d_additional_k, t.d_additional_v};
    NATTN_RETURN_IF_ERROR(begin_call(*plan, o, slots, &ws, &v));
    cuda::BackwardParams bp;
    bp.g = cuda::geometry_of(p);
    bp.q = v[0].data;
    bp.k = v[1].data;
    bp.v = v[2].data;
    bp.ka = v[3].data;
    bp.va = v[4].data;
    bp.out = v[5].data;
    bp.dout = v[7].data;
    bp.lse = static_cast<const float*>(v[6].data);
    bp.dlse = v[8].defined() ? static_cast<const float*>(v[8].data) : nullptr;
    bp.dq = v[9].data;
    bp.dk = v[10].data;
    bp.dv = v[11].data;
    bp.dka = v[12].data;
    bp.dva = v[13].data;
    bp.sq = strides_of(v[0], p.rank);
    bp.sk = strides_of(v[1], p.rank);
    bp.sv = strides_of(v[2], p.rank);
    bp.so = strides_of(v[5], p.rank);
    bp.sdo = strides_of(v[7], p.rank);
    bp.slse = strides_of(v[6], p.rank);
    bp.sdlse = strides_of(v[8], p.rank);
    bp.sdq = strides_of(v[9], p.rank);
    bp.sdk = strides_of(v[10], p.rank);
    bp.sdv = strides_of(v[11], p.rank);
    bp.ska = additional_strides(v[3]);
    bp.sva = additional_strides(v[4]);
    bp.sdka = additional_strides(v[12]);
    bp.sdva = additional_strides(v[13]);
    bp.rows = reinterpret_cast<float*>(ws.at(plan->delta_offset));
    bp.srows = cuda::contiguous_query_strides(bp.g, cuda::kRowColumns);
    if (plan->scratch > 0) {  // the fast backward's dQ partial sums (the family zeroes them)
      bp.dq_accum = reinterpret_cast<float*>(ws.at(plan->scratch_offset));
      bp.sdq_accum = cuda::contiguous_query_strides(bp.g, cuda::dq_accum_cols(bp.g));
    }
    {
      HostPhaseTimer phase(HostPhase::kDelta);
      NATTN_RETURN_IF_ERROR(cuda::run_delta(bp, t.q.dtype, s));
    }
    {
      HostPhaseTimer phase(HostPhase::kFamily);
      NATTN_RETURN_IF_ERROR(plan->family->backward(plan->kernels, bp, t.q.dtype, s));
    }
    HostPhaseTimer phase(HostPhase::kCopyOut);
    return copy_outputs(*plan, slots, ws, s);
  }

 private:
  static Status explain(const Problem& p, DType dtype, bool backward, const Options& o, const std::vector<Slot>& slots,
                        Plan* out) {
    std::shared_ptr<const CudaPlan> plan;
    bool cached = false;
    NATTN_RETURN_IF_ERROR(cuda::plan_call(p, dtype, backward, o, slots, &plan, &cached));
    *out = plan->explained;
    out->cached = cached;
    return Status::Ok();
  }
};

std::vector<KernelConfigInfo> CudaBackend::kernel_configs() const {
  std::vector<KernelConfigInfo> out;
  for (const cuda::KernelConfig& c : cuda::kKernelConfigs) {
    KernelConfigInfo i;
    i.id = c.id;
    i.family = cuda::family_name(c.family);
    i.role = cuda::role_name(c.role);
    i.dtype = cuda::elem_name(c.elem);
    i.head_dim = c.head_dim;
    i.block_q = c.block_q;
    i.block_kv = c.block_kv;
    i.warps = c.warps;
    i.stages = c.stages;
    i.pingpong = c.pingpong;
    i.poly_exp = c.poly_exp;
    i.ctas_per_sm = c.ctas_per_sm;
    i.built = cuda::config_built(c.id);
    out.push_back(i);
  }
  return out;
}

}  // namespace

const Backend& cuda_backend() {
  static const CudaBackend b;
  return b;
}

}  // namespace nattn
