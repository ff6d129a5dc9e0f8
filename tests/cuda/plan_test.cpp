// Layer: tests. The CUDA backend's planner seen through the public API: layouts a fused family
// cannot read are copied (and still computed by it), float32 goes to the generic kernels with
// the reason, forced choices that cannot apply are errors that write nothing, repeated calls
// hit the plan cache, and scratch memory comes from the caller's workspace allocator.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "device_tensor.h"
#include "nattn/nattn.h"

namespace nattn_test {
namespace {

using nattn::DType;

// The smallest head dim with built sm80 rows of `dtype` for a forward (or a dQ + dK/dV pair
// for a backward); 0 when this library has none.
int built_sm80_head_dim(const std::string& dtype, bool backward) {
  int best = 0;
  const std::vector<nattn::KernelConfigInfo> rows = nattn::kernel_configs();
  for (const nattn::KernelConfigInfo& r : rows) {
    if (r.family != "sm80" || r.dtype != dtype || !r.built || r.role != (backward ? "backward_dq" : "forward"))
      continue;
    bool pair = !backward;
    for (const nattn::KernelConfigInfo& o : rows)
      pair |=
          o.family == "sm80" && o.dtype == dtype && o.built && o.role == "backward_dkdv" && o.head_dim == r.head_dim;
    if (pair && (best == 0 || r.head_dim < best)) best = r.head_dim;
  }
  return best;
}

// The id of a row, -1 if none.
int row_id(const std::string& family, const std::string& role, const std::string& dtype, int head_dim) {
  for (const nattn::KernelConfigInfo& r : nattn::kernel_configs())
    if (r.family == family && r.role == role && r.dtype == dtype && r.head_dim == head_dim) return r.id;
  return -1;
}

nattn::Problem small_problem(int rank, int64_t head_dim) {
  nattn::Problem p;
  p.rank = rank;
  p.batch = 2;
  p.extent = rank == 1   ? std::array<int64_t, 3>{40, 1, 1}
             : rank == 2 ? std::array<int64_t, 3>{12, 10, 1}
                         : std::array<int64_t, 3>{5, 6, 7};
  p.window = nattn::Window::uniform(3);
  if (rank >= 2) {
    p.window.kernel_size[1] = 5;
    p.window.stride[1] = 2;
    p.window.is_causal[0] = true;
  }
  p.heads_q = 4;
  p.heads_kv = 2;
  p.head_dim = p.head_dim_v = head_dim;
  p.num_additional = 3;
  return p;
}

// sm80 today; sm90 where its kernels implement the call.
bool is_fused(const std::string& family) { return family == "sm80" || family == "sm90"; }

bool has_copy_of(const nattn::Plan& plan, const std::string& tensor) {
  for (const std::string& c : plan.copies)
    if (c.rfind(tensor + ":", 0) == 0) return true;
  return false;
}

// Fused-family tests need compute capability 8.0 and the sm80 rows of a dtype.
#define NATTN_REQUIRE_SM80(hd, dtype, backward)                                                           \
  const int hd = built_sm80_head_dim(dtype, backward);                                                    \
  if (cuda_compute_capability() < 80) GTEST_SKIP() << "needs compute capability 8.0 for the sm80 family"; \
  if (hd == 0) GTEST_SKIP() << "no " << dtype << " sm80 rows are built into this library"

class CudaPlan : public CudaTest {};

// (a) An expanded gradient (every stride 0, as autograd passes for sum().backward()) cannot be
// read by the fused kernels' row loads: the plan copies it and a fused family (sm80) still runs
// the call instead of the generic kernels.
TEST_F(CudaPlan, ExpandedDoutIsCopiedAndRunsFused) {
  NATTN_REQUIRE_SM80(hd, "bfloat16", true);
  for (int rank = 1; rank <= 3; ++rank) {
    const nattn::Problem p = small_problem(rank, hd);
    SCOPED_TRACE(describe_problem(p));
    const std::vector<int64_t> shape = grid_shape(p, p.heads_q, p.head_dim_v);
    DeviceTensor dout(shape, DType::kBFloat16, std::vector<int64_t>(shape.size(), 0), 0);
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    dout.write(std::vector<double>(size_t(n), rng.uniform(-1, 1)));
    DeviceBackward c = make_device_backward(p, DType::kBFloat16, false, false, rng, &dout);
    nattn::Plan plan;
    nattn::Status s = nattn::explain_backward(p, c.views(), cuda_options(), &plan);
    ASSERT_TRUE(s.ok()) << s.message();
    SCOPED_TRACE(plan.to_json());
    EXPECT_TRUE(is_fused(plan.family)) << "the copy should keep the call on a fused family";
    EXPECT_TRUE(has_copy_of(plan, "dout")) << "no copy of dout in the plan";
    EXPECT_GT(plan.workspace_bytes, 0);
    s = nattn::backward(p, c.views(), cuda_options());
    ASSERT_TRUE(s.ok()) << s.message();
    ASSERT_TRUE(device_synchronized());
    expect_backward_matches_reference(c);
  }
}

// (b) q with a head-dim stride of 2, or a base that is not 16-byte aligned: copied, run by a
// fused family (sm80).
TEST_F(CudaPlan, OddStrideOrUnalignedQIsCopiedAndRunsFused) {
  NATTN_REQUIRE_SM80(hd, "bfloat16", false);
  for (const bool unaligned : {false, true}) {
    SCOPED_TRACE(unaligned ? "q base 2 bytes past 16-byte alignment" : "q head-dim stride 2");
    const nattn::Problem p = small_problem(2, hd);
    DeviceForward c = make_device_forward(p, DType::kBFloat16, false, true, rng);
    const std::vector<int64_t> shape = grid_shape(p, p.heads_q, p.head_dim);
    std::vector<int64_t> strides(shape.size());
    int64_t step = unaligned ? 1 : 2;
    for (size_t d = shape.size(); d-- > 0;) {
      strides[d] = step;
      step *= shape[d];
    }
    c.q = DeviceTensor(shape, DType::kBFloat16, strides, unaligned ? 1 : 0);
    c.q.fill_random(rng);
    nattn::Plan plan;
    nattn::Status s = nattn::explain_forward(p, c.views(), cuda_options(), &plan);
    ASSERT_TRUE(s.ok()) << s.message();
    SCOPED_TRACE(plan.to_json());
    EXPECT_TRUE(is_fused(plan.family)) << "the copy should keep the call on a fused family";
    EXPECT_TRUE(has_copy_of(plan, "q")) << "no copy of q in the plan";
    EXPECT_FALSE(has_copy_of(plan, "k")) << "k is row-major and aligned: no copy expected";
    s = nattn::forward(p, c.views(), cuda_options());
    ASSERT_TRUE(s.ok()) << s.message();
    ASSERT_TRUE(device_synchronized());
    expect_forward_matches_reference(c);
  }
}

// (c) float32 has no fused rows: the generic kernels run it, and sm80's verdict says why.
TEST_F(CudaPlan, Float32RunsGenericWithTheReason) {
  const nattn::Problem p = small_problem(2, 24);
  DeviceForward c = make_device_forward(p, DType::kFloat32, false, true, rng);
  nattn::Plan plan;
  nattn::Status s = nattn::explain_forward(p, c.views(), cuda_options(), &plan);
  ASSERT_TRUE(s.ok()) << s.message();
  SCOPED_TRACE(plan.to_json());
  EXPECT_EQ(plan.family, "generic");
  bool found = false;
  for (const nattn::FamilyVerdict& f : plan.families) {
    if (f.family != "sm80") continue;
    found = true;
    EXPECT_FALSE(f.chosen);
    // On a device below sm80 the capability may be the reason given first.
    if (cuda_compute_capability() >= 80) {
      EXPECT_NE(f.reason.find("float32"), std::string::npos) << f.reason;
    }
  }
  EXPECT_TRUE(found) << "no sm80 verdict in the plan";
  s = nattn::forward(p, c.views(), cuda_options());
  ASSERT_TRUE(s.ok()) << s.message();
  ASSERT_TRUE(device_synchronized());
  expect_forward_matches_reference(c);
}

// (d) A forced choice the call cannot use is an error naming the argument; nothing is written.
struct BadChoice {
  const char* what;
  nattn::KernelChoice choice;
  DType dtype;
  const char* names;  // the argument the message must name
};

TEST_F(CudaPlan, InvalidForcedChoiceIsAnErrorAndWritesNothing) {
  NATTN_REQUIRE_SM80(hd, "bfloat16", false);
  const nattn::Problem p = small_problem(2, hd);
  const int fp16_forward = row_id("sm80", "forward", "float16", hd);
  const int bf16_forward = row_id("sm80", "forward", "bfloat16", hd);
  nattn::KernelConfigInfo bf16_row;
  for (const nattn::KernelConfigInfo& r : nattn::kernel_configs())
    if (r.id == bf16_forward) bf16_row = r;
  ASSERT_GE(fp16_forward, 0);
  ASSERT_GE(bf16_forward, 0);
  std::vector<BadChoice> cases;
  {
    BadChoice b{"a float16 row for a bfloat16 call", {}, DType::kBFloat16, "choice.config_ids"};
    b.choice.config_ids = {fp16_forward};
    cases.push_back(b);
  }
  {
    BadChoice b{"the same row under family sm80", {}, DType::kBFloat16, "choice.config_ids"};
    b.choice.family = "sm80";
    b.choice.config_ids = {fp16_forward};
    cases.push_back(b);
  }
  {
    BadChoice b{"two rows for the forward role", {}, DType::kBFloat16, "choice.config_ids"};
    b.choice.config_ids = {bf16_forward, fp16_forward};
    cases.push_back(b);
  }
  {
    BadChoice b{"a row id past the table", {}, DType::kBFloat16, "choice.config_ids"};
    b.choice.config_ids = {100000};
    cases.push_back(b);
  }
  {
    BadChoice b{"an own tile with the wrong number of rows", {}, DType::kBFloat16, "choice.own_tile"};
    b.choice.own_tile = {2, 2, 1};
    b.choice.walk_tile = {bf16_row.block_kv, 1, 1};
    cases.push_back(b);
  }
  {
    BadChoice b{"a walk tile with the wrong number of rows", {}, DType::kBFloat16, "choice.walk_tile"};
    b.choice.own_tile = {bf16_row.block_q, 1, 1};
    b.choice.walk_tile = {bf16_row.block_kv * 2, 1, 1};
    cases.push_back(b);
  }
  {
    BadChoice b{"a tile that is not a power of two", {}, DType::kBFloat16, "choice.own_tile"};
    b.choice.own_tile = {3, bf16_row.block_q / 3, 1};
    b.choice.walk_tile = {bf16_row.block_kv, 1, 1};
    cases.push_back(b);
  }
  {
    BadChoice b{"family sm80 for float32", {}, DType::kFloat32, "choice.family"};
    b.choice.family = "sm80";
    cases.push_back(b);
  }
  {
    BadChoice b{"an unknown family", {}, DType::kBFloat16, "choice.family"};
    b.choice.family = "sm99";
    cases.push_back(b);
  }
  {
    BadChoice b{"tiles for the generic family", {}, DType::kFloat32, "choice.own_tile"};
    b.choice.family = "generic";
    b.choice.own_tile = {8, 8, 1};
    b.choice.walk_tile = {8, 8, 1};
    cases.push_back(b);
  }
  for (const BadChoice& b : cases) {
    SCOPED_TRACE(b.what);
    nattn::Options o = cuda_options();
    o.choice = b.choice;
    DeviceForward c = make_device_forward(p, b.dtype, false, true, rng);
    nattn::Plan plan;
    nattn::Status s = nattn::explain_forward(p, c.views(), o, &plan);
    EXPECT_FALSE(s.ok()) << "explain accepted it: " << plan.to_json();
    EXPECT_NE(s.message().find(b.names), std::string::npos)
        << "explain's message does not name " << b.names << ": " << s.message();
    s = nattn::forward(p, c.views(), o);
    EXPECT_FALSE(s.ok());
    EXPECT_NE(s.message().find(b.names), std::string::npos)
        << "the message does not name " << b.names << ": " << s.message();
    c.out.download();
    c.lse.download();
    EXPECT_TRUE(c.out.all_poisoned()) << "out was written";
    EXPECT_TRUE(c.lse.all_poisoned()) << "lse was written";
  }
}

TEST_F(CudaPlan, InvalidForcedBackwardRowIsAnErrorAndWritesNothing) {
  NATTN_REQUIRE_SM80(hd, "bfloat16", true);
  const nattn::Problem p = small_problem(3, hd);
  nattn::Options o = cuda_options();
  o.choice.config_ids = {row_id("sm80", "backward_dq", "float16", hd), row_id("sm80", "backward_dkdv", "bfloat16", hd)};
  DeviceBackward c = make_device_backward(p, DType::kBFloat16, false, true, rng);
  const nattn::Status s = nattn::backward(p, c.views(), o);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("choice.config_ids"), std::string::npos) << s.message();
  for (DeviceTensor* t : {&c.dq, &c.dk, &c.dv, &c.dka, &c.dva}) {
    t->download();
    EXPECT_TRUE(t->all_poisoned()) << "a gradient was written";
  }
}

// (e) The second explain of an identical call comes from the plan cache, and so does a call
// after an explain.
TEST_F(CudaPlan, RepeatedCallsHitThePlanCache) {
  for (const DType dtype : {DType::kBFloat16, DType::kFloat32}) {
    nattn::Problem p = small_problem(2, 32);
    p.scale = rng.uniform(0.1, 0.9);  // a key no earlier test planned
    SCOPED_TRACE(describe_problem(p) + ", " + nattn::dtype_name(dtype));
    DeviceForward c = make_device_forward(p, dtype, false, true, rng);
    nattn::Plan first, second;
    ASSERT_TRUE(nattn::explain_forward(p, c.views(), cuda_options(), &first).ok());
    ASSERT_TRUE(nattn::explain_forward(p, c.views(), cuda_options(), &second).ok());
    EXPECT_FALSE(first.cached) << "a fresh key came from the cache";
    EXPECT_TRUE(second.cached) << "the identical call was planned again";
    second.cached = first.cached;
    EXPECT_EQ(first.to_json(), second.to_json()) << "the cached plan differs";
    // Other tensors of the same layout share the plan; the backward is a different plan.
    DeviceForward other = make_device_forward(p, dtype, false, true, rng);
    nattn::Plan third;
    ASSERT_TRUE(nattn::explain_forward(p, other.views(), cuda_options(), &third).ok());
    EXPECT_TRUE(third.cached);
    ASSERT_TRUE(nattn::forward(p, other.views(), cuda_options()).ok());
    ASSERT_TRUE(device_synchronized());
    expect_forward_matches_reference(other);
  }
}

// (f) Backward scratch (Delta, copies) comes from the caller's allocator: one allocation of the
// plan's workspace size per call, each released; a failing allocator is an error that writes nothing.
struct AllocatorLog {
  int allocations = 0, releases = 0;
  size_t last_bytes = 0;
  bool fail = false;
  std::vector<void*> live;
};

void* log_allocate(size_t bytes, void* ctx) {
  auto* log = static_cast<AllocatorLog*>(ctx);
  ++log->allocations;
  log->last_bytes = bytes;
  if (log->fail) return nullptr;
  void* p = nullptr;
  if (cudaMalloc(&p, bytes) != cudaSuccess) return nullptr;
  log->live.push_back(p);
  return p;
}

void log_release(void* ptr, void* ctx) {
  auto* log = static_cast<AllocatorLog*>(ctx);
  ++log->releases;
  for (size_t i = 0; i < log->live.size(); ++i)
    if (log->live[i] == ptr) {
      log->live.erase(log->live.begin() + long(i));
      cudaFree(ptr);
      return;
    }
  ADD_FAILURE() << "release of a pointer the allocator did not hand out";
}

TEST_F(CudaPlan, BackwardTakesItsWorkspaceFromTheAllocator) {
  for (const DType dtype : {DType::kBFloat16, DType::kFloat32}) {
    SCOPED_TRACE(nattn::dtype_name(dtype));
    const nattn::Problem p = small_problem(2, 32);
    DeviceBackward c = make_device_backward(p, dtype, rng.coin(), false, rng);
    AllocatorLog log;
    nattn::Options o = cuda_options();
    o.workspace.allocate = log_allocate;
    o.workspace.release = log_release;
    o.workspace.ctx = &log;
    nattn::Plan plan;
    ASSERT_TRUE(nattn::explain_backward(p, c.views(), o, &plan).ok());
    EXPECT_EQ(log.allocations, 0) << "explain allocated";
    ASSERT_GT(plan.workspace_bytes, 0) << "a backward needs Delta scratch";
    const nattn::Status s = nattn::backward(p, c.views(), o);
    ASSERT_TRUE(s.ok()) << s.message();
    EXPECT_EQ(log.allocations, 1);
    EXPECT_EQ(log.releases, log.allocations);
    EXPECT_EQ(log.last_bytes, size_t(plan.workspace_bytes));
    EXPECT_TRUE(log.live.empty());
    ASSERT_TRUE(device_synchronized());
    expect_backward_matches_reference(c);
  }
}

// Without an allocator the workspace comes from the library's pool of the device
// (cuda/workspace_pool.h), which keeps its memory across synchronisations (the device's default
// pool gave it back at each one, and the next call mapped it again): after a call and a sync
// the workspace is still reserved, a second call reuses it (the device's free memory does not
// move), and release_cached_workspace() gives it back. A 2-D problem whose fast backward (sm90's
// default there) needs a float32 dQ workspace of 64 MB; where the plan's workspace is small
// (other families) the memory checks are skipped. (Every CUDA test that passes no allocator runs
// its calls on this pool and checks their results.)
TEST_F(CudaPlan, WorkspacePoolKeepsItsMemoryUntilReleased) {
  nattn::Problem p;
  p.rank = 2;
  p.extent[0] = p.extent[1] = 128;
  p.window.kernel_size[0] = p.window.kernel_size[1] = 31;
  p.batch = 1;
  p.heads_q = p.heads_kv = 8;
  p.head_dim = p.head_dim_v = 128;
  DeviceBackward c = make_device_backward(p, DType::kBFloat16, false, false, rng);
  const nattn::Options o = cuda_options();
  nattn::Plan plan;
  ASSERT_TRUE(nattn::explain_backward(p, c.views(), o, &plan).ok());
  SCOPED_TRACE("plan " + plan.to_json());
  if (plan.workspace_bytes < (int64_t(32) << 20)) GTEST_SKIP() << "workspace of " << plan.workspace_bytes << " bytes";
  ASSERT_TRUE(nattn::release_cached_workspace().ok());
  auto free_bytes = [] {
    size_t free = 0, total = 0;
    EXPECT_EQ(cudaMemGetInfo(&free, &total), cudaSuccess);
    return int64_t(free);
  };
  const int64_t before = free_bytes();
  ASSERT_TRUE(nattn::backward(p, c.views(), o).ok());
  ASSERT_TRUE(device_synchronized());
  const int64_t after_first = free_bytes();
  ASSERT_TRUE(nattn::backward(p, c.views(), o).ok());
  ASSERT_TRUE(device_synchronized());
  const int64_t after_second = free_bytes();
  const nattn::Status released = nattn::release_cached_workspace();
  ASSERT_TRUE(released.ok()) << released.message();
  const int64_t after_release = free_bytes();
  constexpr int64_t kSlack = int64_t(4) << 20;  // allocation granularity
  EXPECT_LE(after_first, before - plan.workspace_bytes + kSlack) << "the first call's workspace was not kept";
  EXPECT_LE(std::llabs(after_second - after_first), kSlack) << "the second call did not reuse the kept workspace";
  EXPECT_GE(after_release, after_second + plan.workspace_bytes - kSlack) << "release_cached_workspace kept it";
}

TEST_F(CudaPlan, FailingAllocatorIsAnErrorAndWritesNothing) {
  const nattn::Problem p = small_problem(1, 32);
  DeviceBackward c = make_device_backward(p, DType::kBFloat16, false, false, rng);
  AllocatorLog log;
  log.fail = true;
  nattn::Options o = cuda_options();
  o.workspace.allocate = log_allocate;
  o.workspace.release = log_release;
  o.workspace.ctx = &log;
  const nattn::Status s = nattn::backward(p, c.views(), o);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("workspace"), std::string::npos) << s.message();
  EXPECT_EQ(log.releases, 0) << "a null allocation was released";
  for (DeviceTensor* t : {&c.dq, &c.dk, &c.dv, &c.dka, &c.dva}) {
    t->download();
    EXPECT_TRUE(t->all_poisoned()) << "a gradient was written";
  }
}

// The sm90 deterministic backward of head dim 32 runs its two-CTAs-per-SM rows (measured
// 1.15-1.45x faster on small grids, 2026-12-05); other head dims keep one CTA per SM. The
// rows' ctas_per_sm comes from kernel_configs(), not from the planner. (Deterministic calls, so
// the pair runs at every head dim; sm90_persistent_test.cpp covers the default mode's choice.)
TEST_F(CudaPlan, Sm90BackwardOfHeadDim32RunsTwoCtasPerSm) {
  if (cuda_compute_capability() != 90) GTEST_SKIP() << "the sm90 family needs compute capability 9.0";
  const char* e = std::getenv("NATTN_SM90_BWD_TWO_CTAS");
  if (e != nullptr && std::string(e) == "0") GTEST_SKIP() << "NATTN_SM90_BWD_TWO_CTAS=0 turns the rule off";
  const std::vector<nattn::KernelConfigInfo> rows = nattn::kernel_configs();
  for (const int hd : {32, 24, 64}) {
    nattn::Problem p = small_problem(2, hd);
    p.num_additional = 0;  // one dQ and one dK/dV kernel
    SCOPED_TRACE(describe_problem(p));
    DeviceBackward c = make_device_backward(p, DType::kBFloat16, false, false, rng);
    nattn::Options o = cuda_options();
    o.deterministic = true;
    nattn::Plan plan;
    const nattn::Status s = nattn::explain_backward(p, c.views(), o, &plan);
    ASSERT_TRUE(s.ok()) << s.message();
    SCOPED_TRACE(plan.to_json());
    if (plan.family != "sm90") GTEST_SKIP() << "the sm90 backward is not built or not chosen here";
    int attention_kernels = 0;
    for (const nattn::PlannedKernel& k : plan.kernels) {
      if (k.role != "backward_dq" && k.role != "backward_dkdv") continue;
      ++attention_kernels;
      ASSERT_GE(k.config_id, 0);
      EXPECT_EQ(rows[size_t(k.config_id)].ctas_per_sm, hd <= 32 ? 2 : 1) << k.role;
    }
    EXPECT_EQ(attention_kernels, 2);
    ASSERT_TRUE(nattn::backward(p, c.views(), o).ok());
    ASSERT_TRUE(device_synchronized());
    expect_backward_matches_reference(c);
  }
}

}  // namespace
}  // namespace nattn_test
