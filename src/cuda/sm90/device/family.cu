// Layer: cuda/sm90 device. The Hopper (sm_90a) family: TMA box loads straight from the caller's
// tensors, wgmma, warp specialisation (cuda/sm90/kernel). It runs the forward for fp16 and bf16,
// head dims (D and Dv) multiples of 8 up to 256 padded to 32/64/128/256, additional keys,
// dilation up to 8, placed boxes. The backward: the sm90 dQ and dK/dV kernels (deterministic), or
// the fast mode's one kernel, the same coverage (the fast mode up to head dim 128;
// NATTN_SM90_BACKWARD=0 hands it to sm80 for A/B timing). Everything else is planned on the sm80
// family with the reason recorded.
#include <cuda.h>

#include <array>
#include <cstdlib>
#include <string>

#include "core/env.h"
#include "core/host_trace.h"
#include "core/tile_shapes.h"
#include "cuda/check.h"
#include "cuda/common/additional_keys.h"
#include "cuda/common/dq_convert.h"
#include "cuda/common/ordered_dq.h"
#include "cuda/family.h"
#include "cuda/sm90/device/dispatch.h"
#include "cuda/sm90/device/tensor_maps.h"
#include "cuda/sm90/kernel/backward_traits.cuh"
#include "cuda/sm90/kernel/traits.cuh"

namespace nattn::cuda {
namespace {

using sm90::encode_maps;
using sm90::map_mode;
using sm90::MapGrid;
using sm90::MapSource;

// A planned kernel's launch (traced as its own host phase).
Status launch(const KernelLaunch& k, const void* args, cudaStream_t s) {
  HostPhaseTimer phase(HostPhase::kLaunch);
  return sm90::launcher(k.config_id)->launch(k, args, s);
}

// A TMA box spans at most 256 elements per dimension: box x dilation.
std::array<int, 3> box_caps(const Geometry& g) {
  std::array<int, 3> caps{0, 0, 0};
  for (int a = 0; a < 3; ++a) caps[a] = int(256 / g.dilation[a]);
  return caps;
}

// reads_in_place took a tensor whose axis 3 has extent 1 as an apart map (any head stride),
// which holds only boxes of one position along it (the chooser avoids longer ones unless
// nothing else fits); with batch 1 the maps keep axis 3 and zero-fill past it.
Status check_axis3_boxes(const Geometry& g, const TileShapes& shapes, bool forced) {
  for (const bool queries : {true, false}) {
    const int64_t x3 = queries ? g.extent[2] : g.key_extent[2];
    const int box3 = queries ? shapes.q[2] : shapes.k[2];
    if (x3 == 1 && box3 > 1 && g.batch > 1) {
      const std::string why = std::string("the ") + (queries ? "query" : "key") + " box spans " + std::to_string(box3) +
                              " positions along axis 3 where the " + (queries ? "queries" : "keys") +
                              " have extent 1, which an sm90 tensor map of a batch > 1 cannot load";
      if (forced) return Status::Invalid("choice.own_tile/walk_tile is invalid for sm90 here: " + why);
      return Status::Unsupported(why);
    }
  }
  return Status::Ok();
}

// NATTN_SM90_BACKWARD (read once), developer switches for A/B timing: "0" hands the backward to
// sm80 (the plan names the switch); "fast" plans the fast kernel wherever it has a row, "1" or
// "pair" the deterministic pair, for calls that do not ask for determinism; unset or anything
// else: the default rule (Sm90Family::backward_roles).
enum class BackwardSwitch { kDefault, kOff, kFast, kPair };
BackwardSwitch backward_switch() {
  static const BackwardSwitch v = env_equals("NATTN_SM90_BACKWARD", "0")      ? BackwardSwitch::kOff
                                  : env_equals("NATTN_SM90_BACKWARD", "fast") ? BackwardSwitch::kFast
                                  : env_equals("NATTN_SM90_BACKWARD", "1") || env_equals("NATTN_SM90_BACKWARD", "pair")
                                      ? BackwardSwitch::kPair
                                      : BackwardSwitch::kDefault;
  return v;
}

// NATTN_SM90_DETERMINISTIC (read once), a switch for deterministic calls: "ordered" plans the
// fast kernel with ordered dQ adds wherever it has a row; unset or anything else: the pair (the
// default: Sm90Family::backward_roles says why).
enum class DeterministicSwitch { kPair, kOrdered };
DeterministicSwitch deterministic_switch() {
  static const DeterministicSwitch v =
      env_equals("NATTN_SM90_DETERMINISTIC", "ordered") ? DeterministicSwitch::kOrdered : DeterministicSwitch::kPair;
  return v;
}

// Where the ping-pong schedule measured faster (configs.h): head dims 32 and 64 (the softmax is
// heavy next to the products), and 1-D/2-D windows with masked tiles on every walk (stride below
// the kernel size, window smaller than the grid). Head dim 256 has no ping-pong rows.
bool pingpong_pays(const Problem& p, int padded) {
  if (padded <= 64) return true;
  // A heads axis (kernel size 1 along axis 0: core/heads_axis.h) does not count; the rule is the
  // call's own grid's.
  const int first = p.rank > 1 && p.window.kernel_size[0] == 1 ? 1 : 0;
  if (padded > 128 || p.rank - first > 2) return false;
  for (int a = first; a < p.rank; ++a)
    if (p.window.stride[a] < p.window.kernel_size[a] && p.window.kernel_size[a] * p.window.dilation[a] < p.extent[a])
      return true;
  return false;
}

// Persistent CTAs (one per SM, each running items blockIdx.x, + gridDim.x, ...) overlap one
// item's tail (last products, epilogue) with the next item's set-up and loads. That pays where
// items are short; long items amortise it and then lose to the static round-robin's load
// imbalance. Measured on the H100 (2026-11-27, bench/results/2026-11-27-h100-sm90-forward-v2.md,
// useful TFLOP/s persistent vs one CTA per item): 1d-32k 564/456 (17 walked tiles per item),
// 1d-32k-s256 586/486, img-2d 223/213 (13), flux-2d 478/457 (61), dense d64 431/397 (64),
// hunyuan-3d-s 614/591, but dense d128 660/680 (128), hunyuan-3d 313/321 and cosmos-3d 409/433
// (hundreds of tiles per item, uneven). NATTN_SM90_PERSISTENT=0/1 forces either (a developer
// switch for A/B timing; read once).
bool persistent_pays(double tiles_per_item) {
  static const int forced = std::getenv("NATTN_SM90_PERSISTENT") == nullptr ? -1
                            : env_equals("NATTN_SM90_PERSISTENT", "0")      ? 0
                                                                            : 1;
  if (forced >= 0) return forced == 1;
  return tiles_per_item <= 96.0;
}

// Developer switches for A/B timing (read once), each measured on an H100 on 2026-12-05
// (bench/results/2026-12-05-h100-eighth-session.md, interleaved on/off in one run):
// NATTN_SM90_BWD_EARLY_STEPS=1, the backward kernels issue their walk's first steps before the
// coverage tables are filled (kernel/backward_producer.cuh start_backward): 3-25% slower on
// every problem tried (NAT stages, 1d-32k, img-2d), so off by default;
// NATTN_SM90_POLY_EXP=1, the forward takes its polynomial-exponential rows (configs.h 65-68):
// 6-12% slower (dense 8k d64 388 against 433 TFLOP/s), so off by default;
// NATTN_SM90_BWD_TWO_CTAS=0, the deterministic backward of head dim 32 keeps one CTA per SM
// instead of its two-CTAs-per-SM rows (69-72), which measured 1.15-1.45x faster on the NAT
// stages and a 128x128 d32 grid, so on by default where such a row is built.
bool backward_early_steps() {
  static const bool on = env_equals("NATTN_SM90_BWD_EARLY_STEPS", "1");
  return on;
}
bool poly_exp_requested() {
  static const bool on = env_equals("NATTN_SM90_POLY_EXP", "1");
  return on;
}
// NATTN_SM90_BWD_DQ_OVERLAP=0: the dQ kernel waits for each step's dQ product before the next
// step's products issue (kernel/fna_backward_dq.cuh), as before 2026-12-05. The overlap passed
// the GPU check and ran, interleaved against the wait on an H100: backward -0.6% to +1.1% at
// d128/d64 (flux-2d-s16 38.23 against 38.68 ms, 1d-32k 6.37 against 6.33), NAT 28x28 d32 0.382
// against 0.446 ms; so on by default.
bool dq_overlap() {
  static const bool on = !env_equals("NATTN_SM90_BWD_DQ_OVERLAP", "0");
  return on;
}
bool two_ctas_allowed() {
  static const bool on = !env_equals("NATTN_SM90_BWD_TWO_CTAS", "0");
  return on;
}
// Persistent backward CTAs (kernel/backward_producer.cuh; sm90::has_persistent_backward rows:
// the deterministic dQ and dK/dV kernels of head dims 64 and 128): at most one CTA per SM, each
// running work items blockIdx.x, + gridDim.x, ... with the next item's walk prepared and its own
// boxes loaded while the item before finishes. They pay where a CTA's start is a large part of
// its item: short walks. First runs on an H100 (2026-12-05, tenth session;
// bench/results/2026-12-05-h100-tenth-session.md), both kernels against one CTA per item,
// backward alone: 1-D window 2048 (~34 walked boxes per item) 5-7% faster, window 127 12-16%,
// d64 window 2048 22-25%, a NAT 56x56 window 7 d64 stage (~6 per item) 20-25%; but 128x128
// window 31 (~30 per item, 2-D) 3-4% slower and flux-2d-s16 (~130) 9% slower. So by default:
// walks of at most 16 boxes per item, or 1-D walks of at most 48 (fit to those six problems;
// persistent_pays_backward). The fast dK/dV kernel's persistent variant (2026-12-06, fourteenth
// session) is opt-in until measured: NATTN_SM90_BWD_PERSISTENT=fast. NATTN_SM90_BWD_PERSISTENT=1
// / 0 forces all three kernels on / off, =dq, =dkdv (the deterministic one) or =fast only that
// kernel on. The fast kernel's ordered variant, head dim 256 and the two-CTA d32 rows keep one
// CTA per item.
int backward_persistent_forced(Role r) {
  static const int on = std::getenv("NATTN_SM90_BWD_PERSISTENT") == nullptr ? -1
                        : env_equals("NATTN_SM90_BWD_PERSISTENT", "1")      ? 7
                        : env_equals("NATTN_SM90_BWD_PERSISTENT", "dq")     ? 1
                        : env_equals("NATTN_SM90_BWD_PERSISTENT", "dkdv")   ? 2
                        : env_equals("NATTN_SM90_BWD_PERSISTENT", "fast")   ? 4
                                                                            : 0;
  const int bit = r == Role::kBackwardDq ? 1 : r == Role::kBackwardDkdv ? 2 : 4;
  return on < 0 ? -1 : (on & bit) != 0 ? 1 : 0;
}
// Walked boxes per own box (work item) of a backward launch.
double walk_per_item(const KernelLaunch& k) {
  return k.walked_tiles / double(k.tiling.neighborhood_ctas > 0 ? k.tiling.neighborhood_ctas : 1);
}
// Walks this short run persistent at any rank (and, as measured, the default mode keeps the
// deterministic pair there: Sm90Family::backward_roles). The fast kernel's persistent variant is
// never the default until measured against the reference (forced only).
constexpr double kShortWalk = 16.0;
bool persistent_pays_backward(const KernelLaunch& k, const Geometry& g) {
  if (k.role == Role::kBackwardDkdvDq) return false;
  const double walk = walk_per_item(k);
  return walk <= kShortWalk || (g.rank == 1 && walk <= 48.0);
}

// The work items of a backward launch k whose kernel runs persistent (own boxes x heads x
// batch: BackwardArgs items/boxes/heads), or 0 where it runs one CTA per item (grid (boxes,
// heads, batch)). g: the launch's geometry (the additional keys' for their dK/dV launch). The
// plan sizes the grid by it and backward_kernel fills the kernel's arguments by it; the switch
// is read once, so both see the same answer.
int64_t persistent_items(const KernelLaunch& k, const Geometry& g, int64_t* boxes, int64_t* heads) {
  if (!sm90::has_persistent_backward(kKernelConfigs[k.config_id]) || k.ordered_dq) return 0;
  const int forced = backward_persistent_forced(k.role);
  if (forced == 0 || (forced < 0 && !persistent_pays_backward(k, g))) return 0;
  *boxes = k.tiling.neighborhood_ctas;  // no column parts: head dims up to 128
  *heads = k.role == Role::kBackwardDq ? g.heads_q : g.heads_kv;
  const int64_t items = *boxes * *heads * g.batch;
  return items > INT32_MAX ? 0 : items;
}
// The forced row of the fast kernel's role, or -1.
int forced_fast_row(const KernelChoice& choice) {
  for (const int id : choice.config_ids)
    if (id >= 0 && id < kNumConfigs && kKernelConfigs[id].role == Role::kBackwardDkdvDq) return id;
  return -1;
}

// Whether the choice forces a row of the deterministic pair (backward_dq or backward_dkdv).
bool pair_row_forced(const KernelChoice& choice) {
  for (const int id : choice.config_ids)
    if (id >= 0 && id < kNumConfigs &&
        (kKernelConfigs[id].role == Role::kBackwardDq || kKernelConfigs[id].role == Role::kBackwardDkdv))
      return true;
  return false;
}

// The grids a kernel's tensor maps read: query boxes (log2 extents q_shift) over the query box,
// key boxes (k_shift) over the key box (the grid unless placed), and the additional keys as a
// 1-D grid of Na tokens in boxes of the walked key rows `extra_rows`.
struct MapGrids {
  MapGrid queries, keys, extra;
};
MapGrids map_grids(const Geometry& g, const int* q_shift, const int* k_shift, int extra_rows) {
  MapGrids m{};
  for (int a = 0; a < 3; ++a) {
    m.queries.extent[a] = g.extent[a];
    m.keys.extent[a] = g.key_extent[a];
    m.queries.dilation[a] = m.keys.dilation[a] = g.dilation[a];
    m.queries.shift[a] = q_shift[a];
    m.keys.shift[a] = k_shift[a];
    m.extra.extent[a] = a == 0 ? g.num_additional : 1;
    m.extra.dilation[a] = 1;
  }
  m.extra.shift[0] = log2_ceil(extra_rows);
  return m;
}

// The call's backward parameters for that problem: the additional keys and values (and their
// gradients) as the key side, [B, Na, Hkv, *] as a grid of Na x 1 x 1; the query side as is.
BackwardParams additional_keys_params(const BackwardParams& p) {
  BackwardParams e = p;
  e.g = additional_keys_geometry(p.g);
  e.k = p.ka, e.v = p.va, e.sk = p.ska, e.sv = p.sva;
  e.dk = p.dka, e.dv = p.dva, e.sdk = p.sdka, e.sdv = p.sdva;
  e.ka = e.va = nullptr;
  e.dka = e.dva = nullptr;
  return e;
}

class Sm90Family final : public KernelFamily {
 public:
  Family id() const override { return Family::kSm90; }
  // Placed boxes (cross-attention, halo shards): Q rows at the query box's origin, K/V boxes at
  // the key box's (TileWalk own_off/walk_off), keys outside the key box zero-filled by the TMA
  // and masked (TileWalk::mask_window). Checked by tests/python/test_cuda_placement.py's sm90
  // tests (cross-attention and random placed problems against SPEC-written masks).
  bool implements_placement() const override { return true; }

  Status can_implement(const Call& call) const override {
    const Geometry& g = call.g;
    if (call.device.major != 9)
      return Status::Unsupported("needs an sm90 (Hopper) device (this one is sm" + std::to_string(call.device.major) +
                                 std::to_string(call.device.minor) + ")");
    if (call.dtype != DType::kFloat16 && call.dtype != DType::kBFloat16)
      return Status::Unsupported(std::string("sm90 kernels take float16/bfloat16 (got ") + dtype_name(call.dtype) +
                                 ")");
    const Role role = call.backward ? Role::kBackwardDkdv : Role::kForward;
    const char* what = call.backward ? "the sm90 backward" : "the sm90 forward";
    if (call.backward) {
      if (backward_switch() == BackwardSwitch::kOff)
        return Status::Unsupported("the sm90 backward is switched off by NATTN_SM90_BACKWARD=0");
    }
    const int64_t hd = g.head_dim > g.head_dim_v ? g.head_dim : g.head_dim_v;
    const int padded = padded_head_dim(Family::kSm90, role, int(hd));
    if (g.head_dim % 8 != 0 || g.head_dim_v % 8 != 0 || padded == 0)
      return Status::Unsupported(std::string(what) + " takes head dims that are multiples of 8 up to " +
                                 std::to_string(max_head_dim(Family::kSm90, role)) + " (got " +
                                 std::to_string(g.head_dim) + ", " + std::to_string(g.head_dim_v) + ")");
    // Packed or folded heads read the next head's columns as padding: the forward's products
    // contract over D only through Q K^T; the backward's dP^T = V dO^T contracts over Dv too.
    if ((g.extent[2] > 1 || g.key_extent[2] > 1) && g.batch > 1 &&
        (g.head_dim != padded || (call.backward && g.head_dim_v != padded)))
      return Status::Unsupported("a 3-D grid with batch > 1 leaves no spare TMA dimension for zero-filling head dims " +
                                 std::to_string(g.head_dim) + ", " + std::to_string(g.head_dim_v) + " up to " +
                                 std::to_string(padded) + " (" + what +
                                 " pads head dims with the TMA only for 1-D/2-D grids or batch 1)");
    for (int a = 0; a < 3; ++a) {
      if (g.dilation[a] > 8)
        return Status::Unsupported(std::string(what) + " takes dilation <= 8 (TMA element strides; got " +
                                   std::to_string(g.dilation[a]) + ")");
      if (g.extent[a] >= (int64_t(1) << 31) || g.key_extent[a] >= (int64_t(1) << 31) ||
          g.global[a] >= (int64_t(1) << 31))
        return Status::Unsupported(std::string(what) + " needs extents < 2^31");
    }
    if (g.num_additional >= (int64_t(1) << 31))
      return Status::Unsupported("the sm90 forward needs fewer than 2^31 additional keys");
    for (const Role r : call.backward ? backward_roles(call) : std::vector<Role>{Role::kForward}) {
      int id = -1;
      NATTN_RETURN_IF_ERROR(config_for(call, r, &id));
      const Launcher* l = sm90::launcher(id);
      if (l->smem > call.device.smem_optin)
        return Status::Unsupported(std::string("the sm90 ") + role_name(r) + " kernel (config " + std::to_string(id) +
                                   ") needs " + std::to_string(l->smem) +
                                   " bytes of shared memory; this device allows " +
                                   std::to_string(call.device.smem_optin) + smem_limit_note());
    }
    return Status::Ok();
  }

  // TMA reads rows with a unit-stride head dim from a 16-byte aligned base, every other stride a
  // multiple of 16 bytes, and heads in one of the MapMode layouts.
  Status reads_in_place(const TensorView& t) const override {
    if (reinterpret_cast<uintptr_t>(t.data) % 16 != 0) return Status::Unsupported("its rows are not 16-byte aligned");
    if (map_mode(t) < 0)
      return Status::Unsupported(
          "TMA boxes need a unit-stride head dim and strides that are multiples of 8 elements; with a 3-D grid "
          "and batch > 1 also heads packed with the head dim or folded with the batch (batch stride = heads x "
          "head stride)");
    return Status::Ok();
  }

  Status plan(const Call& call, std::vector<KernelLaunch>* kernels) const override {
    kernels->clear();
    if (call.backward) return plan_backward(call, kernels);
    const Geometry& g = call.g;
    KernelLaunch k;
    NATTN_RETURN_IF_ERROR(plan_boxes(call, Role::kForward, &k));
    // Work items: own boxes x heads x batch, one CTA each or persistent CTAs (one per SM: the
    // shared memory holds one CTA). walked_tiles counts every dilation group's boxes.
    const int64_t items = k.tiling.neighborhood_ctas * g.heads_q * g.batch;
    if (items > INT32_MAX)
      return Status::Unsupported("too many work items for one launch (" + std::to_string(items) + ")");
    const int64_t sms = call.device.sm_count > 0 ? call.device.sm_count : 1;
    const bool persistent = persistent_pays(k.walked_tiles / double(k.tiling.neighborhood_ctas));
    k.grid[0] = unsigned(persistent && items > sms ? sms : items);
    kernels->push_back(k);
    return Status::Ok();
  }

  Status forward(const std::vector<KernelLaunch>& kernels, const ForwardParams& p, DType dtype,
                 cudaStream_t s) const override {
    const KernelLaunch& k = kernels[0];
    sm90::ForwardArgs args;
    args.p = p;
    args.tl = k.tiling;
    args.items = int(k.tiling.neighborhood_ctas * p.g.heads_q * p.g.batch);
    args.longest_first = p.g.causal[0] || p.g.causal[1] || p.g.causal[2];
    const int padded = kKernelConfigs[k.config_id].head_dim;
    // Query boxes are owned, key boxes walked; additional keys in tiles of BN.
    const MapGrids m = map_grids(p.g, k.tiling.own_shift, k.tiling.walk_shift, kKernelConfigs[k.config_id].block_kv);
    const bool extras = p.g.num_additional > 0;
    const MapSource src[sm90::kNumMaps] = {
        {p.q, p.sq, m.queries, p.g.heads_q, p.g.head_dim, "q"},
        {p.k, p.sk, m.keys, p.g.heads_kv, p.g.head_dim, "k"},
        {p.v, p.sv, m.keys, p.g.heads_kv, p.g.head_dim_v, "v"},
        {extras ? p.ka : nullptr, p.ska, m.extra, p.g.heads_kv, p.g.head_dim, "additional_keys"},
        {extras ? p.va : nullptr, p.sva, m.extra, p.g.heads_kv, p.g.head_dim_v, "additional_values"},
    };
    {
      HostPhaseTimer phase(HostPhase::kEncodeMaps);  // a launch's maps, one phase
      NATTN_RETURN_IF_ERROR(
          encode_maps(src, sm90::kNumMaps, dtype, p.g.batch, padded, args.tma, args.mode, args.head_cols));
    }
    return launch(k, &args, s);
  }

  // Deterministic: the dQ kernel, then the dK/dV kernel (independent: both read the forward's
  // lse and the Delta pre-pass; neither reads the other's output). Fast: the dK/dV kernel adding
  // dQ partials into the workspace (which the Delta pre-pass zeroed, in the same pass over the
  // rows), then the conversion to dQ. With additional keys the dQ kernel walks them after the
  // neighborhood boxes, and the dK/dV kernel runs once more over them
  // (additional_keys_geometry), adding its dQ partials in fast mode.
  // Ordered (deterministic fast kernel): the counters are zeroed first, in the call's scratch
  // after the dQ workspace; the additional keys' launch counts in its own.
  Status backward(const std::vector<KernelLaunch>& kernels, const BackwardParams& p, DType dtype,
                  cudaStream_t s) const override {
    int* counters = nullptr;
    int64_t neighborhood_counters = 0;
    for (const KernelLaunch& k : kernels)
      if (k.ordered_dq && !k.additional_keys) {
        counters = reinterpret_cast<int*>(reinterpret_cast<char*>(p.dq_accum) + order_offset(p.g));
        neighborhood_counters = order_counters(k, p.g);
        const size_t bytes = k.scratch - order_offset(p.g);
        NATTN_RETURN_IF_ERROR(check(cudaMemsetAsync(counters, 0, bytes, s), "sm90: zeroing the ordered dQ counters"));
      }
    for (const KernelLaunch& k : kernels) {
      if (k.role == Role::kDqConvert) {
        NATTN_RETURN_IF_ERROR(run_dq_convert(p, dtype, s));
        continue;
      }
      // The additional keys' counters follow the neighborhood launch's.
      int* const order = k.ordered_dq ? counters + (k.additional_keys ? neighborhood_counters : 0) : nullptr;
      NATTN_RETURN_IF_ERROR(backward_kernel(k, k.additional_keys ? additional_keys_params(p) : p, dtype, s, order));
    }
    return Status::Ok();
  }

 private:
  // One backward kernel: its tensor maps over p's tensors, then the launch.
  static Status backward_kernel(const KernelLaunch& k, const BackwardParams& p, DType dtype, cudaStream_t s,
                                int* order) {
    const bool dq = k.role == Role::kBackwardDq;
    const Geometry& g = p.g;
    sm90::BackwardArgs args;
    args.p = p;
    args.tl = k.tiling;
    if (order != nullptr) {  // the ordered variant (plan_backward: deterministic fast kernel)
      ordered_dq_boxes(g, k.tiling.walk_shift, args.order_boxes);
      args.dq_order = order;
    }
    args.early_steps = backward_early_steps();
    args.dq_overlap = dq_overlap();
    int64_t boxes = 0, heads = 0;
    if (const int64_t items = persistent_items(k, g, &boxes, &heads); items > 0) {  // the persistent variant
      args.items = int(items);
      args.boxes = int(boxes);
      args.heads = int(heads);
    }
    // Own boxes (queries for dQ, keys for dK/dV) in the own shift, walked boxes in the walk
    // shift; the dQ kernel's extra steps read the additional keys in tiles of its walked rows.
    const MapGrids m = map_grids(g, dq ? k.tiling.own_shift : k.tiling.walk_shift,
                                 dq ? k.tiling.walk_shift : k.tiling.own_shift, kKernelConfigs[k.config_id].block_kv);
    const MapGrid &queries = m.queries, &keys = m.keys, &extra = m.extra;
    const bool extras = dq && g.num_additional > 0;
    const MapSource q{p.q, p.sq, queries, g.heads_q, g.head_dim, "q"};
    const MapSource dout{p.dout, p.sdo, queries, g.heads_q, g.head_dim_v, "dout"};
    const MapSource key{p.k, p.sk, keys, g.heads_kv, g.head_dim, k.additional_keys ? "additional_keys" : "k"};
    const MapSource value{p.v, p.sv, keys, g.heads_kv, g.head_dim_v, k.additional_keys ? "additional_values" : "v"};
    const MapSource extra_key{extras ? p.ka : nullptr, p.ska, extra, g.heads_kv, g.head_dim, "additional_keys"};
    const MapSource extra_value{extras ? p.va : nullptr, p.sva, extra, g.heads_kv, g.head_dim_v, "additional_values"};
    // (kWalkA, kWalkB, kOwnA, kOwnB, kExtraA, kExtraB)
    const MapSource src[sm90::kDqAccum] = {dq ? key : q,      dq ? value : dout, dq ? q : key,
                                           dq ? dout : value, extra_key,         extra_value};
    const int padded = kKernelConfigs[k.config_id].head_dim;
    // The fast kernel's float32 dQ workspace ([B, X.., Hq, dq_accum_cols] contiguous), in boxes of
    // the walked queries x 32 columns (128-byte rows) for its TMA reduce-adds.
    const bool fast = k.role == Role::kBackwardDkdvDq;
    const MapSource accum{fast ? p.dq_accum : nullptr, p.sdq_accum, queries, g.heads_q, dq_accum_cols(g), "dq_accum"};
    // The dK/dV kernel's walked queries' lse2 and Delta: the Delta pre-pass's row workspace
    // ([B, X.., Hq, kRowColumns] contiguous), in the walked boxes x kRowColumns floats (16 bytes).
    const MapSource rows{dq ? nullptr : p.rows, p.srows, queries, g.heads_q, kRowColumns, "delta_rows"};
    {
      HostPhaseTimer phase(HostPhase::kEncodeMaps);  // a launch's maps, one phase
      NATTN_RETURN_IF_ERROR(
          encode_maps(src, sm90::kDqAccum, dtype, g.batch, padded, args.tma, args.mode, args.head_cols));
      NATTN_RETURN_IF_ERROR(encode_maps(&accum, 1, DType::kFloat32, g.batch, 32, args.tma + sm90::kDqAccum,
                                        args.mode + sm90::kDqAccum, args.head_cols + sm90::kDqAccum));
      NATTN_RETURN_IF_ERROR(encode_maps(&rows, 1, DType::kFloat32, g.batch, kRowColumns, args.tma + sm90::kWalkRows,
                                        args.mode + sm90::kWalkRows, args.head_cols + sm90::kWalkRows));
    }
    return launch(k, &args, s);
  }

  // A kernel of role r: its row, its boxes (forced for the forward and dQ, else chosen for the
  // fewest walked tiles within the TMA caps), tiling, threads and shared memory; the caller
  // sets the grid.
  static Status plan_boxes(const Call& call, Role r, KernelLaunch* k) {
    const Geometry& g = call.g;
    const bool keys_owned = r == Role::kBackwardDkdv || r == Role::kBackwardDkdvDq;
    const bool forced = !keys_owned && tiles_forced(call.choice);
    k->role = r;
    NATTN_RETURN_IF_ERROR(config_for(call, r, &k->config_id));
    const KernelConfig& c = kKernelConfigs[k->config_id];
    const Launcher* l = sm90::launcher(k->config_id);
    const std::array<int, 3> caps = box_caps(g);
    TileShapes shapes;
    if (forced) {
      NATTN_RETURN_IF_ERROR(forced_tiles(call.choice, call.problem, c.block_q, c.block_kv, &shapes));
    } else {
      shapes = choose_tile_shapes(call.problem, c.block_q, c.block_kv,
                                  keys_owned ? TileRole::kKeysOwned : TileRole::kQueriesOwned, caps);
      if (shapes.key_tiles < 0)
        return Status::Unsupported("no box of " + std::to_string(c.block_q) + " queries and " +
                                   std::to_string(c.block_kv) +
                                   " keys fits the TMA limit of 256 elements per axis (box x dilation)");
    }
    for (int a = 0; a < 3; ++a)
      if (shapes.q[a] > caps[a] || shapes.k[a] > caps[a])
        return Status::Invalid("choice.own_tile/walk_tile = " + std::to_string(shapes.q[a]) + "/" +
                               std::to_string(shapes.k[a]) + " on axis " + std::to_string(a) +
                               " is invalid for sm90: a TMA box spans at most 256 elements (box x dilation " +
                               std::to_string(g.dilation[a]) + ")");
    NATTN_RETURN_IF_ERROR(check_axis3_boxes(g, shapes, forced));
    k->own = keys_owned ? shapes.k : shapes.q;
    k->walk = keys_owned ? shapes.q : shapes.k;
    k->walked_tiles = shapes.key_tiles;
    k->tiling = make_tiling(g, k->own, k->walk, keys_owned);
    k->threads = l->threads;
    k->smem = l->smem;
    return l->prepare();
  }

  // The backward's kernel roles: the fast mode's one kernel (dK and dV written once, dQ partials
  // added into a float32 workspace; 5 products per attended pair) or the deterministic dQ and
  // dK/dV kernels (every gradient row written once; 7 products). Deterministic calls take the
  // pair. Others take the fast kernel where it has a row (head dims up to 128), except where the
  // pair runs variants the fast kernel lacks and which measured faster there: persistent CTAs on
  // walks of at most 16 boxes per item (NAT-sized windows) and two CTAs per SM (the head-dim-32
  // rows: NAT stages 1.1-1.25x faster as a pair, tenth session). Measured on the H100
  // (2026-12-05/06, twelfth session, forward+backward): the fast kernel won on the dense case and
  // every 2-D/3-D anchor (1.04-1.18x, bench/results/2026-12-05-h100-twelfth-anchors-bwd.md), and,
  // once its CTA set-up took two 32-bit searches instead of four 64-bit ones, on the 1-D anchors
  // too, where the pair runs persistent (1-D walks of up to 48 boxes): 1d-32k 406 against 368
  // useful TFLOP/s, 1d-32k-s256 435 against 397 (2026-12-05-h100-twelfth-anchors-1d.md). A forced
  // row of either mode, or NATTN_SM90_BACKWARD=fast / pair, decides instead.
  // Deterministic calls take the pair unless a fast row is forced or NATTN_SM90_DETERMINISTIC=
  // ordered: then the fast kernel's ordered variant (its dQ adds in a fixed order per query box:
  // kernel/fna_backward_dkdv.cuh, cuda/common/ordered_dq.h; 5 products per pair against the pair's
  // 7), which plan_backward marks ordered. On the H100 (2026-12-06, thirteenth session, backward
  // alone, interleaved) it measured slower than the pair: dense 8k d64 5.76 against 5.02 ms, d128
  // 8.34 against 6.45, cosmos-3d-s 127 against 66 (the default's fast kernel: 3.86, 6.17, 62).
  // With a kv head's CTAs interleaved with three other heads' in launch order it still took
  // 1.2-1.7x the pair's time (fourteenth session: dense d128 8.2-8.3 against 6.4 ms); what its
  // consumers do that the fast kernel's do not is wait, every step, for a counter and for their
  // last adds' completion. A dQ writer that moves both to a producer thread (FlashAttention-3's)
  // is built on branch ordered-dq-writer, not yet run on a GPU (docs/design/hopper_backward.md,
  // "Fourteenth session").
  static std::vector<Role> backward_roles(const Call& call) {
    const std::vector<Role> pair{Role::kBackwardDq, Role::kBackwardDkdv}, fast{Role::kBackwardDkdvDq};
    if (forced_fast_row(call.choice) >= 0) return fast;
    if (pair_row_forced(call.choice)) return pair;
    const int64_t hd = call.g.head_dim > call.g.head_dim_v ? call.g.head_dim : call.g.head_dim_v;
    if (padded_head_dim(Family::kSm90, Role::kBackwardDkdvDq, int(hd)) <= 0) return pair;
    if (call.deterministic) return deterministic_switch() == DeterministicSwitch::kOrdered ? fast : pair;
    switch (backward_switch()) {
      case BackwardSwitch::kFast: return fast;
      case BackwardSwitch::kPair: return pair;
      default: return pair_runs_its_own_variants(call) ? pair : fast;
    }
  }

  // The ordered adds' counters of a fast launch k (cuda/common/ordered_dq.h) over geometry g
  // (the additional keys' launch: their geometry), and where in the plan's scratch they start:
  // after the dQ workspace, the neighborhood launch's counters, then the additional keys'.
  static int64_t order_counters(const KernelLaunch& k, const Geometry& g) {
    int boxes[3];
    return ordered_dq_boxes(g, k.tiling.walk_shift, boxes);
  }
  static size_t order_offset(const Geometry& g) { return (dq_accum_bytes(g) + 255) / 256 * 256; }

  // Whether the deterministic pair would run two CTAs per SM, or persistent CTAs on a walk of at
  // most kShortWalk boxes per item, for this call.
  static bool pair_runs_its_own_variants(const Call& call) {
    for (const Role r : {Role::kBackwardDq, Role::kBackwardDkdv}) {
      KernelLaunch k;
      if (!plan_boxes(call, r, &k).ok()) return false;  // the pair's own plan reports why
      if (kKernelConfigs[k.config_id].ctas_per_sm > 1) return true;
      int64_t boxes = 0, heads = 0;
      if (persistent_items(k, call.g, &boxes, &heads) > 0 && walk_per_item(k) <= kShortWalk) return true;
    }
    return false;
  }

  // dQ owns boxes of 128 queries and walks boxes of 64 keys; dK/dV owns boxes of 128 keys and
  // walks boxes of 64 queries. One CTA per own box, kv head (dK/dV) or head (dQ), and batch.
  static Status plan_backward(const Call& call, std::vector<KernelLaunch>* kernels) {
    const Geometry& g = call.g;
    for (const Role r : backward_roles(call)) {
      KernelLaunch k;
      NATTN_RETURN_IF_ERROR(plan_boxes(call, r, &k));
      if (k.tiling.neighborhood_ctas > INT32_MAX)
        return Status::Unsupported("too many boxes for one launch (" + std::to_string(k.tiling.neighborhood_ctas) +
                                   ")");
      // dK/dV: the column parts of a key box (head dim 256) are CTAs of their own.
      const int parts = r == Role::kBackwardDq ? 1 : dkdv_column_split(kKernelConfigs[k.config_id].head_dim);
      if (k.tiling.neighborhood_ctas * parts > INT32_MAX)
        return Status::Unsupported("too many boxes for one launch (" + std::to_string(k.tiling.neighborhood_ctas) +
                                   " x " + std::to_string(parts) + " column parts)");
      k.grid[0] = unsigned(k.tiling.neighborhood_ctas * parts);
      k.grid[1] = unsigned(r == Role::kBackwardDq ? g.heads_q : g.heads_kv);
      k.grid[2] = unsigned(g.batch);
      if (r == Role::kBackwardDkdvDq) k.scratch = dq_accum_bytes(g);
      const bool extras = r != Role::kBackwardDq && g.num_additional > 0;
      // Deterministic: the fast kernel's ordered variant, its counters after the dQ workspace.
      if (r == Role::kBackwardDkdvDq && call.deterministic) {
        k.ordered_dq = true;
        int64_t counters = order_counters(k, g);
        if (extras) counters += order_counters(additional_keys_launch(g, k), additional_keys_geometry(g));
        if (counters > INT32_MAX)
          return Status::Unsupported("too many query boxes for the ordered dQ adds' counters (" +
                                     std::to_string(counters) + ")");
        k.scratch = order_offset(g) + size_t(counters) * sizeof(int);
      }
      KernelLaunch extra;
      if (extras) extra = additional_keys_launch(g, k);
      size_persistent(call, g, &k);
      kernels->push_back(k);
      if (extras) {
        size_persistent(call, additional_keys_geometry(g), &extra);
        kernels->push_back(extra);
      }
    }
    if (kernels->back().role == Role::kBackwardDkdvDq) {  // then dQ from the partial sums
      KernelLaunch convert;
      convert.role = Role::kDqConvert;
      kernels->push_back(convert);
    }
    return Status::Ok();
  }

  // A launch that runs persistent (persistent_items) gets at most one CTA per SM (the shared memory holds one CTA),
  // each running items blockIdx.x, + gridDim.x, ...; its note in the plan says so. Others keep their grid.
  static void size_persistent(const Call& call, const Geometry& g, KernelLaunch* k) {
    int64_t boxes = 0, heads = 0;
    const int64_t items = persistent_items(*k, g, &boxes, &heads);
    if (items == 0) return;
    const int64_t sms = call.device.sm_count > 0 ? call.device.sm_count : 1;
    k->grid[0] = unsigned(items > sms ? sms : items);
    k->grid[1] = k->grid[2] = 1;
    k->smem = sm90::launcher(k->config_id)->persistent_smem;  // the persistent kernel's
    k->note = std::string(role_name(k->role)) + (k->additional_keys ? "_additional" : "") +
              ": persistent CTAs (short walks; NATTN_SM90_BWD_PERSISTENT=0 turns them off)";
  }

  // The dK/dV kernel (row and role of the neighborhood's launch nb) over the additional keys:
  // own boxes of 128 of them along axis 0, walking every query box of the grid in the
  // neighborhood launch's walked box shape (a box that passed the TMA caps with the call's
  // dilation passes them with dilation 1). One CTA per key box, kv head and batch.
  static KernelLaunch additional_keys_launch(const Geometry& g, const KernelLaunch& nb) {
    KernelLaunch k = nb;
    k.additional_keys = true;
    k.own = {kKernelConfigs[nb.config_id].block_kv, 1, 1};
    k.tiling = make_tiling(additional_keys_geometry(g), k.own, k.walk, true);
    // Walked boxes per (batch, head): every key box walks every query box.
    k.walked_tiles = double(k.tiling.neighborhood_ctas);
    for (int a = 0; a < g.rank; ++a) k.walked_tiles *= double((g.extent[a] + k.walk[a] - 1) / k.walk[a]);
    k.grid[0] = unsigned(k.tiling.neighborhood_ctas * dkdv_column_split(kKernelConfigs[nb.config_id].head_dim));
    return k;
  }

  // The row of a role: forced by the choice, or the one of the padded head dim (the forward's
  // ping-pong rows where they pay).
  static Status config_for(const Call& call, Role r, int* id) {
    NATTN_RETURN_IF_ERROR(forced_config(call.choice, Family::kSm90, r, id));
    const Elem e = call.dtype == DType::kBFloat16 ? Elem::kBFloat16 : Elem::kHalf;
    const int64_t hd = call.g.head_dim > call.g.head_dim_v ? call.g.head_dim : call.g.head_dim_v;
    const int padded = padded_head_dim(Family::kSm90, r, int(hd));
    if (*id >= 0) {
      const KernelConfig& c = kKernelConfigs[*id];
      if (c.elem != e || c.head_dim != padded)
        return Status::Invalid("choice.config_ids has " + std::to_string(*id) +
                               ", which is invalid for this call: it is a " + elem_name(c.elem) + " row of head dim " +
                               std::to_string(c.head_dim) + "; the call is " + dtype_name(call.dtype) +
                               " with max(head_dim, head_dim_v) = " + std::to_string(hd) + ", padded to " +
                               std::to_string(padded));
    } else {
      const bool pingpong = r == Role::kForward && pingpong_pays(call.problem, padded);
      // A two-CTAs-per-SM backward row where one is built for the call (head dim 32) unless
      // its switch says 0; a polynomial-exponential forward row where its switch asks for one;
      // the plain row otherwise.
      int opt_in = -1;
      if (r == Role::kForward && poly_exp_requested())
        opt_in = find_config(Family::kSm90, r, e, padded, pingpong, true);
      else if ((r == Role::kBackwardDq || r == Role::kBackwardDkdv) && two_ctas_allowed())
        opt_in = find_config(Family::kSm90, r, e, padded, false, false, 2);
      *id = opt_in >= 0 && sm90::launcher(opt_in) != nullptr ? opt_in
                                                             : find_config(Family::kSm90, r, e, padded, pingpong);
    }
    if (*id < 0 || sm90::launcher(*id) == nullptr)
      return Status::Unsupported(std::string("the sm90 ") + role_name(r) + " configuration for head dim " +
                                 std::to_string(hd) + " is not built into this library (CMake NATTN_HEAD_DIMS)");
    return Status::Ok();
  }
};

}  // namespace

const KernelFamily& sm90_family() {
  static const Sm90Family f;
  return f;
}

}  // namespace nattn::cuda
