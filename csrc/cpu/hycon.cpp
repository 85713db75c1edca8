// C++ CPU kernels of hycon_rows / hycon_rows_backward (ops.md §4 on the engine of §1).
//
// Rows of x = [x_l; x_a; x_v] ([3K, d]); row r = m·K + k is anchor (k, m), u = n(x), s_rc = u_r·u_c.
// With c_k the class of sample k (−1: dropped by drop_zero, neither anchor nor candidate of
// IAMCL/IEMCL), Pos1(k) = {j ≠ k : c_j = c_k} and Neg1(k) = {j : c_j ≠ c_k}, both over kept samples:
//   stats[r] = ( Σ_{j∈Pos1} f(s_{r,mK+j}),  Σ_{j∈Neg1} f(s_{r,mK+j}),  Σ_{j∈Pos1} (s_{r,mK+j} − 1)²,   same view
//                Σ_{m′≠m, j∈Pos1} f(s),    Σ_{m′≠m, j∈Neg1} f(s),    Σ_{m′≠m, j∈Pos1} (s − α)²,        other views
//                Σ_{m′≠m} (s_{r,m′K+k} − α)² )                                                       SCL (not halved)
// f = 'cos' s, 'cos01' (1 + s)/2, 'exp_tau' exp(s/τ). A dropped anchor has stats 0…5 = 0. The last
// column is the unhalved SCL sum: the Python side multiplies it by ½.
//
// s is symmetric (Y = X) and so are the pair relations (same/other class, same sample, same view), so
// only the upper triangle is computed: block b holds rows [i0, i1) and its slab s[i0:i1, i0:N) (one
// GEMM, half the flops of the full slab on average). The 3K × 3K matrix never exists.
// Forward: each slab row is reduced by one vectorised loop per view segment, split around the
// anchor's own sample (j = k) — the row side — and, for the columns c ≥ i1, the same masked terms are
// accumulated elementwise into the column anchors' sums — the column side (seg_cols). An anchor's
// stats = its row side + the column sides of the earlier blocks.
// Backward: the stats are sums of per-pair functions φ_r(s_rc), so
//   dU = G U,  G = dS + dSᵀ,  dS_rc = Σ_q g_rq ∂stat_q[r]/∂s_rc,
// and G_rc needs only the row's coefficients g_r and the column's g_c (read from a transposed [7, 3K]
// copy). The slab is rebuilt, G written into it, then dU[i0:i1] += G U[i0:N] and
// dU[i1:N] += G[:, i1:N]ᵀ U[i0:i1] (G is symmetric): 1.5 full GEMMs in all instead of 3, then back
// through n(·).
// Blocks, work items and their reduction: pairwise::triangular_blocking (pairwise.h).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <string>

#include "common/contrastive_args.h"
#include "cpu/pairwise.h"

namespace msa_fast {
namespace {

using pairwise::compute_type;

constexpr int64_t kStats = contrastive::kHyconStats;
using Transform = contrastive::HyconTransform;
using contrastive::kCos;
using contrastive::kCos01;
using contrastive::kExpTau;

// The loop templates are MSA_ALWAYS_INLINE (pairwise.h) and the per-pair math (common/contrastive.h)
// force-inlined, so each target clone below gets its own vectorised copy.

// Forward, one view segment of a slab row over candidates j ∈ [begin, end) (the caller splits around
// j = k): Σ_pos f(s), Σ_neg f(s), Σ_pos (s − target)², for an anchor of class c ≥ 0. Selection (not
// multiplication by a mask) so that a NaN only enters through the pairs of the anchor's own sets.
template <typename T, int F>
MSA_ALWAYS_INLINE void seg_sums(const T* s, const int32_t* cls, int64_t begin, int64_t end, int32_t c, T target,
                               T inv_tau, T* acc) {
  T sp = 0, sn = 0, sq = 0;
#pragma omp simd reduction(+ : sp, sn, sq)
  for (int64_t j = begin; j < end; ++j) {
    T tp, tn, tq;
    contrastive::hycon_pair_terms<T, F>(s[j], contrastive::hycon_positive(cls[j], c),
                                        contrastive::hycon_negative(cls[j], c), target, inv_tau, tp, tn, tq);
    sp += tp;
    sn += tn;
    sq += tq;
  }
  acc[0] += sp;
  acc[1] += sn;
  acc[2] += sq;
}

// Backward, one view segment in place: s_j ← G = dS_rj + dS_jr for j ∈ [begin, end), anchor class
// c ≥ 0. (ap, an, aq) are the row's coefficients of (Σ_pos f, Σ_neg f, Σ_pos (s − target)²) and
// (Ap, An, Aq) the columns' coefficients of the same three statistics.
template <typename T, int F>
MSA_ALWAYS_INLINE void seg_grad(T* s, const int32_t* cls, int64_t begin, int64_t end, int32_t c, T target,
                               T inv_tau, T ap, T an, T aq, const T* Ap, const T* An, const T* Aq) {
#pragma omp simd
  for (int64_t j = begin; j < end; ++j) {
    const T v = s[j];
    const int32_t cj = cls[j];
    s[j] = contrastive::hycon_pair_grad(v, contrastive::hycon_positive(cj, c), contrastive::hycon_negative(cj, c), target,
                                        contrastive::hycon_transform_grad<T, F>(v, inv_tau), ap + Ap[j], an + An[j],
                                        aq + Aq[j]);
  }
}

// Forward, the transposed side of one view segment (triangular slabs): the slab row is candidate
// (k, m) of class c ≥ 0 for the anchors of the columns j ∈ [begin, end), whose own sums (Ap, An, Aq)
// = (Σ_pos f(s), Σ_neg f(s), Σ_pos (s − target)²) are accumulated elementwise. The pair relations are
// symmetric, so the masks are those of seg_sums.
template <typename T, int F>
MSA_ALWAYS_INLINE void seg_cols(const T* s, const int32_t* cls, int64_t begin, int64_t end, int32_t c, T target,
                               T inv_tau, T* Ap, T* An, T* Aq) {
#pragma omp simd
  for (int64_t j = begin; j < end; ++j) {
    T tp, tn, tq;
    contrastive::hycon_pair_terms<T, F>(s[j], contrastive::hycon_positive(cls[j], c),
                                        contrastive::hycon_negative(cls[j], c), target, inv_tau, tp, tn, tq);
    Ap[j] += tp;
    An[j] += tn;
    Aq[j] += tq;
  }
}

// Vectorised float instantiations (one clone per instruction set); double runs the plain templates.
#define MSA_HYCON_FLOAT_LOOPS(F, NAME)                                                                           \
  MSA_VECTOR_CLONES void seg_sums_##NAME(const float* s, const int32_t* cls, int64_t b, int64_t e, int32_t c,    \
                                         float t, float it, float* acc) {                                        \
    seg_sums<float, F>(s, cls, b, e, c, t, it, acc);                                                             \
  }                                                                                                              \
  MSA_VECTOR_CLONES void seg_grad_##NAME(float* s, const int32_t* cls, int64_t b, int64_t e, int32_t c, float t, \
                                         float it, float ap, float an, float aq, const float* Ap,                \
                                         const float* An, const float* Aq) {                                     \
    seg_grad<float, F>(s, cls, b, e, c, t, it, ap, an, aq, Ap, An, Aq);                                          \
  }                                                                                                              \
  MSA_VECTOR_CLONES void seg_cols_##NAME(const float* s, const int32_t* cls, int64_t b, int64_t e, int32_t c,    \
                                         float t, float it, float* Ap, float* An, float* Aq) {                   \
    seg_cols<float, F>(s, cls, b, e, c, t, it, Ap, An, Aq);                                                      \
  }
MSA_HYCON_FLOAT_LOOPS(kCos, cos)
MSA_HYCON_FLOAT_LOOPS(kCos01, cos01)
MSA_HYCON_FLOAT_LOOPS(kExpTau, exp_tau)
#undef MSA_HYCON_FLOAT_LOOPS

template <typename T>
struct Loops {
  static void sums(int f, const T* s, const int32_t* cls, int64_t b, int64_t e, int32_t c, T t, T it, T* acc) {
    switch (f) {
      case kCos: return seg_sums<T, kCos>(s, cls, b, e, c, t, it, acc);
      case kCos01: return seg_sums<T, kCos01>(s, cls, b, e, c, t, it, acc);
      default: return seg_sums<T, kExpTau>(s, cls, b, e, c, t, it, acc);
    }
  }
  static void cols(int f, const T* s, const int32_t* cls, int64_t b, int64_t e, int32_t c, T t, T it, T* Ap, T* An,
                   T* Aq) {
    switch (f) {
      case kCos: return seg_cols<T, kCos>(s, cls, b, e, c, t, it, Ap, An, Aq);
      case kCos01: return seg_cols<T, kCos01>(s, cls, b, e, c, t, it, Ap, An, Aq);
      default: return seg_cols<T, kExpTau>(s, cls, b, e, c, t, it, Ap, An, Aq);
    }
  }
  static void grad(int f, T* s, const int32_t* cls, int64_t b, int64_t e, int32_t c, T t, T it, T ap, T an, T aq,
                   const T* Ap, const T* An, const T* Aq) {
    switch (f) {
      case kCos: return seg_grad<T, kCos>(s, cls, b, e, c, t, it, ap, an, aq, Ap, An, Aq);
      case kCos01: return seg_grad<T, kCos01>(s, cls, b, e, c, t, it, ap, an, aq, Ap, An, Aq);
      default: return seg_grad<T, kExpTau>(s, cls, b, e, c, t, it, ap, an, aq, Ap, An, Aq);
    }
  }
};
template <>
struct Loops<float> {
  static void sums(int f, const float* s, const int32_t* cls, int64_t b, int64_t e, int32_t c, float t, float it,
                   float* acc) {
    switch (f) {
      case kCos: return seg_sums_cos(s, cls, b, e, c, t, it, acc);
      case kCos01: return seg_sums_cos01(s, cls, b, e, c, t, it, acc);
      default: return seg_sums_exp_tau(s, cls, b, e, c, t, it, acc);
    }
  }
  static void cols(int f, const float* s, const int32_t* cls, int64_t b, int64_t e, int32_t c, float t, float it,
                   float* Ap, float* An, float* Aq) {
    switch (f) {
      case kCos: return seg_cols_cos(s, cls, b, e, c, t, it, Ap, An, Aq);
      case kCos01: return seg_cols_cos01(s, cls, b, e, c, t, it, Ap, An, Aq);
      default: return seg_cols_exp_tau(s, cls, b, e, c, t, it, Ap, An, Aq);
    }
  }
  static void grad(int f, float* s, const int32_t* cls, int64_t b, int64_t e, int32_t c, float t, float it, float ap,
                   float an, float aq, const float* Ap, const float* An, const float* Aq) {
    switch (f) {
      case kCos: return seg_grad_cos(s, cls, b, e, c, t, it, ap, an, aq, Ap, An, Aq);
      case kCos01: return seg_grad_cos01(s, cls, b, e, c, t, it, ap, an, aq, Ap, An, Aq);
      default: return seg_grad_exp_tau(s, cls, b, e, c, t, it, ap, an, aq, Ap, An, Aq);
    }
  }
};

// Class ids as dense int32 ranks (equal ids ↔ equal ranks, ranks ≥ 0), −1 kept as "dropped": int32
// lanes match the float lanes of the epilogue loops.
at::Tensor dense_classes(const at::Tensor& classes) {
  const at::Tensor c = classes.contiguous();
  const at::Tensor sorted = std::get<0>(at::sort(c));
  at::Tensor rank = at::searchsorted(sorted, c);  // index of the first equal id: a rank in [0, K)
  return rank.masked_fill_(c == -1, -1).to(at::kInt).contiguous();
}

using pairwise::around;
using pairwise::Blocking;
using pairwise::triangular_blocking;

at::Tensor hycon_rows_cpu(const at::Tensor& x, const at::Tensor& classes, double alpha, c10::string_view transform_sv,
                          double tau) {
  const contrastive::HyconArgs a = contrastive::check_hycon(x, classes, tau, std::string(transform_sv));
  const at::ScalarType ct = compute_type(x);
  const pairwise::Normalized n = pairwise::normalize_rows(x, ct, /*normalize=*/true);
  const at::Tensor cls_t = dense_classes(classes);
  const int64_t K = a.K, N = 3 * K;
  at::Tensor stats = at::empty({N, kStats}, x.options().dtype(ct));
  const Blocking bl = triangular_blocking(N, at::elementSize(ct));
  // Sums of the anchors in the columns (pairs (c, r) with c ≥ i1 seen from the transposed side), per
  // work item: [items, 7, N], statistic-major so that the column loops stream them.
  at::Tensor col_acc = at::zeros({bl.items, kStats, N}, n.u.options());
  AT_DISPATCH_FLOATING_TYPES(ct, "msa_fast_hycon_rows_cpu", [&] {
    using T = scalar_t;
    const T inv_tau = T(1) / T(tau), al = T(alpha);
    const int32_t* cls = cls_t.data_ptr<int32_t>();
    T* out = stats.data_ptr<T>();
    pairwise::for_each_triangular_slab(bl, n.u, [&](const pairwise::TriangularSlab& sl) {
      const int64_t i0 = sl.i0, rows = sl.rows, i1 = i0 + rows, W = sl.W;
      T* acc = col_acc[sl.item].data_ptr<T>();
      const T* sp = sl.s.data_ptr<T>();
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t i = i0 + r, m = i / K, k = i % K;
        const int32_t c = cls[k];
        const T* row = sp + r * W;  // row[g − i0] = s(i, g) for global column g ≥ i0
        T st[kStats] = {0, 0, 0, 0, 0, 0, 0};
        for (int64_t mp = 0; mp < 3; ++mp) {
          const int64_t q = mp == m ? 0 : 3;
          const T target = mp == m ? T(1) : al;
          // Row side: this anchor's own sums over the columns g = mp·K + j ≥ i0.
          const int64_t jb = std::clamp<int64_t>(i0 - mp * K, 0, K);
          if (jb < K) {
            const T* seg = row + (mp * K + jb - i0);
            if (contrastive::hycon_kept(c))
              around(0, K - jb, k - jb, [&](int64_t lo, int64_t hi) {
                Loops<T>::sums(a.f, seg, cls + jb, lo, hi, c, target, inv_tau, st + q);
              });
            if (mp != m && k >= jb) {
              const T d = seg[k - jb] - al;
              st[6] += d * d;
            }
          }
          // Column side: the anchors g = mp·K + j ≥ i1 (rows of later blocks, whose slabs start past
          // this row) get this row as a candidate.
          const int64_t jc = std::clamp<int64_t>(i1 - mp * K, 0, K);
          if (jc < K) {
            const T* seg = row + (mp * K + jc - i0);
            const int64_t g0 = mp * K + jc;
            if (contrastive::hycon_kept(c))
              around(0, K - jc, k - jc, [&](int64_t lo, int64_t hi) {
                Loops<T>::cols(a.f, seg, cls + jc, lo, hi, c, target, inv_tau, acc + q * N + g0,
                               acc + (q + 1) * N + g0, acc + (q + 2) * N + g0);
              });
            if (mp != m && k >= jc) {
              const T d = seg[k - jc] - al;
              acc[6 * N + mp * K + k] += d * d;
            }
          }
        }
        std::copy(st, st + kStats, out + i * kStats);
      }
    });
  });
  // Each anchor's sums = its row side + the column sides of the blocks before its own (fixed order).
  stats.add_(col_acc.sum(0).t());
  return stats;
}

at::Tensor hycon_rows_backward_cpu(const at::Tensor& grad_stats, const at::Tensor& x, const at::Tensor& classes,
                                   double alpha, c10::string_view transform_sv, double tau) {
  const contrastive::HyconArgs a = contrastive::check_hycon(x, classes, tau, std::string(transform_sv));
  const int64_t K = a.K, N = 3 * K;
  contrastive::check_hycon_grad(grad_stats, x, K);
  const at::ScalarType ct = compute_type(x);
  const pairwise::Normalized n = pairwise::normalize_rows(x, ct, /*normalize=*/true);
  const at::Tensor cls_t = dense_classes(classes);
  // Coefficients row-major ([3K, 7], the row's own) and transposed ([7, 3K], the columns', contiguous
  // per statistic so the epilogue streams them).
  const at::Tensor g = grad_stats.to(ct).contiguous();
  const at::Tensor gt = g.t().contiguous();
  const Blocking bl = triangular_blocking(N, at::elementSize(ct));
  // dU per work item (the transposed GEMM of a block writes the rows of later blocks), summed after.
  at::Tensor du_items = at::zeros({bl.items, N, n.u.size(1)}, n.u.options());
  AT_DISPATCH_FLOATING_TYPES(ct, "msa_fast_hycon_rows_backward_cpu", [&] {
    using T = scalar_t;
    const T inv_tau = T(1) / T(tau), al = T(alpha);
    const int32_t* cls = cls_t.data_ptr<int32_t>();
    const T* gp = g.data_ptr<T>();
    const T* gtp = gt.data_ptr<T>();
    pairwise::for_each_triangular_slab(bl, n.u, [&](const pairwise::TriangularSlab& sl) {
      const int64_t i0 = sl.i0, rows = sl.rows, W = sl.W;
      at::Tensor du = du_items[sl.item];
      T* sp = sl.s.data_ptr<T>();
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t i = i0 + r, m = i / K, k = i % K;
        const int32_t c = cls[k];
        const T* ar = gp + i * kStats;
        T* row = sp + r * W;
        for (int64_t mp = 0; mp < 3; ++mp) {
          const int64_t jb = std::clamp<int64_t>(i0 - mp * K, 0, K);
          if (jb >= K) continue;
          T* seg = row + (mp * K + jb - i0);
          const int64_t q = mp == m ? 0 : 3;  // same view: stats 0–2, other views: 3–5
          const T target = mp == m ? T(1) : al;
          const bool own = k >= jb;  // column (k, mp) is in this slab row
          const T s_kk = own ? seg[k - jb] : T(0);
          if (contrastive::hycon_kept(c)) {
            const T* A = gtp + q * N + mp * K + jb;
            around(0, K - jb, k - jb, [&](int64_t lo, int64_t hi) {
              Loops<T>::grad(a.f, seg, cls + jb, lo, hi, c, target, inv_tau, ar[q], ar[q + 1], ar[q + 2], A,
                             A + N, A + 2 * N);
            });
          } else {
            std::fill(seg, seg + (K - jb), T(0));  // a dropped sample is in no IAMCL/IEMCL pair
          }
          // j = k: no pair in the same view; SCL's (s − α)² in the others, for row (k, m) and (k, m′).
          if (own)
            seg[k - jb] = mp == m ? T(0) : (ar[6] + gtp[6 * N + mp * K + k]) * (T(2) * (s_kk - al));
        }
      }
      pairwise::add_symmetric_slab_grad(du, sl, n.u);
    });
  });
  return pairwise::normalize_backward(du_items.sum(0), n).to(x.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(msa_fast, CPU, m) {
  m.impl("hycon_rows", &hycon_rows_cpu);
  m.impl("hycon_rows_backward", &hycon_rows_backward_cpu);
}

}  // namespace msa_fast
