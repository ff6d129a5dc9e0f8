// Layer: cuda/sm80 kernel. Fused neighborhood-attention forward (FlashAttention-2 style):
// one CTA = one box of BM query positions of one (batch, head, dilation group); it walks the
// key boxes covering its queries' windows (CtaTiles), computing S = Q K^T on tensor cores,
// masking only partial boxes, an online softmax in registers and O += P V. Each warp owns
// 16*MI query rows. K and V tiles are single-buffered with loads overlapped against the
// other operand's product (K[j+1] streams in during P V[j], V[j] during Q K[j]^T).
#pragma once
#include <cuda_runtime.h>

#include <cfloat>
#include <cmath>

#include "cuda/params.h"
#include "cuda/sm80/collective/cta_tiles.cuh"
#include "cuda/sm80/collective/smem_tile.cuh"
#include "cuda/sm80/collective/warp_mma.cuh"

namespace nattn::cuda::sm80 {

template <class Element_, int HD_, int BM_, int BN_, int WARPS_>
struct ForwardTraits {
  using Element = Element_;
  static constexpr int HD = HD_, BM = BM_, BN = BN_, kWarps = WARPS_;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int MI = BM / (16 * kWarps);  // m16 blocks per warp
  static constexpr int NI = BN / 8;              // n8 tiles of S
  static constexpr int OI = HD / 8;              // n8 tiles of O
  static_assert(MI >= 1 && BM % (16 * kWarps) == 0, "BM must be a multiple of 16 * warps");
  static constexpr size_t kSmemQ = size_t(BM) * HD, kSmemKV = size_t(BN) * HD;
  static constexpr size_t kSmemBytes = (kSmemQ + 2 * kSmemKV) * sizeof(Element) + size_t(BM) * 6 * sizeof(int);
};

template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads) fna_forward_kernel(const ForwardParams p) {
  using Element = typename Tr::Element;
  constexpr int HD = Tr::HD, BM = Tr::BM, BN = Tr::BN, MI = Tr::MI, NI = Tr::NI, OI = Tr::OI;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  Element* sQ = reinterpret_cast<Element*>(smem_raw);
  Element* sK = sQ + Tr::kSmemQ;
  Element* sV = sK + Tr::kSmemKV;
  int* sWin = reinterpret_cast<int*>(sV + Tr::kSmemKV);  // [BM][3][2]: each row's window, per axis

  const Geometry& g = p.g;
  const int h = blockIdx.y;
  const int64_t b = blockIdx.z;
  const int64_t hk = h / (g.heads_q / g.heads_kv);
  // The CTA's tile walk lives in shared memory: it is loop-invariant and would otherwise
  // hold ~40 registers that the accumulators need.
  __shared__ __align__(16) unsigned char cta_storage[sizeof(CtaTiles)];
  CtaTiles& cta = *reinterpret_cast<CtaTiles*>(cta_storage);
  if (threadIdx.x == 0) cta.init(p, blockIdx.x, BN);
  __syncthreads();
  if (cta.empty) return;
  cta.fill_tables(threadIdx.x, Tr::kThreads);
  __syncthreads();

  const Element* q_base = static_cast<const Element*>(p.q) + b * p.sq.batch + h * p.sq.head;
  const Element* k_base = static_cast<const Element*>(p.k) + b * p.sk.batch + hk * p.sk.head;
  const Element* v_base = static_cast<const Element*>(p.v) + b * p.sv.batch + hk * p.sv.head;
  const Element* ka_base = static_cast<const Element*>(p.ka) + b * p.ska.batch + hk * p.ska.head;
  const Element* va_base = static_cast<const Element*>(p.va) + b * p.sva.batch + hk * p.sva.head;
  const int D = int(g.head_dim), Dv = int(g.head_dim_v);

  // Global element offset of the token at positions pos (this CTA's groups), per strides s.
  auto token_offset = [&](const int (&pos)[3], const Strides& s) {
    int64_t off = 0;
#pragma unroll
    for (int a = 0; a < 3; ++a) off += int64_t(pos[a] * int(g.dilation[a]) + cta.group[a]) * s.axis[a];
    return off;
  };
  // Positions of row r of the query box; false when outside the group.
  auto query_pos = [&](int r, int (&pos)[3]) {
    int l[3];
    CtaTiles::unflatten(r, cta.q_tile, l);
    bool ok = true;
#pragma unroll
    for (int a = 0; a < 3; ++a) { pos[a] = cta.q_start[a] + l[a]; ok &= pos[a] < cta.lg[a]; }
    return ok;
  };

  // Q tile, and each query row's window (clamped rows for positions outside the group).
  load_rows<HD, BM, Tr::kThreads>(sQ, [&](int r) -> const Element* {
    int pos[3];
    return query_pos(r, pos) ? q_base + token_offset(pos, p.sq) : nullptr;
  }, D, q_base);
  for (int r = threadIdx.x; r < BM; r += Tr::kThreads) {
    int pos[3];
    query_pos(r, pos);
#pragma unroll
    for (int a = 0; a < 3; ++a) {
      const int pa = pos[a] < cta.lg[a] ? pos[a] : cta.lg[a] - 1;
      const window::Range w = window::group_window(pa, cta.lg[a], g.kernel[a], g.stride[a], g.causal[a]);
      sWin[r * 6 + 2 * a] = int(w.begin);
      sWin[r * 6 + 2 * a + 1] = int(w.end);
    }
  }

  // Loads tile t's K (or V) rows.
  auto load_kv = [&](Element* dst, int t, bool is_v) {
    const Element* base = is_v ? v_base : k_base;
    const int dims = is_v ? Dv : D;
    if (t >= cta.nbr_tiles) {
      const int64_t j0 = int64_t(t - cta.nbr_tiles) * BN;
      const Element* abase = is_v ? va_base : ka_base;
      const int64_t rs = is_v ? p.sva.axis[0] : p.ska.axis[0];
      load_rows<HD, BN, Tr::kThreads>(dst, [&](int r) -> const Element* {
        return j0 + r < g.num_additional ? abase + (j0 + r) * rs : nullptr;
      }, dims, base);
      return;
    }
    const tiles::Box<3> box = cta.key_box(t);
    const Strides& s = is_v ? p.sv : p.sk;
    load_rows<HD, BN, Tr::kThreads>(dst, [&](int r) -> const Element* {
      int l[3], pos[3];
      CtaTiles::unflatten(r, cta.k_tile, l);
      bool ok = true;
#pragma unroll
      for (int a = 0; a < 3; ++a) { pos[a] = int(box.r[a].begin) + l[a]; ok &= pos[a] < cta.lg[a]; }
      return ok ? base + token_offset(pos, s) : nullptr;
    }, dims, base);
  };

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row0 = warp * 16 * MI;
  const float scale_log2 = g.scale * float(M_LOG2E);

  float o[MI][OI][4];
  float row_max[MI][2], row_sum[MI][2];
#pragma unroll
  for (int mi = 0; mi < MI; ++mi) {
#pragma unroll
    for (int oi = 0; oi < OI; ++oi) o[mi][oi][0] = o[mi][oi][1] = o[mi][oi][2] = o[mi][oi][3] = 0.f;
    row_max[mi][0] = row_max[mi][1] = -INFINITY;
    row_sum[mi][0] = row_sum[mi][1] = 0.f;
  }

  int t = cta.next_tile(0, g.num_additional, BN);
  if (t < cta.total_tiles()) load_kv(sK, t, false);
  cp_async_commit();

  while (t < cta.total_tiles()) {
    cp_async_wait<0>();
    __syncthreads();  // K[t] (and Q on the first pass) landed; everyone is done reading sV
    load_kv(sV, t, true);
    cp_async_commit();

    float s[MI][NI][4];
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
      for (int ni = 0; ni < NI; ++ni) s[mi][ni][0] = s[mi][ni][1] = s[mi][ni][2] = s[mi][ni][3] = 0.f;
    gemm_abT<Element, HD, MI, NI>(s, sQ, row0, sK);

    // Scale (log2 domain), then mask partial tiles.
    // Classified again here (next_tile did it once): with the per-axis tables that is three
    // shared loads, while carrying it across the P.V product cost the d32/d64 kernels up to 29
    // registers and spills (ptxas, sm_90, 2026-11-26).
    const tiles::Coverage cov = cta.coverage(t, g.num_additional, BN);
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
      for (int ni = 0; ni < NI; ++ni)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mi][ni][e] *= scale_log2;
    if (cov != tiles::Coverage::kFull) {
      if (t >= cta.nbr_tiles) {
        const int64_t j0 = int64_t(t - cta.nbr_tiles) * BN;
#pragma unroll
        for (int ni = 0; ni < NI; ++ni)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int col = ni * 8 + 2 * (lane % 4) + (e & 1);
            if (j0 + col >= g.num_additional)
#pragma unroll
              for (int mi = 0; mi < MI; ++mi) s[mi][ni][e] = -INFINITY;
          }
      } else {
        const tiles::Box<3> box = cta.key_box(t);
#pragma unroll
        for (int ni = 0; ni < NI; ++ni)
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            int l[3];
            CtaTiles::unflatten(ni * 8 + 2 * (lane % 4) + c, cta.k_tile, l);
#pragma unroll
            for (int mi = 0; mi < MI; ++mi)
#pragma unroll
              for (int hr = 0; hr < 2; ++hr) {
                const int* w = sWin + (row0 + mi * 16 + hr * 8 + lane / 4) * 6;
                bool in = true;
#pragma unroll
                for (int a = 0; a < 3; ++a) {
                  const int kp = int(box.r[a].begin) + l[a];
                  in &= kp >= w[2 * a] && kp < w[2 * a + 1];
                }
                if (!in) s[mi][ni][hr * 2 + c] = -INFINITY;
              }
          }
      }
    }

    // Online softmax: rows (mi, hr) live in the 4 lanes of a quad.
    uint32_t pf[MI][BN / 16][4];
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) {
        float mx = row_max[mi][hr];
#pragma unroll
        for (int ni = 0; ni < NI; ++ni) mx = fmaxf(mx, fmaxf(s[mi][ni][2 * hr], s[mi][ni][2 * hr + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_use = mx == -INFINITY ? 0.f : mx;
        const float corr = exp2f(row_max[mi][hr] - m_use);
        row_max[mi][hr] = mx;
        row_sum[mi][hr] *= corr;
#pragma unroll
        for (int oi = 0; oi < OI; ++oi) { o[mi][oi][2 * hr] *= corr; o[mi][oi][2 * hr + 1] *= corr; }
#pragma unroll
        for (int ni = 0; ni < NI; ++ni) {
          s[mi][ni][2 * hr] = exp2f(s[mi][ni][2 * hr] - m_use);
          s[mi][ni][2 * hr + 1] = exp2f(s[mi][ni][2 * hr + 1] - m_use);
          row_sum[mi][hr] += s[mi][ni][2 * hr] + s[mi][ni][2 * hr + 1];
        }
      }
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) {
        pf[mi][kk][0] = Mma<Element>::pack(s[mi][2 * kk][0], s[mi][2 * kk][1]);
        pf[mi][kk][1] = Mma<Element>::pack(s[mi][2 * kk][2], s[mi][2 * kk][3]);
        pf[mi][kk][2] = Mma<Element>::pack(s[mi][2 * kk + 1][0], s[mi][2 * kk + 1][1]);
        pf[mi][kk][3] = Mma<Element>::pack(s[mi][2 * kk + 1][2], s[mi][2 * kk + 1][3]);
      }

    cp_async_wait<0>();
    __syncthreads();  // V[t] landed; everyone is done reading sK
    const int next = cta.next_tile(t + 1, g.num_additional, BN);
    if (next < cta.total_tiles()) load_kv(sK, next, false);
    cp_async_commit();
    gemm_pv<Element, HD, MI, BN>(o, pf, sV);
    t = next;
  }

  // Epilogue: normalise, store O rows (pairs of elements) and the logsumexp.
  Element* o_base = static_cast<Element*>(p.out) + b * p.so.batch + h * p.so.head;
#pragma unroll
  for (int mi = 0; mi < MI; ++mi)
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      float sum = row_sum[mi][hr];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const int r = row0 + mi * 16 + hr * 8 + lane / 4;
      int pos[3];
      if (!query_pos(r, pos)) continue;
      const float inv = sum > 0.f ? 1.f / sum : 0.f;
      Element* dst = o_base + token_offset(pos, p.so);
#pragma unroll
      for (int oi = 0; oi < OI; ++oi) {
        const int col = oi * 8 + 2 * (lane % 4);
        if (col < Dv)
          *reinterpret_cast<uint32_t*>(dst + col) = Mma<Element>::pack(o[mi][oi][2 * hr] * inv, o[mi][oi][2 * hr + 1] * inv);
      }
      if (p.lse != nullptr && lane % 4 == 0) {
        const float m = row_max[mi][hr] == -INFINITY ? 0.f : row_max[mi][hr];
        p.lse[b * p.slse.batch + h * p.slse.head + token_offset(pos, p.slse)] = (m + log2f(sum)) * float(M_LN2);
      }
    }
}

}  // namespace nattn::cuda::sm80
