// Device side of the fused pairwise-similarity engine (ops.md §1) for the CUDA kernels of the contrastive
// losses (supcon.cu, info_nce.cu, uniform.cu, hycon.cu, mgcl.cu). Torch-free apart from c10's Half and
// BFloat16 (host/device value types), so nvcc's device passes stay light.
//
// Geometry. A block of 256 threads (16 × 16: tx = tid % 16, ty = tid / 16) owns BM rows — the "owners" —
// and loops over the "streamed" rows in tiles of BN. Each tile of similarities x_o·x_t is computed in
// registers (thread (tx, ty) holds owners ty + 16i, i < TM, and streamed rows tx + 16j, j < TN) from
// feature chunks of BK = 16 columns staged in shared memory; the N × M matrix never exists. Inputs are
// read in their own dtype (fp32 / fp16 / bf16 / fp64, a run-time switch in the loader, so kernels are
// instantiated once per compute type only) and every product, sum and log-sum-exp runs in the compute
// type T: float for fp32/fp16/bf16, double for fp64 (gradcheck). Row norms are taken from the same staged
// chunks, so normalisation costs no extra pass or launch: s = (x_o·x_t)·inv_o·inv_t.
//
// * rows_forward_kernel: per-owner statistics in one launch. Each thread keeps a partial state per owner
//   row (online log-sum-exps — running max, rescaled when it grows — sums, counts) over its streamed
//   columns; at the end the 16 partials of a row are merged in a fixed order through shared memory.
// * rows_grad_kernel: backward by recomputation (FlashAttention style). For each streamed tile the
//   similarities are rebuilt, the loss writes dS (its per-pair gradient, scaled by the streamed row's
//   1/‖x‖) into shared memory, and dU[o, d] += Σ_t dS[o, t]·x[t, d] accumulates in registers for a
//   chunk of DC = 128 feature columns (grid.y runs over the chunks). Each owner row and chunk is written
//   by exactly one block: no atomics, deterministic. Column-side gradients of non-symmetric losses use a
//   second launch of the same kernel with owners and streamed rows swapped; symmetric losses (Y = X) form
//   G_ot + G_to in one pass.
// * finalize_kernel: dx = (du − x̂ (x̂·du))/max(‖x‖, eps) row-wise (back through n(·)), plus the
//   per-row terms a loss adds outside the pair sums, cast to the input dtype.
//
// A loss L supplies the geometry and the per-pair math (see supcon.cu for the full interface): tile(b),
// owner_row / stream_row (row pointers), D, dt, normalize, and Row / Col / init_row / load_col /
// accumulate / merge / finish (forward) or grad / out_row (backward).
//
// MSA_CUDA_EMULATION (tests only): the same code compiled by the host compiler against a tiny runtime that
// runs each block's threads as host threads with a barrier, so the kernels can be checked without a GPU.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <limits>

#include "common/contrastive.h"

#if defined(MSA_CUDA_EMULATION)
#include "cuda_emulation.h"
#define MSA_DEV inline
#else
#include <cuda_runtime.h>
#define MSA_DEV __device__ __forceinline__
#endif

namespace msa_fast {
namespace tiles {
namespace {  // one private copy per translation unit (kernels are instantiated by several .cu files)

enum DType : int { kF32 = 0, kF16 = 1, kBF16 = 2, kF64 = 3 };

template <typename T>
MSA_DEV T load_as(const char* row, int64_t k, int dt) {
  switch (dt) {
    case kF32: return static_cast<T>(reinterpret_cast<const float*>(row)[k]);
    case kF16: return static_cast<T>(static_cast<float>(reinterpret_cast<const c10::Half*>(row)[k]));
    case kBF16: return static_cast<T>(static_cast<float>(reinterpret_cast<const c10::BFloat16*>(row)[k]));
    default: return static_cast<T>(reinterpret_cast<const double*>(row)[k]);
  }
}

template <typename T>
MSA_DEV void store_as(char* row, int64_t k, int dt, T v) {
  switch (dt) {
    case kF32: reinterpret_cast<float*>(row)[k] = static_cast<float>(v); break;
    case kF16: reinterpret_cast<c10::Half*>(row)[k] = c10::Half(static_cast<float>(v)); break;
    case kBF16: reinterpret_cast<c10::BFloat16*>(row)[k] = c10::BFloat16(static_cast<float>(v)); break;
    default: reinterpret_cast<double*>(row)[k] = static_cast<double>(v); break;
  }
}

constexpr int kThreads = 256;
constexpr int kTX = 16;         // tx = tid % 16, ty = tid / 16
constexpr int kBK = 16;         // feature columns per staged chunk of a similarity tile
constexpr int kBJ = 16;         // streamed rows per staged chunk of the gradient product
constexpr int kDQ = 8;          // feature columns per thread of the gradient product
constexpr int kDC = kTX * kDQ;  // feature columns of one gradient block (grid.y)

template <typename T>
struct Cfg;
template <>
struct Cfg<float> {
  static constexpr int TM = 4, TN = 4, BM = kTX * TM, BN = kTX * TN;
};
template <>
struct Cfg<double> {  // fp64 is the gradcheck path: smaller tiles keep the static shared memory < 48 KiB
  static constexpr int TM = 2, TN = 2, BM = kTX * TM, BN = kTX * TN;
};

MSA_DEV int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// One block's share of the work: owners o_begin … o_begin + o_count − 1 against streamed rows
// [t_begin, t_end), in the loss's own indexing; `view` is free for the loss (mgcl's view).
struct Tile {
  int64_t o_begin;
  int o_count;
  int64_t t_begin, t_end;
  int view;
};

// 1/max(‖x‖, eps) from Σx² (0 for a zero row, NaN stays NaN), or 1 without normalisation.
template <typename T>
MSA_DEV T inv_norm(T sumsq, bool normalize) {
  if (!normalize) return T(1);
  const T n = contrastive::exact_sqrt(sumsq);
  return n != T(0) ? T(1) / contrastive::safe_norm(n) : T(0);
}

template <typename T>
struct SimSmem {
  static constexpr int BM = Cfg<T>::BM, BN = Cfg<T>::BN;
  T a[kBK][BM + 1];        // owner chunk, feature-major (+1: conflict-free transposed stores)
  T b[kBK][BN + 1];        // streamed chunk
  T inv_o[BM], sq_o[BM];   // owners: 1/max(‖x‖, eps) (1 without normalisation) and ‖n(x)‖² (‖x‖²)
  T inv_t[BN], sq_t[BN];   // the same for the streamed rows of the current tile
};

// acc[i][j] = x_o·x_t (raw dot of the stored rows) for owner o = ty + 16i of the tile and streamed row
// t0 + tx + 16j, 0 outside the tile; fills sm.inv_t / sm.sq_t and, with `owner_norms`, sm.inv_o / sm.sq_o.
// Ends with a barrier.
template <typename T, class L>
MSA_DEV void sim_tile(const L& loss, const Tile& tile, int64_t t0, bool owner_norms, SimSmem<T>& sm,
                      T (&acc)[Cfg<T>::TM][Cfg<T>::TN]) {
  constexpr int TM = Cfg<T>::TM, TN = Cfg<T>::TN, BM = Cfg<T>::BM, BN = Cfg<T>::BN;
  constexpr int LA = BM * kBK / kThreads, LB = BN * kBK / kThreads;
  const int tid = threadIdx.x, tx = tid % kTX, ty = tid / kTX;
  const int t_count = static_cast<int>(min64(BN, tile.t_end - t0));
  const int64_t D = loss.D;
  const int dt = loss.dt;
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = T(0);
  const bool owner_sq = owner_norms && tid < BM;
  const bool stream_sq = tid >= 128 && tid < 128 + BN;
  T ss = T(0);
  for (int64_t d0 = 0; d0 < D; d0 += kBK) {
    // Thread → (row, k): 16 consecutive threads read 16 consecutive features of a row. Row pointers are
    // recomputed per chunk (cheap integer math) rather than held in registers.
#pragma unroll
    for (int l = 0; l < LA; ++l) {
      const int e = tid + kThreads * l, r = e / kBK, k = e % kBK;
      sm.a[k][r] = (r < tile.o_count && d0 + k < D) ? load_as<T>(loss.owner_row(tile, tile.o_begin + r), d0 + k, dt)
                                                     : T(0);
    }
#pragma unroll
    for (int l = 0; l < LB; ++l) {
      const int e = tid + kThreads * l, r = e / kBK, k = e % kBK;
      sm.b[k][r] = (r < t_count && d0 + k < D) ? load_as<T>(loss.stream_row(tile, t0 + r), d0 + k, dt) : T(0);
    }
    __syncthreads();
    // Σx² summed per chunk, then across chunks (error O(D/16 + 16) ulp instead of O(D)): uniform's
    // d² = ‖p‖² + ‖g‖² − 2p·g cancels, so the squared norms should be as good as the dot products.
    if (owner_sq) {
      T cs = T(0);
#pragma unroll
      for (int k = 0; k < kBK; ++k) cs += sm.a[k][tid] * sm.a[k][tid];
      ss += cs;
    } else if (stream_sq) {
      T cs = T(0);
#pragma unroll
      for (int k = 0; k < kBK; ++k) cs += sm.b[k][tid - 128] * sm.b[k][tid - 128];
      ss += cs;
    }
#pragma unroll
    for (int k = 0; k < kBK; ++k) {
      T av[TM], bv[TN];
#pragma unroll
      for (int i = 0; i < TM; ++i) av[i] = sm.a[k][ty + kTX * i];
#pragma unroll
      for (int j = 0; j < TN; ++j) bv[j] = sm.b[k][tx + kTX * j];
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] += av[i] * bv[j];
    }
    __syncthreads();
  }
  if (owner_sq) {
    const T inv = inv_norm(ss, loss.normalize);
    sm.inv_o[tid] = inv;
    sm.sq_o[tid] = loss.normalize ? ss * inv * inv : ss;
  } else if (stream_sq) {
    const T inv = inv_norm(ss, loss.normalize);
    sm.inv_t[tid - 128] = inv;
    sm.sq_t[tid - 128] = loss.normalize ? ss * inv * inv : ss;
  }
  __syncthreads();
}

// The streamed-side view of a tile handed to the loss: per column j of the thread, its index, metadata,
// similarity to the owner row, ‖n(x_t)‖² and whether it lies inside the streamed range.
template <typename T, class Col, int TN>
struct Cols {
  int64_t t[TN];
  Col meta[TN];
  T sq[TN];
  bool valid[TN];
};

template <typename T, class L>
MSA_DEV void load_cols(const L& loss, const Tile& tile, int64_t t0, const SimSmem<T>& sm,
                       Cols<T, typename L::Col, Cfg<T>::TN>& c) {
  const int tx = threadIdx.x % kTX;
#pragma unroll
  for (int j = 0; j < Cfg<T>::TN; ++j) {
    const int tl = tx + kTX * j;
    c.t[j] = t0 + tl;
    c.valid[j] = c.t[j] < tile.t_end;
    c.sq[j] = sm.sq_t[tl];
    if (c.valid[j]) c.meta[j] = loss.load_col(tile, c.t[j]);
  }
}

// Online log-sum-exp of one row over this thread's values of a tile: (m, s) with LSE = m + log(s). The
// tile max first, then at most one rescale (exact exp: rescales are rare), then one exp per value.
// Values outside the set (`in` false) are skipped; NaN values never win the max and reach s as NaN.
template <typename T, int TN>
MSA_DEV void lse_add(T& m, T& s, const T (&v)[TN], const bool (&in)[TN]) {
  T mt = -std::numeric_limits<T>::infinity();
#pragma unroll
  for (int j = 0; j < TN; ++j) mt = (in[j] && v[j] > mt) ? v[j] : mt;
  if (mt > m) {
    s = s * contrastive::exact_exp(m - mt);
    m = mt;
  }
#pragma unroll
  for (int j = 0; j < TN; ++j) s += in[j] ? contrastive::fast_exp(v[j] - m) : T(0);
}

// pd[o] = n(x_o)·n(p_o) for the owner rows o of the tile and their partner rows p_o = loss.partner_row(o)
// (raw dot without normalisation): the positive pair of info_nce 'queries', which replaces the diagonal of
// the q̂·q̂ᵀ tiles. kThreads / BM threads per row; ends with a barrier.
template <typename T, class L>
MSA_DEV void partner_dots(const L& loss, const Tile& tile, T* pd) {
  constexpr int BM = Cfg<T>::BM, P = kThreads / BM;
  __shared__ T part[3][kThreads];
  const int tid = threadIdx.x, r = tid / P, p = tid % P;
  T saa = T(0), sbb = T(0), sab = T(0);
  if (r < tile.o_count) {
    const char* a = loss.owner_row(tile, tile.o_begin + r);
    const char* b = loss.partner_row(tile, tile.o_begin + r);
    for (int64_t d = p; d < loss.D; d += P) {
      const T x = load_as<T>(a, d, loss.dt), y = load_as<T>(b, d, loss.dt);
      saa += x * x;
      sbb += y * y;
      sab += x * y;
    }
  }
  part[0][tid] = saa;
  part[1][tid] = sbb;
  part[2][tid] = sab;
  __syncthreads();
  if (tid < BM) {
    T a2 = T(0), b2 = T(0), ab = T(0);
    for (int q = 0; q < P; ++q) {
      a2 += part[0][tid * P + q];
      b2 += part[1][tid * P + q];
      ab += part[2][tid * P + q];
    }
    pd[tid] = ab * inv_norm(a2, loss.normalize) * inv_norm(b2, loss.normalize);
  }
  __syncthreads();
}

// ------------------------------------------------------------------------------------------------
// Forward: per-owner statistics, one launch. grid.x = number of tiles of the loss.

template <typename T, class L>
__global__ void __launch_bounds__(kThreads, 2) rows_forward_kernel(const L loss) {
  constexpr int TM = Cfg<T>::TM, TN = Cfg<T>::TN, BM = Cfg<T>::BM, BN = Cfg<T>::BN, NS = L::kStates;
  __shared__ SimSmem<T> sm;
  __shared__ T red[NS][BM][kTX + 1];
  __shared__ T pd[BM];
  const int tid = threadIdx.x, tx = tid % kTX, ty = tid / kTX;
  const Tile tile = loss.tile(blockIdx.x);
  bool partner = false;
  if constexpr (L::kPartnerDot) {
    partner = loss.use_partner_dot();  // uniform across the block
    if (partner) partner_dots<T>(loss, tile, pd);
  }
  typename L::Row row[TM];
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int o = ty + kTX * i;
    loss.init_row(tile, o, o < tile.o_count, partner ? pd[o] : T(0), row[i]);
  }
  for (int64_t t0 = tile.t_begin; t0 < tile.t_end; t0 += BN) {
    T acc[TM][TN];
    sim_tile<T>(loss, tile, t0, t0 == tile.t_begin, sm, acc);
    Cols<T, typename L::Col, TN> cols;
    load_cols<T>(loss, tile, t0, sm, cols);
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      const int o = ty + kTX * i;
      if (o >= tile.o_count) continue;
      T s[TN];
#pragma unroll
      for (int j = 0; j < TN; ++j) s[j] = acc[i][j] * sm.inv_o[o] * sm.inv_t[tx + kTX * j];
      loss.accumulate(tile, o, sm.sq_o[o], cols, s, row[i]);
    }
  }
  // Merge the 16 partial states of each owner row in a fixed order (tx = 0 … 15).
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int k = 0; k < NS; ++k) red[k][ty + kTX * i][tx] = row[i].st[k];
  __syncthreads();
  if (tid < tile.o_count) {
    T st[NS], other[NS];
#pragma unroll
    for (int k = 0; k < NS; ++k) st[k] = red[k][tid][0];
    for (int x = 1; x < kTX; ++x) {
#pragma unroll
      for (int k = 0; k < NS; ++k) other[k] = red[k][tid][x];
      loss.merge(st, other);
    }
    loss.finish(tile, tid, st);
  }
}

// ------------------------------------------------------------------------------------------------
// Backward: du[out_row(o), d] = Σ_t dS[o, t]·n(x_t)[d] for d in this block's chunk (grid.y), and with
// coef_out the per-owner sums Σ_t c[o, t] that the loss adds to `coef` in grad().

template <typename T, class L>
__global__ void __launch_bounds__(kThreads, 2) rows_grad_kernel(const L loss, T* __restrict__ du, T* __restrict__ coef_out) {
  constexpr int TM = Cfg<T>::TM, TN = Cfg<T>::TN, BM = Cfg<T>::BM, BN = Cfg<T>::BN;
  constexpr int LU = kBJ * kDC / kThreads;
  __shared__ SimSmem<T> sm;
  __shared__ T ds[BM][BN + 1];
  __shared__ T us[kBJ][kDC];
  __shared__ T red[BM][kTX + 1];
  __shared__ typename L::Row rows[BM];  // the owners' saved statistics (read as broadcasts, not held in registers)
  const int tid = threadIdx.x, tx = tid % kTX, ty = tid / kTX;
  const Tile tile = loss.tile(blockIdx.x);
  const int64_t D = loss.D, d0c = static_cast<int64_t>(blockIdx.y) * kDC;
  const int nq = static_cast<int>(min64(kDQ, (D - d0c + kTX - 1) / kTX));  // live output columns per thread
  if (tid < BM) loss.init_row(tile, tid, tid < tile.o_count, T(0), rows[tid]);
  __syncthreads();
  T out[TM][kDQ];
  T coef[TM];
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    coef[i] = T(0);
#pragma unroll
    for (int q = 0; q < kDQ; ++q) out[i][q] = T(0);
  }
  for (int64_t t0 = tile.t_begin; t0 < tile.t_end; t0 += BN) {
    T acc[TM][TN];
    sim_tile<T>(loss, tile, t0, t0 == tile.t_begin, sm, acc);
#pragma unroll
    for (int j = 0; j < TN; ++j) {  // column-major, so only one column's metadata is live at a time
      const int tl = tx + kTX * j;
      const int64_t t = t0 + tl;
      const bool valid = t < tile.t_end;
      typename L::Col col{};
      if (valid) col = loss.load_col(tile, t);
#pragma unroll
      for (int i = 0; i < TM; ++i) {
        const int o = ty + kTX * i;
        T g = T(0);
        if (o < tile.o_count && valid) {
          const T s = acc[i][j] * sm.inv_o[o] * sm.inv_t[tl];
          g = loss.grad(tile, o, sm.sq_o[o], rows[o], t, col, s, sm.sq_t[tl], coef[i]);
        }
        ds[o][tl] = g * sm.inv_t[tl];  // Σ_t dS·n(x_t) = Σ_t (dS/‖x_t‖)·x_t: the product reads the stored rows
      }
    }
    __syncthreads();
    const int t_count = static_cast<int>(min64(BN, tile.t_end - t0));
    for (int jb = 0; jb < t_count; jb += kBJ) {
#pragma unroll
      for (int l = 0; l < LU; ++l) {
        const int e = tid + kThreads * l, jj = e / kDC, dd = e % kDC;
        const int64_t d = d0c + dd;
        us[jj][dd] = (jb + jj < t_count && d < D) ? load_as<T>(loss.stream_row(tile, t0 + jb + jj), d, loss.dt) : T(0);
      }
      __syncthreads();
#pragma unroll 4
      for (int jj = 0; jj < kBJ; ++jj) {
        T a[TM];
#pragma unroll
        for (int i = 0; i < TM; ++i) a[i] = ds[ty + kTX * i][jb + jj];
#pragma unroll
        for (int q = 0; q < kDQ; ++q) {
          if (q < nq) {
            const T u = us[jj][tx + kTX * q];
#pragma unroll
            for (int i = 0; i < TM; ++i) out[i][q] += a[i] * u;
          }
        }
      }
      __syncthreads();
    }
  }
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int o = ty + kTX * i;
    if (o >= tile.o_count) continue;
    T* dst = du + loss.out_row(tile, o) * D;
#pragma unroll
    for (int q = 0; q < kDQ; ++q) {
      const int64_t d = d0c + tx + kTX * q;
      if (q < nq && d < D) dst[d] = out[i][q];
    }
  }
  if (coef_out != nullptr && blockIdx.y == 0) {
#pragma unroll
    for (int i = 0; i < TM; ++i) red[ty + kTX * i][tx] = coef[i];
    __syncthreads();
    if (tid < tile.o_count) {
      T c = red[tid][0];
      for (int x = 1; x < kTX; ++x) c += red[tid][x];
      coef_out[loss.out_row(tile, tid)] = c;
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Back through n(·), row-wise, with the loss's per-row extras:
//   du = acc_scale·(acc1 + acc2) + self_scale·self_coef[r]·n(x_r) + partner_scale·partner_coef[r]·n(p_r)
//   dx = (du − n(x_r)(n(x_r)·du))·inv_r   (du itself without normalisation), stored in the input dtype.

template <typename T>
struct FinalizeArgs {
  const char* x;        // own rows [n, D] (input dtype dt)
  const char* partner;  // partner rows [n, D] or nullptr
  char* out;            // dx [n, D] (input dtype)
  int64_t n, D, row_bytes;
  int dt;
  bool normalize;
  const T* acc1;  // [n, D] or nullptr
  const T* acc2;  // [n, D] or nullptr
  T acc_scale;
  const T* self_coef;  // [n] or nullptr
  T self_scale;
  const T* partner_coef;  // [n] or nullptr (needs partner)
  T partner_scale;
};

constexpr int kFinalizeRows = kThreads / 32;  // 32 threads per row

template <typename T>
__global__ void __launch_bounds__(kThreads) finalize_kernel(const FinalizeArgs<T> f) {
  __shared__ T red[3][kFinalizeRows][33];
  const int tid = threadIdx.x, lane = tid % 32, g = tid / 32;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kFinalizeRows + g;
  const bool live = r < f.n;
  const char* xr = live ? f.x + r * f.row_bytes : nullptr;
  const char* pr = (live && f.partner != nullptr) ? f.partner + r * f.row_bytes : nullptr;
  T sx = T(0), sp = T(0);
  if (live && f.normalize) {
    for (int64_t d = lane; d < f.D; d += 32) {
      const T x = load_as<T>(xr, d, f.dt);
      sx += x * x;
      if (pr != nullptr) {
        const T p = load_as<T>(pr, d, f.dt);
        sp += p * p;
      }
    }
  }
  red[0][g][lane] = sx;
  red[1][g][lane] = sp;
  __syncthreads();
  T nx = T(0), np = T(0);
  for (int k = 0; k < 32; ++k) {
    nx += red[0][g][k];
    np += red[1][g][k];
  }
  // n(x) = x / max(‖x‖, eps) · 1[‖x‖ ≠ 0] (a NaN row stays NaN), as the CPU kernels' normalize_rows.
  nx = contrastive::exact_sqrt(nx);
  np = contrastive::exact_sqrt(np);
  const T safe_x = contrastive::safe_norm(nx), safe_p = contrastive::safe_norm(np);
  const T nz_x = nx != T(0) ? T(1) : T(0), nz_p = np != T(0) ? T(1) : T(0);
  const T inv_x = f.normalize ? (T(1) / safe_x) * nz_x : T(1);
  const T acc_s = f.acc_scale;
  const T self_c = (live && f.self_coef != nullptr) ? f.self_scale * f.self_coef[r] : T(0);
  const T part_c = (live && f.partner_coef != nullptr) ? f.partner_scale * f.partner_coef[r] : T(0);
  auto hat = [&](const char* row, int64_t d, T safe, T nz) {
    const T v = load_as<T>(row, d, f.dt);
    return f.normalize ? (v / safe) * nz : v;
  };
  auto du_at = [&](int64_t d, T xh) {
    T acc = T(0);
    if (f.acc1 != nullptr) acc += f.acc1[r * f.D + d];
    if (f.acc2 != nullptr) acc += f.acc2[r * f.D + d];
    T v = acc_s * acc + self_c * xh;
    if (pr != nullptr) v += part_c * hat(pr, d, safe_p, nz_p);
    return v;
  };
  T dot = T(0);
  if (live && f.normalize) {
    for (int64_t d = lane; d < f.D; d += 32) {
      const T xh = hat(xr, d, safe_x, nz_x);
      dot += xh * du_at(d, xh);
    }
  }
  __syncthreads();
  red[2][g][lane] = dot;
  __syncthreads();
  dot = T(0);
  for (int k = 0; k < 32; ++k) dot += red[2][g][k];
  if (!live) return;
  char* outr = f.out + r * f.row_bytes;
  for (int64_t d = lane; d < f.D; d += 32) {
    const T xh = hat(xr, d, safe_x, nz_x);
    const T v = du_at(d, xh);
    store_as<T>(outr, d, f.dt, f.normalize ? (v - xh * dot) * inv_x : v);
  }
}

}  // namespace
}  // namespace tiles
}  // namespace msa_fast
