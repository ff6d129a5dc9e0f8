// Layer: tests. Every row of the kernel configuration table (nattn::kernel_configs(): fused
// rows of every family and the generic rows), forced through Options::choice onto random
// problems whose padded head dim maps to that row, against the CPU reference backend (float64)
// on the same inputs.
// Forward rows run forward; a backward row runs backward with its dQ + dK/dV pair forced.
// Test names carry the row: Rows/CudaConfigRow.MatchesReference/c05_sm80_forward_bfloat16_hd128,
// so e.g. --gtest_filter='*sm80_backward*hd64*' picks a subset.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "device_tensor.h"
#include "nattn/nattn.h"

namespace nattn_test {
namespace {

using nattn::DType;
using nattn::KernelConfigInfo;

// Ids of the rows this suite covers: every row of the table (built or not: an unbuilt row, or
// one whose family needs another device, is reported as skipped).
std::vector<int> covered_rows() {
  std::vector<int> ids;
  for (const KernelConfigInfo& r : nattn::kernel_configs()) ids.push_back(r.id);
  return ids;
}

// Why this device cannot run a family's kernels ("" when it can): sm80 rows need compute
// capability 8.0 or newer, sm90 rows (sm_90a instructions) a 9.x device.
std::string device_lacks(const std::string& family) {
  const int cc = cuda_compute_capability();
  if (family == "sm80" && cc < 80) return "sm80 rows need compute capability 8.0 (device: " + std::to_string(cc) + ")";
  if (family == "sm90" && cc / 10 != 9) return "sm90 rows need an sm90 device (device: " + std::to_string(cc) + ")";
  return "";
}

KernelConfigInfo row_of(int id) {
  for (const KernelConfigInfo& r : nattn::kernel_configs())
    if (r.id == id) return r;
  return {};
}

std::string row_name(const ::testing::TestParamInfo<int>& info) {
  const KernelConfigInfo r = row_of(info.param);
  char id[8];
  std::snprintf(id, sizeof id, "c%02d", r.id);
  return std::string(id) + "_" + r.family + "_" + r.role + "_" + r.dtype + "_hd" +
         (r.head_dim > 0 ? std::to_string(r.head_dim) : std::string("any"));
}

bool is_backward(const KernelConfigInfo& r) {
  return r.role == "backward_dq" || r.role == "backward_dkdv" || r.role == "backward_dkdv_dq";
}
// The fast backward's one kernel (dK, dV and dQ partial sums), run alone.
bool is_fast_backward(const KernelConfigInfo& r) { return r.role == "backward_dkdv_dq"; }

// The backward pair of a backward row: the dQ and dK/dV rows of the same family, dtype and head
// dim, and the same position among them (a head dim may have a row per shared-memory size:
// the first dQ row pairs with the first dK/dV row, the 99 KB ones with each other).
std::map<std::string, int> forced_rows(const KernelConfigInfo& row) {
  std::map<std::string, int> ids{{row.role, row.id}};
  if (!is_backward(row) || is_fast_backward(row)) return ids;
  const std::string other = row.role == "backward_dq" ? "backward_dkdv" : "backward_dq";
  const auto siblings = [&](const std::string& role) {
    std::vector<int> found;
    for (const KernelConfigInfo& r : nattn::kernel_configs())
      if (r.family == row.family && r.role == role && r.dtype == row.dtype && r.head_dim == row.head_dim)
        found.push_back(r.id);
    return found;
  };
  const std::vector<int> mine = siblings(row.role), theirs = siblings(other);
  const size_t at = size_t(std::find(mine.begin(), mine.end(), row.id) - mine.begin());
  if (!theirs.empty()) ids[other] = theirs[std::min(at, theirs.size() - 1)];
  return ids;
}

// NATTN_SM90_BACKWARD=0 (a developer switch for A/B timing) hands the backward to sm80.
bool sm90_backward_on() {
  const char* e = std::getenv("NATTN_SM90_BACKWARD");
  return e == nullptr || std::string(e) != "0";
}

// The largest head dim of the same family/role/dtype below the row's (0 if none): max(D, Dv)
// must lie above it for the row to be the one the padded head dim maps to.
int next_smaller_head_dim(const KernelConfigInfo& row) {
  int best = 0;
  for (const KernelConfigInfo& r : nattn::kernel_configs())
    if (r.family == row.family && r.role == row.role && r.dtype == row.dtype && r.head_dim < row.head_dim)
      best = std::max(best, r.head_dim);
  return best;
}

DType row_dtype(const KernelConfigInfo& row, Rng& rng) {
  if (row.dtype == "float16") return DType::kFloat16;
  if (row.dtype == "bfloat16") return DType::kBFloat16;
  // Generic rows take any dtype.
  return rng.pick(std::vector<DType>{DType::kFloat16, DType::kBFloat16, DType::kFloat32, DType::kFloat64});
}

// A random power-of-two box of `rows` positions over the first `rank` axes (1 past them).
std::array<int, 3> random_tile(Rng& rng, int rank, int rows) {
  std::array<int, 3> t{1, 1, 1};
  for (int r = rows; r > 1; r /= 2) t[size_t(rng.integer(0, rank - 1))] *= 2;
  return t;
}

nattn::Problem random_problem(const KernelConfigInfo& row, Rng& rng) {
  nattn::Problem p;
  p.rank = int(rng.integer(1, 3));
  const int64_t max_kernel = p.rank == 1 ? 24 : p.rank == 2 ? 9 : 5;
  const int64_t max_extra = p.rank == 1 ? 200 : p.rank == 2 ? 14 : 5;
  for (int a = 0; a < p.rank; ++a) {
    p.window.dilation[a] = rng.integer(1, p.rank == 1 ? 3 : 2);
    p.window.kernel_size[a] = rng.integer(2, max_kernel);
    p.window.stride[a] = rng.integer(1, p.window.kernel_size[a]);
    p.window.is_causal[a] = rng.coin(0.25);
    p.extent[a] = p.window.kernel_size[a] * p.window.dilation[a] + rng.integer(0, max_extra);
  }
  p.batch = rng.integer(1, 2);
  p.heads_kv = rng.integer(1, 2);
  p.heads_q = p.heads_kv * rng.integer(1, 3);  // grouped-query heads
  p.num_additional = rng.coin(0.4) ? rng.integer(1, 70) : 0;
  if (rng.coin(0.2)) p.scale = rng.uniform(0.05, 0.5);
  if (row.family == "sm90") {
    // The sm90 forward: a TMA box of 128 query rows x dilation within 256 elements on a 1-D grid.
    if (p.rank == 1) p.window.dilation[0] = std::min<int64_t>(p.window.dilation[0], 2);
    p.extent[0] = std::max(p.extent[0], p.window.kernel_size[0] * p.window.dilation[0]);
  }
  if (row.head_dim > 0) {
    // Fused rows: multiples of 8 with max(D, Dv) in (next smaller row, row].
    const int lo = next_smaller_head_dim(row) / 8 + 1, hi = row.head_dim / 8;
    const int64_t padded = 8 * rng.integer(lo, hi);
    const int64_t other = rng.coin() ? padded : 8 * rng.integer(1, padded / 8);
    const bool d_is_max = rng.coin();
    p.head_dim = d_is_max ? padded : other;
    p.head_dim_v = d_is_max ? other : padded;
    // sm90: a 3-D grid with batch > 1 has no spare TMA dimension to zero-fill D up to the row's.
    if (row.family == "sm90" && p.rank == 3 && p.batch > 1) {
      p.head_dim = row.head_dim;
      if (is_backward(row)) p.head_dim_v = row.head_dim;  // (the backward contracts over Dv too)
    }
  } else {
    p.head_dim = rng.integer(1, 48);
    p.head_dim_v = rng.coin() ? p.head_dim : rng.integer(1, 48);
  }
  return p;
}

class CudaConfigRow : public CudaTest, public ::testing::WithParamInterface<int> {};

TEST_P(CudaConfigRow, MatchesReference) {
  const KernelConfigInfo row = row_of(GetParam());
  if (!row.built) GTEST_SKIP() << "configuration " << row.id << " is not built into this library (NATTN_HEAD_DIMS)";
  const std::string lacks = device_lacks(row.family);
  if (!lacks.empty()) GTEST_SKIP() << lacks;
  const std::map<std::string, int> forced = forced_rows(row);
  const bool backward = is_backward(row);
  if (backward && row.family == "sm90" && !sm90_backward_on())
    GTEST_SKIP() << "NATTN_SM90_BACKWARD=0 switches the sm90 backward off";
  const bool fast = is_fast_backward(row);
  if (backward && !fast) {
    ASSERT_EQ(forced.size(), 2u) << "no dQ + dK/dV pair for row " << row.id;
  }
  // The row whose blocks a forced own/walk tile must match: forward, or dQ (dK/dV takes no tile).
  const KernelConfigInfo tiled = row_of(backward && !fast ? forced.at("backward_dq") : row.id);

  for (int trial = 0; trial < 5; ++trial) {
    SCOPED_TRACE("trial " + std::to_string(trial));
    const nattn::Problem p = random_problem(row, rng);
    const DType dtype = row_dtype(row, rng);
    const bool strided = rng.coin(0.25);
    nattn::Options o = cuda_options();
    o.choice.family = row.family;
    for (const auto& [role, id] : forced) o.choice.config_ids.push_back(id);
    // Sometimes force the forward/dQ box shapes too (sm80 rows: generic has no tiles).
    const bool force_tiles = row.family == "sm80" && !fast && rng.coin(0.33);
    if (force_tiles) {
      o.choice.own_tile = random_tile(rng, p.rank, tiled.block_q);
      o.choice.walk_tile = random_tile(rng, p.rank, tiled.block_kv);
    }
    SCOPED_TRACE(describe_problem(p) + ", " + nattn::dtype_name(dtype) + (strided ? ", strided" : "") +
                 (force_tiles ? ", tiles forced" : ""));

    nattn::Plan plan;
    nattn::Status s;
    if (backward) {
      DeviceBackward c = make_device_backward(p, dtype, strided, rng.coin(0.33), rng);
      s = nattn::explain_backward(p, c.views(), o, &plan);
      if (s.code() == nattn::StatusCode::kUnsupported && s.message().find("shared memory") != std::string::npos)
        GTEST_SKIP() << s.message();
      ASSERT_TRUE(s.ok()) << s.message();
      s = nattn::backward(p, c.views(), o);
      ASSERT_TRUE(s.ok()) << s.message();
      ASSERT_TRUE(device_synchronized());
      expect_backward_matches_reference(c);
    } else {
      DeviceForward c = make_device_forward(p, dtype, strided, rng.coin(0.75), rng);
      s = nattn::explain_forward(p, c.views(), o, &plan);
      if (s.code() == nattn::StatusCode::kUnsupported && s.message().find("shared memory") != std::string::npos)
        GTEST_SKIP() << s.message();
      ASSERT_TRUE(s.ok()) << s.message();
      s = nattn::forward(p, c.views(), o);
      ASSERT_TRUE(s.ok()) << s.message();
      ASSERT_TRUE(device_synchronized());
      expect_forward_matches_reference(c);
    }

    // The plan ran the forced rows in the row's family.
    SCOPED_TRACE("plan " + plan.to_json());
    EXPECT_EQ(plan.backend, "cuda");
    EXPECT_EQ(plan.family, row.family);
    std::map<std::string, int> seen;
    const std::string suffix = "_additional";  // sm90: the dK/dV kernel's pass over the additional keys
    for (const nattn::PlannedKernel& k : plan.kernels) {
      const bool extra =
          k.role.size() > suffix.size() && k.role.compare(k.role.size() - suffix.size(), suffix.size(), suffix) == 0;
      const std::string role = extra ? k.role.substr(0, k.role.size() - suffix.size()) : k.role;
      const auto it = forced.find(role);
      if (it == forced.end()) continue;
      EXPECT_EQ(k.config_id, it->second) << "kernel " << k.role;
      ++seen[k.role];
      if (force_tiles && (k.role == "forward" || k.role == "backward_dq")) {
        EXPECT_EQ(k.own_tile, o.choice.own_tile) << "kernel " << k.role;
        EXPECT_EQ(k.walk_tile, o.choice.walk_tile) << "kernel " << k.role;
      }
    }
    for (const auto& [role, id] : forced) EXPECT_EQ(seen[role], 1) << "plan kernels of role " << role;
    if (backward && row.family == "sm90") {  // one more dK/dV launch exactly when there are additional keys
      const std::string extra_role = (fast ? "backward_dkdv_dq" : "backward_dkdv") + suffix;
      EXPECT_EQ(seen[extra_role], p.num_additional > 0 ? 1 : 0) << "plan kernels of role " << extra_role;
    }
    bool chosen = false;
    for (const nattn::FamilyVerdict& f : plan.families) chosen |= f.family == row.family && f.chosen;
    EXPECT_TRUE(chosen) << "the plan's verdicts do not mark " << row.family << " as chosen";
    if (HasFailure()) return;  // one failing problem is enough to report
  }
}

INSTANTIATE_TEST_SUITE_P(Rows, CudaConfigRow, ::testing::ValuesIn(covered_rows()), row_name);

}  // namespace
}  // namespace nattn_test
