// Layer: cuda/common. The kernel configuration table: the one source of the fused kernels'
// variants. It drives the explicit instantiation files (cuda/<family>/instantiate/, one per
// head dim), dispatch (a launcher per row id), nattn::kernel_configs() (Python:
// nattn.kernel_configs()) and the tests' parametrisation. Host and device code; no CUDA types.
//
// A row is one kernel: family, role, element type, padded head dim (max(D, Dv) rounds up to
// it), tile rows, warps and pipeline depth. Keep the variant count small: an axis that costs
// little at run time (rank, causal, dilation, grouped heads) is a run-time parameter.
#pragma once

namespace nattn::cuda {

enum class Family : int { kSm90 = 0, kSm80 = 1, kGeneric = 2 };
inline constexpr int kNumFamilies = 3;

// kBackwardDkdvDq: the fast backward's one kernel (dK, dV and float32 dQ partials added into a
// workspace; a convert pass writes dQ), in place of the dQ + dK/dV pair of the deterministic mode.
// kDqConvert is no row's role: the pass after kBackwardDkdvDq (common/dq_convert.h), listed in plans.
enum class Role : int { kForward = 0, kBackwardDq = 1, kBackwardDkdv = 2, kBackwardDkdvDq = 3, kDqConvert = 4 };
inline constexpr int kNumRoles = 4;  // the roles of configuration rows

enum class Elem : int { kHalf = 0, kBFloat16 = 1, kAny = 2 };

struct KernelConfig {
  int id;
  Family family;
  Role role;
  Elem elem;
  int head_dim;  // padded head dim; 0 = any (generic)
  int block_q;   // query rows per tile: owned (forward, dQ) or walked (dK/dV)
  int block_kv;  // key rows per tile: walked (forward, dQ) or owned (dK/dV)
  int warps;
  int stages;             // walked-tile buffers in flight
  bool pingpong = false;  // sm90: the consumer warpgroups take turns issuing their products
  bool poly_exp = false;  // sm90 forward: a quarter of the softmax's 2^x on the FMA units (exp2_poly.h)
  int ctas_per_sm = 1;    // sm90 backward: CTAs resident per SM (launch bounds, setmaxnreg split)
};

namespace config_rows {
using F = Family;
using R = Role;
using E = Elem;

// sm80 forward: 16 query rows per warp keep S and O in registers. Measured on the H100
// (2026-11-26): 128 rows x 8 warps beat 64 x 4 by 1.25-1.33x; 128-key boxes at d128 were 3-10%
// slower than 64 (flux-2d-s16 197 vs 203 TFLOP/s, hunyuan-3d 118 vs 130, img-2d 89 vs 94).
// sm80 backward: dQ owns 128 queries and walks 64-key tiles; dK/dV owns 128 keys and walks
// 64-query tiles (32 at d128, where dK and dV accumulators take 128 registers and 64 spilled).
// sm90 forward: TMA box loads, one producer warp and two consumer warpgroups of 64 query rows
// (12 warps), S = Q K^T from shared memory and O += P V with P from registers (wgmma); K and
// V stages in flight as shared memory allows (4 at d64, 2 at d128). The ping-pong rows make the
// two consumer warpgroups take turns issuing their products; measured on the H100 (2026-11-27,
// bench/results/raw/2026-11-27-h100-families-v{2,3}.md) it is faster where the softmax is heavy
// relative to the products (d64 dense 377 vs 346 TFLOP/s, 1d-32k 438 vs 339, img-2d 190 vs 175)
// and slower on unmasked d128 walks (dense 560 vs 614, hunyuan-3d-s 583 vs 606).
// Head dim 32 has ping-pong rows only (the softmax dominates its tiny products); head dim 256
// walks 64-key tiles (two stages of K and V and one Q buffer fill the shared memory).
// sm90 backward (issue 10): one producer warpgroup (TMA) and two consumer warpgroups of 64 own
// rows. Deterministic mode (the default), two kernels: dK/dV owns 128 keys and walks 64-query
// boxes (S^T, dP^T as SS-wgmma; dV, dK as RS-wgmma); dQ owns 128 queries and walks 64-key boxes
// (S, dP as SS-wgmma; dQ as RS-wgmma): 7 products per pair. Measured 2026-11-28 (H100, fwd+bwd
// useful TFLOP/s, bench/results/2026-11-28-h100-sm90-backward.md): flux-2d-s16 378, flux-2d
// 296, 1d-32k 267, hunyuan-3d 208, img-2d 125; 1.6-2.3x the sm80 rows. Fast mode (rows 55-60,
// opt-in): the dK/dV kernel also runs dQ = dS K (dS^T through shared memory) and adds the
// partials into a float32 workspace, 5 products per pair. With float2 atomics (one warpgroup per
// step, alternating) it was 1.2-1.35x slower on those anchors, with one bulk reduce-add per row
// slower still; since 2026-12-05 both warpgroups run each step's dQ product at d128 and one
// TMA tensor reduce-add per 32-column panel adds it (4 per step, not 128): still 1.15-1.30x
// slower than the deterministic pair (H100, bench/results/2026-12-05-h100-sixth-session.md).
//
// sm90 backward at head dim 256 (rows 61-64, deterministic only; 2026-12-05, its first GPU run
// the same day: 406 random sm90 backward problems passed): the dQ kernel walks 32-key boxes
// (two stages of 32 x 256 K and V beside the 128 x 256 Q and dO: 199 KB); the dK/dV kernel
// walks 32-query boxes and splits the output columns over two CTAs per key box
// (dkdv_column_split: 64 x 256 fp32 dK and dV accumulators per warpgroup do not fit the
// registers), each recomputing S^T and dP^T over all 256 columns.
//
// sm90 forward rows with the polynomial 2^x (rows 65-68, 2026-12-05, seventh session; built and
// host-tested, not yet run on a GPU): the ping-pong rows of head dims 64 and 32, where the
// special-function unit's 16 exponentials a clock per SM match (d64) or trail (d32) the tensor
// cores' rate of scores, with every fourth n8 block of each S tile exponentiated on the FMA
// units (cuda/common/fragment/exp2_poly.h, after FlashAttention-4). Picked only with
// NATTN_SM90_POLY_EXP=1 (sm90/device/family.cu): on the H100 (2026-12-05) they ran 6-12% slower
// than the rows they shadow on every problem tried (dense 8k d64 388 against 433 TFLOP/s).
//
// sm90 backward rows with two CTAs per SM (rows 69-72, 2026-12-05): head dim 32 (the NAT/DiNAT
// stages), walked boxes of 32 rows. A small grid's CTA walks one or two boxes and is mostly
// latency (its loads, the set-up, the epilogue); with one CTA per SM the SM idles meanwhile.
// Two resident CTAs of 384 threads get 80 registers a thread at launch, so setmaxnreg splits at
// most 30720 per CTA: 40/96 for dQ (its producer thread spills 12 bytes, the consumers none)
// and 32/104 for dK/dV (72 bytes, the consumers' share 6 instructions); walked boxes of 64 rows
// spilled 48-174 instructions in the consumers (docs/design/hopper_backward.md). The default
// backward rows of head dim 32 (sm90/device/family.cu; NATTN_SM90_BWD_TWO_CTAS=0 keeps one CTA
// per SM): 1.15-1.45x faster than the one-CTA rows on the NAT stages and a 128x128 d32 grid on
// the H100 (2026-12-05).
//
// sm80 rows for 99 KB of shared memory (issue 11): sm86/sm89 let a block opt into 101376
// bytes, and the rows above at d128 (forward 105984, dQ 139776, dK/dV 104448 bytes) and d256
// (forward 169984) need more. Rows of the same family, role, dtype and head dim are listed fastest
// first; the sm80 family takes the first whose SharedStorage fits the device's opt-in limit, so
// the H100 (227 KB) keeps the rows above and a consumer GPU gets the ones below instead of the
// generic kernels. They keep the two-stage pipeline and shrink the walked tile: d128 forward
// 128 x 32 (72704 bytes), d256 forward 64 x 16 (70912; 64 x 32 needs 103936), d128 dQ 128 x 16
// (89856) and dK/dV 128 keys x 16 queries (86784); 8 warps where the tiles allow, since only
// one such CTA fits an SM (100 KB). ptxas 13.0 at sm_86 (2026-11-28): 173, 234, 163 and 216
// registers, no spills (the 64 x 64 d256 forward spills 188 bytes there). Not yet timed on an
// sm86/sm89 card, nor run on any GPU.
// generic: exact SIMT kernels for everything no fused row covers (fp32, fp64, head dims past
// the fused limits); head_dim 0 and kAny mean any.
inline constexpr KernelConfig kKernelConfigs[] = {
    {0, F::kSm80, R::kForward, E::kHalf, 32, 128, 128, 8, 2},
    {1, F::kSm80, R::kForward, E::kBFloat16, 32, 128, 128, 8, 2},
    {2, F::kSm80, R::kForward, E::kHalf, 64, 128, 128, 8, 2},
    {3, F::kSm80, R::kForward, E::kBFloat16, 64, 128, 128, 8, 2},
    {4, F::kSm80, R::kForward, E::kHalf, 128, 128, 64, 8, 2},
    {5, F::kSm80, R::kForward, E::kBFloat16, 128, 128, 64, 8, 2},
    {6, F::kSm80, R::kForward, E::kHalf, 256, 64, 64, 4, 2},
    {7, F::kSm80, R::kForward, E::kBFloat16, 256, 64, 64, 4, 2},
    {8, F::kSm80, R::kBackwardDq, E::kHalf, 32, 128, 64, 8, 2},
    {9, F::kSm80, R::kBackwardDq, E::kBFloat16, 32, 128, 64, 8, 2},
    {10, F::kSm80, R::kBackwardDq, E::kHalf, 64, 128, 64, 8, 2},
    {11, F::kSm80, R::kBackwardDq, E::kBFloat16, 64, 128, 64, 8, 2},
    {12, F::kSm80, R::kBackwardDq, E::kHalf, 128, 128, 64, 8, 2},
    {13, F::kSm80, R::kBackwardDq, E::kBFloat16, 128, 128, 64, 8, 2},
    {14, F::kSm80, R::kBackwardDkdv, E::kHalf, 32, 64, 128, 8, 2},
    {15, F::kSm80, R::kBackwardDkdv, E::kBFloat16, 32, 64, 128, 8, 2},
    {16, F::kSm80, R::kBackwardDkdv, E::kHalf, 64, 64, 128, 8, 2},
    {17, F::kSm80, R::kBackwardDkdv, E::kBFloat16, 64, 64, 128, 8, 2},
    {18, F::kSm80, R::kBackwardDkdv, E::kHalf, 128, 32, 128, 8, 2},
    {19, F::kSm80, R::kBackwardDkdv, E::kBFloat16, 128, 32, 128, 8, 2},
    {20, F::kGeneric, R::kForward, E::kAny, 0, 1, 1, 4, 1},
    {21, F::kGeneric, R::kBackwardDq, E::kAny, 0, 1, 1, 4, 1},
    {22, F::kGeneric, R::kBackwardDkdv, E::kAny, 0, 1, 1, 4, 1},
    {23, F::kSm90, R::kForward, E::kHalf, 64, 128, 128, 12, 4},
    {24, F::kSm90, R::kForward, E::kBFloat16, 64, 128, 128, 12, 4},
    {25, F::kSm90, R::kForward, E::kHalf, 128, 128, 128, 12, 2},
    {26, F::kSm90, R::kForward, E::kBFloat16, 128, 128, 128, 12, 2},
    {27, F::kSm90, R::kForward, E::kHalf, 64, 128, 128, 12, 4, true},
    {28, F::kSm90, R::kForward, E::kBFloat16, 64, 128, 128, 12, 4, true},
    {29, F::kSm90, R::kForward, E::kHalf, 128, 128, 128, 12, 2, true},
    {30, F::kSm90, R::kForward, E::kBFloat16, 128, 128, 128, 12, 2, true},
    {31, F::kSm90, R::kForward, E::kHalf, 32, 128, 128, 12, 4, true},
    {32, F::kSm90, R::kForward, E::kBFloat16, 32, 128, 128, 12, 4, true},
    {33, F::kSm90, R::kForward, E::kHalf, 256, 128, 64, 12, 2},
    {34, F::kSm90, R::kForward, E::kBFloat16, 256, 128, 64, 12, 2},
    {35, F::kSm90, R::kBackwardDkdv, E::kHalf, 32, 64, 128, 12, 4},
    {36, F::kSm90, R::kBackwardDkdv, E::kBFloat16, 32, 64, 128, 12, 4},
    {37, F::kSm90, R::kBackwardDkdv, E::kHalf, 64, 64, 128, 12, 4},
    {38, F::kSm90, R::kBackwardDkdv, E::kBFloat16, 64, 64, 128, 12, 4},
    {39, F::kSm90, R::kBackwardDkdv, E::kHalf, 128, 64, 128, 12, 2},
    {40, F::kSm90, R::kBackwardDkdv, E::kBFloat16, 128, 64, 128, 12, 2},
    {41, F::kSm90, R::kBackwardDq, E::kHalf, 32, 128, 64, 12, 4},
    {42, F::kSm90, R::kBackwardDq, E::kBFloat16, 32, 128, 64, 12, 4},
    {43, F::kSm90, R::kBackwardDq, E::kHalf, 64, 128, 64, 12, 4},
    {44, F::kSm90, R::kBackwardDq, E::kBFloat16, 64, 128, 64, 12, 4},
    {45, F::kSm90, R::kBackwardDq, E::kHalf, 128, 128, 64, 12, 3},
    {46, F::kSm90, R::kBackwardDq, E::kBFloat16, 128, 128, 64, 12, 3},
    {47, F::kSm80, R::kForward, E::kHalf, 128, 128, 32, 8, 2},  // 99 KB rows (see above)
    {48, F::kSm80, R::kForward, E::kBFloat16, 128, 128, 32, 8, 2},
    {49, F::kSm80, R::kForward, E::kHalf, 256, 64, 16, 4, 2},
    {50, F::kSm80, R::kForward, E::kBFloat16, 256, 64, 16, 4, 2},
    {51, F::kSm80, R::kBackwardDq, E::kHalf, 128, 128, 16, 8, 2},
    {52, F::kSm80, R::kBackwardDq, E::kBFloat16, 128, 128, 16, 8, 2},
    {53, F::kSm80, R::kBackwardDkdv, E::kHalf, 128, 16, 128, 8, 2},
    {54, F::kSm80, R::kBackwardDkdv, E::kBFloat16, 128, 16, 128, 8, 2},
    {55, F::kSm90, R::kBackwardDkdvDq, E::kHalf, 32, 64, 128, 12, 4},  // sm90 fast backward (see above)
    {56, F::kSm90, R::kBackwardDkdvDq, E::kBFloat16, 32, 64, 128, 12, 4},
    {57, F::kSm90, R::kBackwardDkdvDq, E::kHalf, 64, 64, 128, 12, 4},
    {58, F::kSm90, R::kBackwardDkdvDq, E::kBFloat16, 64, 64, 128, 12, 4},
    {59, F::kSm90, R::kBackwardDkdvDq, E::kHalf, 128, 64, 128, 12, 2},
    {60, F::kSm90, R::kBackwardDkdvDq, E::kBFloat16, 128, 64, 128, 12, 2},
    {61, F::kSm90, R::kBackwardDkdv, E::kHalf, 256, 32, 128, 12, 2},  // sm90 backward, head dim 256 (see above)
    {62, F::kSm90, R::kBackwardDkdv, E::kBFloat16, 256, 32, 128, 12, 2},
    {63, F::kSm90, R::kBackwardDq, E::kHalf, 256, 128, 32, 12, 2},
    {64, F::kSm90, R::kBackwardDq, E::kBFloat16, 256, 128, 32, 12, 2},
    {65, F::kSm90, R::kForward, E::kHalf, 64, 128, 128, 12, 4, true, true},  // sm90 forward, poly exp (see above)
    {66, F::kSm90, R::kForward, E::kBFloat16, 64, 128, 128, 12, 4, true, true},
    {67, F::kSm90, R::kForward, E::kHalf, 32, 128, 128, 12, 4, true, true},
    {68, F::kSm90, R::kForward, E::kBFloat16, 32, 128, 128, 12, 4, true, true},
    {69, F::kSm90, R::kBackwardDkdv, E::kHalf, 32, 32, 128, 12, 4, false, false, 2},  // two CTAs per SM (see above)
    {70, F::kSm90, R::kBackwardDkdv, E::kBFloat16, 32, 32, 128, 12, 4, false, false, 2},
    {71, F::kSm90, R::kBackwardDq, E::kHalf, 32, 128, 32, 12, 4, false, false, 2},
    {72, F::kSm90, R::kBackwardDq, E::kBFloat16, 32, 128, 32, 12, 4, false, false, 2},
};
}  // namespace config_rows
using config_rows::kKernelConfigs;
inline constexpr int kNumConfigs = int(sizeof(kKernelConfigs) / sizeof(kKernelConfigs[0]));

constexpr bool ids_are_positions() {
  for (int i = 0; i < kNumConfigs; ++i)
    if (kKernelConfigs[i].id != i) return false;
  return true;
}
static_assert(ids_are_positions(), "a row's id is its position: dispatch indexes the table by id");

inline const char* family_name(Family f) {
  switch (f) {
    case Family::kSm90: return "sm90";
    case Family::kSm80: return "sm80";
    case Family::kGeneric: return "generic";
  }
  return "?";
}

inline const char* role_name(Role r) {
  switch (r) {
    case Role::kForward: return "forward";
    case Role::kBackwardDq: return "backward_dq";
    case Role::kBackwardDkdv: return "backward_dkdv";
    case Role::kBackwardDkdvDq: return "backward_dkdv_dq";
    case Role::kDqConvert: return "dq_convert";
  }
  return "?";
}

inline const char* elem_name(Elem e) {
  switch (e) {
    case Elem::kHalf: return "float16";
    case Elem::kBFloat16: return "bfloat16";
    case Elem::kAny: return "any";
  }
  return "?";
}

// The sm90 dK/dV kernel's CTAs per key box: each writes head_dim / split columns of dK and dV
// (two 64 x 128 fp32 accumulators per warpgroup at most; head dim 256 splits in two).
constexpr int dkdv_column_split(int head_dim) { return head_dim > 128 ? head_dim / 128 : 1; }
// The largest padded head dim a family's rows of a role cover (0 if it has none).
constexpr int max_head_dim(Family f, Role r) {
  int m = 0;
  for (int i = 0; i < kNumConfigs; ++i)
    if (kKernelConfigs[i].family == f && kKernelConfigs[i].role == r && kKernelConfigs[i].head_dim > m)
      m = kKernelConfigs[i].head_dim;
  return m;
}

// max(D, Dv) rounded up to the smallest head dim of a family's rows of a role (0 if none).
constexpr int padded_head_dim(Family f, Role r, int head_dim) {
  int best = 0;
  for (int i = 0; i < kNumConfigs; ++i) {
    const KernelConfig& c = kKernelConfigs[i];
    if (c.family == f && c.role == r && c.head_dim >= head_dim && (best == 0 || c.head_dim < best)) best = c.head_dim;
  }
  return best;
}

// sm86/sm89: the dynamic shared memory a block may opt into (99 KB). The last sm80 row of each
// role, dtype and head dim must fit it (checked where the rows are compiled, launch_row.cuh).
inline constexpr int kConsumerSmemOptin = 101376;

// The next row after `id` of the same family, role, element and head dim (a fallback for a
// device with less shared memory), or -1.
constexpr int next_sibling(int id) {
  const KernelConfig& c = kKernelConfigs[id];
  for (int i = id + 1; i < kNumConfigs; ++i) {
    const KernelConfig& o = kKernelConfigs[i];
    if (o.family == c.family && o.role == c.role && o.elem == c.elem && o.head_dim == c.head_dim) return i;
  }
  return -1;
}

// The row of (family, role, element, padded head dim, schedule, exponential, residency), or -1:
// the first (fastest) of its siblings.
constexpr int find_config(Family f, Role r, Elem e, int padded, bool pingpong = false, bool poly_exp = false,
                          int ctas_per_sm = 1) {
  for (int i = 0; i < kNumConfigs; ++i) {
    const KernelConfig& c = kKernelConfigs[i];
    if (c.family == f && c.role == r && (c.elem == e || c.elem == Elem::kAny) &&
        (c.head_dim == padded || c.head_dim == 0) && c.pingpong == pingpong && c.poly_exp == poly_exp &&
        c.ctas_per_sm == ctas_per_sm)
      return i;
  }
  return -1;
}

}  // namespace nattn::cuda
