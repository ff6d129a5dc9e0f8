// Layer: cuda. A kernel family of the CUDA backend (sm90, sm80, generic): what it can implement
// (and why not), which layouts its kernels read in place, its plan for a call (configuration
// rows, tiles, grids, shared memory) and its launches. The planner (cuda/planner.h) walks the
// families in order and keeps the first that can implement the call.
#pragma once
#include <cuda_runtime.h>

#include <array>
#include <cstddef>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/tile_shapes.h"
#include "cuda/common/configs.h"
#include "cuda/common/params.h"
#include "nattn/api.h"

namespace nattn::cuda {

// Attributes of one device, read once per process.
struct DeviceInfo {
  int index = 0;
  int major = 0, minor = 0;
  int sm_count = 0;
  size_t smem_optin = 0;  // dynamic shared memory a block may opt into (NATTN_SMEM_LIMIT may lower it)
};
const DeviceInfo& device_info(int index);

// Test hook: NATTN_SMEM_LIMIT=<bytes> (read once per process) makes every device report at most
// that much opt-in shared memory per block, so that the rows chosen for consumer GPUs (sm86/sm89:
// 101376 bytes) are planned and run on an H100. A value that is not a positive integer is an
// error of every CUDA plan, naming the variable.
Status smem_limit_hook_status();
// " (lowered by NATTN_SMEM_LIMIT)" while the hook is set, else "": for messages about the limit.
std::string smem_limit_note();

// One planned kernel launch.
struct KernelLaunch;

// A compiled configuration row of a fused family: filled by the family's instantiation files,
// found by row id (each family keeps a table of kNumConfigs launchers; null = not built).
struct Launcher {
  // Sets the kernel's dynamic shared-memory limit on the current device (once per plan).
  Status (*prepare)();
  // params: the family's parameters for the row's role.
  Status (*launch)(const KernelLaunch& k, const void* params, cudaStream_t stream);
  size_t smem;  // bytes of dynamic shared memory: sizeof the kernel's SharedStorage
  int threads;
  // sm90 backward rows with a persistent variant (sm90::has_persistent_backward): its shared
  // memory, which a persistent launch's plan reports; 0 for every other row.
  size_t persistent_smem = 0;
};
struct KernelLaunch {
  int config_id = -1;
  Role role = Role::kForward;
  Tiling tiling;
  unsigned grid[3] = {1, 1, 1};
  int threads = 0;
  size_t smem = 0;
  std::array<int, 3> own{1, 1, 1}, walk{1, 1, 1};
  double walked_tiles = 0;
  std::string note;  // why the row is not the family's first choice ("" when it is): shown in the plan
  // Bytes of float32 scratch the launch shares with the plan's other launches (the fast
  // backward's dQ partial sums, BackwardParams::dq_accum); the planner places it in the workspace.
  size_t scratch = 0;
  // sm90 backward: the dK/dV kernel run over the additional keys (a problem of its own: every
  // query attends them); its role in the explained plan gets the suffix "_additional".
  bool additional_keys = false;
  // sm90 backward: the fast kernel's ordered variant (deterministic mode: its dQ adds in a fixed
  // order, counters in the scratch after the dQ workspace); the explained role gets "_ordered".
  bool ordered_dq = false;
};

// What a family sees of a validated call.
struct Call {
  const Problem& problem;
  const Geometry& g;
  DType dtype;
  bool backward;
  const DeviceInfo& device;
  const KernelChoice& choice;
  bool deterministic = false;  // backward: bitwise reproducible (Options::deterministic)
};

class KernelFamily {
 public:
  virtual ~KernelFamily() = default;
  virtual Family id() const = 0;
  const char* name() const { return family_name(id()); }
  // Ok when the family's kernels compute this call (layouts aside); otherwise why not.
  virtual Status can_implement(const Call& call) const = 0;
  // Whether its kernels read Geometry's placed boxes (Problem::placement: cross-attention,
  // halo shards). The planner refuses placed calls, with the reason, to families that don't.
  virtual bool implements_placement() const { return false; }
  // Ok when its kernels read (or write) this 16-bit tensor in place; otherwise the plan copies it.
  virtual Status reads_in_place(const TensorView& t) const = 0;
  // The launches for a call it can implement, honouring the call's KernelChoice.
  virtual Status plan(const Call& call, std::vector<KernelLaunch>* kernels) const = 0;
  virtual Status forward(const std::vector<KernelLaunch>& kernels, const ForwardParams& p, DType dtype,
                         cudaStream_t stream) const = 0;
  // p.rows holds the Delta pre-pass (run by the backend before this).
  virtual Status backward(const std::vector<KernelLaunch>& kernels, const BackwardParams& p, DType dtype,
                          cudaStream_t stream) const = 0;
};

// A family's launcher of row `id` from its table, which `fill(rows)` (the family's instantiation
// files' registrations) fills once; null when the row is not built.
template <class Fill>
const Launcher* table_launcher(int id, Fill&& fill) {
  struct Table {
    Launcher rows[kNumConfigs] = {};
  };
  static const Table table = [&] {
    Table t;
    fill(t.rows);
    return t;
  }();
  if (id < 0 || id >= kNumConfigs || table.rows[id].launch == nullptr) return nullptr;
  return &table.rows[id];
}

// Fills table[id] for every row of `kFamily` with padded head dim HD from Row<id> (static
// prepare, launch, smem() and kThreads): what a family's instantiation file for HD runs.
template <Family kFamily, int HD, template <int> class Row, int... kIds>
void register_rows(Launcher* table, std::integer_sequence<int, kIds...>) {
  auto one = [&](auto id) {
    constexpr int kId = decltype(id)::value;
    if constexpr (kKernelConfigs[kId].family == kFamily && kKernelConfigs[kId].head_dim == HD)
      table[kId] = Launcher{&Row<kId>::prepare, &Row<kId>::launch, Row<kId>::smem(), Row<kId>::kThreads};
  };
  (one(std::integral_constant<int, kIds>{}), ...);
}

template <Family kFamily, int HD, template <int> class Row>
void register_rows(Launcher* table) {
  register_rows<kFamily, HD, Row>(table, std::make_integer_sequence<int, kNumConfigs>{});
}

// The families, best first.
const std::vector<const KernelFamily*>& kernel_families();

const KernelFamily& sm90_family();
const KernelFamily& sm80_family();
const KernelFamily& generic_family();

// Launch tiling for power-of-two box shapes: `own` is the box each CTA owns (queries for
// forward/dQ, keys for dK/dV: then keys_owned, which sizes the own boxes to the key box of a
// placed problem), `walk` the boxes it walks.
Tiling make_tiling(const Geometry& g, const std::array<int, 3>& own, const std::array<int, 3>& walk,
                   bool keys_owned = false);

// Whether the choice forces tile shapes.
inline bool tiles_forced(const KernelChoice& c) {
  return c.own_tile != std::array<int, 3>{0, 0, 0} || c.walk_tile != std::array<int, 3>{0, 0, 0};
}

// A forced box pair (KernelChoice::own_tile / walk_tile) for kernels that own query boxes of
// block_q rows and walk key boxes of block_kv rows, or an error naming the rule.
Status forced_tiles(const KernelChoice& choice, const Problem& p, int block_q, int block_kv, TileShapes* shapes);

// Whether configuration row `id` is compiled into this library.
bool config_built(int id);

// The configuration rows of a family and role that a forced choice names (or an error naming
// the id and the rule); -1 in *id when the choice names none for this role.
Status forced_config(const KernelChoice& choice, Family family, Role role, int* id);

}  // namespace nattn::cuda
