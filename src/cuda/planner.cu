// Layer: cuda. See planner.h.
#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <string>
#include <unordered_map>

#include "core/env.h"
#include "core/heads_axis.h"
#include "core/tile_shapes.h"
#include "cuda/planner.h"

namespace nattn::cuda {
namespace {

constexpr size_t kAlign = 256;
size_t aligned(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// The cache key: the raw bytes of everything a plan depends on.
class Key {
 public:
  template <class T>
  void add(const T& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    const char* b = reinterpret_cast<const char*>(&v);
    bytes_.append(b, sizeof v);
  }
  void add_string(const std::string& s) {
    add(s.size());
    bytes_ += s;
  }
  void reserve(size_t n) { bytes_.reserve(n); }
  std::string take() { return std::move(bytes_); }

 private:
  std::string bytes_;
};

std::string make_key(const Problem& p, DType dtype, bool backward, int device, const Options& o,
                     const std::vector<Slot>& slots) {
  Key k;
  k.reserve(512);
  k.add(p.rank);
  k.add(p.batch);
  k.add(p.extent);
  k.add(p.heads_q);
  k.add(p.heads_kv);
  k.add(p.head_dim);
  k.add(p.head_dim_v);
  k.add(p.window.kernel_size);
  k.add(p.window.stride);
  k.add(p.window.dilation);
  k.add(p.window.is_causal);
  k.add(p.num_additional);  // (the scale is not part of a plan: kernels take it per call)
  k.add(p.placement.global_extent);
  k.add(p.placement.query_origin);
  k.add(p.placement.key_origin);
  k.add(p.placement.key_extent);
  k.add(dtype);
  k.add(backward);
  k.add(device);
  k.add(o.deterministic);
  k.add_string(o.choice.family);
  k.add(o.choice.config_ids.size());
  for (int id : o.choice.config_ids) k.add(id);
  k.add(o.choice.own_tile);
  k.add(o.choice.walk_tile);
  for (const Slot& s : slots) {
    const TensorView& v = *s.view;
    k.add(v.ndim);
    for (int i = 0; i < v.ndim; ++i) k.add(v.stride[i]);
    k.add(bool(reinterpret_cast<uintptr_t>(v.data) % 16 == 0));
  }
  return k.take();
}

// Bounded: a process that plans more distinct calls than this starts over.
constexpr size_t kMaxPlans = 4096;

struct Cache {
  std::mutex mutex;
  std::unordered_map<std::string, std::shared_ptr<const CudaPlan>> plans;
};
Cache& cache() {
  static Cache c;
  return c;
}

}  // namespace

Geometry geometry_of(const Problem& p) {
  Geometry g;
  g.rank = p.rank;
  for (int a = 0; a < 3; ++a) {
    const bool used = a < p.rank;
    g.extent[a] = used ? p.extent[a] : 1;
    g.kernel[a] = used ? p.window.kernel_size[a] : 1;
    g.stride[a] = used ? p.window.stride[a] : 1;
    g.dilation[a] = used ? p.window.dilation[a] : 1;
    g.causal[a] = used && p.window.is_causal[a];
  }
  g.batch = p.batch;
  g.heads_q = p.heads_q;
  g.heads_kv = p.heads_kv;
  g.head_dim = p.head_dim;
  g.head_dim_v = p.head_dim_v;
  g.num_additional = p.num_additional;
  g.tokens = p.tokens();
  g.scale = float(p.effective_scale());
  g.scale_exact = p.effective_scale();
  g.placed = p.placed();
  for (int a = 0; a < 3; ++a) {
    const bool used = a < p.rank;
    g.global[a] = used ? p.global_extent(a) : 1;
    g.query_origin[a] = used ? p.placement.query_origin[a] : 0;
    g.key_origin[a] = used ? p.placement.key_origin[a] : 0;
    g.key_extent[a] = used ? p.key_extent(a) : 1;
  }
  g.key_tokens = p.key_tokens();
  // Families without placement see the plain problem's geometry (extent = the whole grid).
  return g;
}

namespace {

void explain_kernels(CudaPlan* plan) {
  for (const KernelLaunch& k : plan->kernels) {
    PlannedKernel e;
    e.role =
        std::string(role_name(k.role)) + (k.ordered_dq ? "_ordered" : "") + (k.additional_keys ? "_additional" : "");
    e.config_id = k.config_id;
    e.own_tile = k.own;
    e.walk_tile = k.walk;
    e.grid = {int64_t(k.grid[0]), int64_t(k.grid[1]), int64_t(k.grid[2])};
    e.threads = k.threads;
    e.smem_bytes = int64_t(k.smem);
    e.walked_tiles = k.walked_tiles;
    plan->explained.kernels.push_back(e);
  }
}

// Walked boxes of 128 queries x 128 keys over the whole call (every head), within the TMA's
// 256 elements per box axis.
double walked_boxes(const Problem& p) {
  std::array<int, 3> caps{0, 0, 0};
  for (int a = 0; a < p.rank; ++a) caps[size_t(a)] = int(256 / p.window.dilation[size_t(a)]);
  const double tiles = choose_tile_shapes(p, 128, 128, TileRole::kQueriesOwned, caps).key_tiles;
  return tiles < 0 ? -1 : tiles * double(p.heads_q);
}

Status make_plan(const Problem& p, DType dtype, bool backward, int device, const Options& o,
                 const std::vector<Slot>& slots, CudaPlan* plan);

// The call's plan with its heads as a grid axis (core/heads_axis.h): the rewritten call's plan,
// on heads_as_axis views of the call's tensors.
Status plan_heads_axis(const Problem& p, DType dtype, bool backward, int device, const Options& o,
                       const std::vector<Slot>& slots, CudaPlan* inner) {
  std::vector<TensorView> views;
  views.reserve(slots.size());
  for (const Slot& s : slots) views.push_back(heads_as_axis(*s.view, p));
  std::vector<Slot> rewritten = slots;
  for (size_t i = 0; i < slots.size(); ++i) rewritten[i].view = &views[i];
  return make_plan(heads_as_axis(p), dtype, backward, device, o, rewritten, inner);
}

Status make_plan_as_is(const Problem& p, DType dtype, bool backward, int device, const Options& o,
                       const std::vector<Slot>& slots, CudaPlan* plan);

// Where heads_axis_pays, the call runs with its heads as a grid axis if the rewritten call runs
// on the family the call as it is runs on (a grid that family cannot take must not move the call
// to a slower one); otherwise, and when the rewritten call cannot be planned, as it is.
Status make_plan(const Problem& p, DType dtype, bool backward, int device, const Options& o,
                 const std::vector<Slot>& slots, CudaPlan* plan) {
  NATTN_RETURN_IF_ERROR(smem_limit_hook_status());
  NATTN_RETURN_IF_ERROR(make_plan_as_is(p, dtype, backward, device, o, slots, plan));
  if (!heads_axis_pays(p, o)) return Status::Ok();
  auto inner = std::make_shared<CudaPlan>();
  if (!plan_heads_axis(p, dtype, backward, device, o, slots, inner.get()).ok() || inner->family != plan->family)
    return Status::Ok();
  *plan = CudaPlan{};
  plan->explained = inner->explained;
  for (FamilyVerdict& f : plan->explained.families)
    if (f.chosen)
      f.reason += "; heads as grid axis 0: the call runs as one kv head over [" + std::to_string(p.heads_kv) + ", " +
                  std::to_string(p.extent[0]) + (p.rank > 1 ? ", " + std::to_string(p.extent[1]) : "") +
                  "] with kernel size 1 along the heads, so a box holds several heads' small grids";
  plan->heads_axis = std::move(inner);
  return Status::Ok();
}

Status make_plan_as_is(const Problem& p, DType dtype, bool backward, int device, const Options& o,
                       const std::vector<Slot>& slots, CudaPlan* plan) {
  const Geometry g = geometry_of(p);
  const Call call{p, g, dtype, backward, device_info(device), o.choice, o.deterministic};
  plan->explained.backend = "cuda";
  const std::string& forced = o.choice.family;
  for (const KernelFamily* f : kernel_families()) {
    if (plan->family != nullptr) {
      plan->explained.families.push_back(
          {f->name(), false, std::string("not needed: ") + plan->family->name() + " runs the call"});
      continue;
    }
    if (!forced.empty() && forced != f->name()) {
      plan->explained.families.push_back({f->name(), false, "not chosen: choice.family = " + forced});
      continue;
    }
    // Placed boxes (cross-attention, shards of a larger grid) only where the family says so.
    Status s = !g.placed || f->implements_placement()
                   ? f->can_implement(call)
                   : Status::Unsupported(std::string("the ") + f->name() +
                                         " kernels do not implement placed query/key boxes (cross-attention with a "
                                         "different number of keys, or a shard of a larger grid)");
    if (s.ok()) s = f->plan(call, &plan->kernels);
    if (!s.ok()) {
      // A forced family, an invalid choice or a runtime failure never falls back to the next family.
      if (!forced.empty() || s.code() != StatusCode::kUnsupported)
        return forced.empty() ? s
                              : Status(s.code(), "choice.family = " + forced + " cannot run this call: " + s.message());
      plan->explained.families.push_back({f->name(), false, s.message()});
      continue;
    }
    plan->family = f;
    std::string what = f->id() == Family::kGeneric
                           ? "exact SIMT kernels: no fused family implements this call (reasons above)"
                           : std::string("fused kernels");
    for (const KernelLaunch& k : plan->kernels)  // rows chosen for the device's shared memory
      if (!k.note.empty()) what += "; " + k.note;
    plan->explained.families.push_back({f->name(), true, what});
  }
  if (plan->family == nullptr) return Status::Unsupported("no CUDA kernel family can run this call");
  plan->explained.family = plan->family->name();
  // Layouts the chosen family cannot read or write in place go through dense buffers.
  size_t ws = 0;
  for (int i = 0; i < int(slots.size()); ++i) {
    const Slot& s = slots[size_t(i)];
    if (!s.fused || !s.view->defined() || s.view->numel() == 0) continue;
    const Status in_place = plan->family->reads_in_place(*s.view);
    if (in_place.ok()) continue;
    plan->copies.push_back({i, ws});
    ws += aligned(size_t(s.view->numel()) * size_t(dtype_size(s.view->dtype)));
    plan->explained.copies.push_back(
        std::string(s.name) +
        (s.output ? ": written to a dense buffer, then copied out (" : ": copied into a dense buffer (") +
        in_place.message() + ")");
  }
  if (backward) {
    plan->delta_offset = ws;
    ws += aligned(size_t(p.batch * p.tokens() * p.heads_q) * cuda::kRowColumns * sizeof(float));
    PlannedKernel delta;
    delta.role = "delta";
    plan->explained.kernels.push_back(delta);
  }
  for (const KernelLaunch& k : plan->kernels) plan->scratch = std::max(plan->scratch, k.scratch);
  if (plan->scratch > 0) {
    plan->scratch_offset = ws;
    ws += aligned(plan->scratch);
  }
  plan->workspace = ws;
  plan->explained.workspace_bytes = int64_t(ws);
  explain_kernels(plan);
  return Status::Ok();
}

}  // namespace

bool heads_axis_pays(const Problem& p, const Options& o) {
  // NATTN_HEADS_AXIS=0 (read once): never, a developer switch for A/B timing.
  static const bool off = env_equals("NATTN_HEADS_AXIS", "0");
  if (off || !heads_axis_applies(p) || tiles_forced(o.choice)) return false;
  if (p.rank == 2 && p.batch > 1) {
    const int64_t d = p.head_dim;
    if (p.head_dim_v != d || (d != 32 && d != 64 && d != 128 && d != 256)) return false;
  }
  const double before = walked_boxes(p), after = walked_boxes(heads_as_axis(p));
  return before > 0 && after > 0 && after <= 0.75 * before;
}

Status plan_call(const Problem& p, DType dtype, bool backward, const Options& o, const std::vector<Slot>& slots,
                 std::shared_ptr<const CudaPlan>* plan, bool* cached) {
  const int device = slots.front().view->device.index;
  std::string key = make_key(p, dtype, backward, device, o, slots);
  Cache& c = cache();
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    const auto it = c.plans.find(key);
    if (it != c.plans.end()) {
      *plan = it->second;
      *cached = true;
      return Status::Ok();
    }
  }
  auto fresh = std::make_shared<CudaPlan>();
  NATTN_RETURN_IF_ERROR(make_plan(p, dtype, backward, device, o, slots, fresh.get()));
  *plan = fresh;
  *cached = false;
  std::lock_guard<std::mutex> lock(c.mutex);
  if (c.plans.size() >= kMaxPlans) c.plans.clear();
  c.plans.emplace(std::move(key), std::move(fresh));
  return Status::Ok();
}

}  // namespace nattn::cuda
