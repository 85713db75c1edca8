// C++ CPU kernels of supcon_rows / supcon_rows_backward (ops.md §2 on the engine of §1).
//
// Per anchor i (PML SupCon, Khosla et al. Eq. 2 'out'; MMCL Eq. 8 'in'), with s_ij = u_i·u_j/τ,
// A(i) = {j ≠ i}, P(i) = {j ≠ i : label_j = label_i}:
//   lse_all_i = LSE_{A(i)} s_ij,  n_i = |P(i)|,
//   pos_stat_i = Σ_{P(i)} s_ij ('out') or LSE_{P(i)} s_ij ('in'),
//   ℓ_i = lse_all_i − pos_stat_i / n_i ('out') or lse_all_i − pos_stat_i ('in'), 0 if n_i = 0.
// Backward rebuilds each slab and forms G_ij = g_i (p_ij − 1[j∈P(i)]/n_i) ('out') or
// g_i (p_ij − q_ij) ('in'); dU = (G + Gᵀ) U / τ, then back through n(·).
//
// Two engines:
// * symmetric (normalize=True and τ > 2/kMaxShiftedLogit, every paper setting): cosines lie in [−1, 1],
//   so the logits have the known upper bound 1/τ and the exps can be taken as e_ij = exp((s_ij − 1)/τ)
//   with no running max (none of them overflows, and with 2/τ ≤ kMaxShiftedLogit none underflows).
//   Every e_ij then serves both anchors i and j: only the upper triangle of s is computed
//   (pairwise::triangular_blocking), one exp per pair feeds row i's sums and column j's sums, and the
//   backward forms H_ij = G_ij + G_ji from one exp too (p_ij = e_ij·exp(1/τ − lse_i)), so the whole
//   forward+backward costs 2 GEMMs' flops (½ forward, ½ recompute, 1 for dU) instead of 4.
// * row slabs (normalize=False or very small τ): the running-max two-pass form over full row slabs.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common/contrastive_args.h"
#include "cpu/pairwise.h"

namespace msa_fast {
namespace {

using pairwise::compute_type;

using pairwise::fast_exp;
using contrastive::same_label;

// Largest |shift| the fixed-shift exps may meet (fp32 exp underflows below −87.3): 2/τ ≤ 80, τ ≥ 0.025.
constexpr double kMaxShiftedLogit = 80.0;

bool symmetric_engine(bool normalize, double temperature) {
  return normalize && 2.0 / temperature <= kMaxShiftedLogit;
}

template <typename T>
struct RowInput {
  const T* s;           // raw similarities u_i·u_j of row i, length n
  const int32_t* lab;   // dense label ids of all columns (int32 lanes match float lanes)
  int32_t label;        // label id of row i
  int64_t begin, end;   // column range (the caller splits around j = i)
};

// Pass 1: max over A(i) and, for 'in', over P(i).
template <typename T>
MSA_ALWAYS_INLINE void row_max(const RowInput<T>& r, T& m_all, T& m_pos) {
  T ma = m_all, mp = m_pos;
  // omp simd lets the reductions vectorise (fixed lane order, so still deterministic) without -ffast-math.
#pragma omp simd reduction(max : ma, mp)
  for (int64_t j = r.begin; j < r.end; ++j) {
    const T v = r.s[j];
    ma = v > ma ? v : ma;
    mp = (same_label(r.lab[j], r.label) && v > mp) ? v : mp;
  }
  m_all = ma;
  m_pos = mp;
}

// Pass 2: Σ exp over A(i), Σ s over P(i), |P(i)|, and for 'in' Σ exp over P(i).
template <typename T, bool kIn>
MSA_ALWAYS_INLINE void row_sums(const RowInput<T>& r, T m_all, T m_pos, T inv_tau, T& sum_all, T& sum_pos_s, T& n_pos,
                     T& sum_pos_exp) {
  T sa = 0, ss = 0, np = 0, se = 0;
#pragma omp simd reduction(+ : sa, ss, np, se)
  for (int64_t j = r.begin; j < r.end; ++j) {
    const T v = r.s[j];
    const bool pos = same_label(r.lab[j], r.label);
    sa += fast_exp((v - m_all) * inv_tau);
    ss += pos ? v : T(0);
    np += pos ? T(1) : T(0);
    if (kIn) se += pos ? fast_exp((v - m_pos) * inv_tau) : T(0);
  }
  sum_all += sa;
  sum_pos_s += ss;
  n_pos += np;
  sum_pos_exp += se;
}

// G_ij in place of s_ij over a column range (backward).
template <typename T, bool kIn>
MSA_ALWAYS_INLINE void row_grad(T* s, const int32_t* lab, int32_t label, int64_t begin, int64_t end, T g, T inv_tau, T lse,
                     T pos_stat, T inv_n) {
  for (int64_t j = begin; j < end; ++j) {
    s[j] = contrastive::supcon_pair_grad<T, kIn>(s[j] * inv_tau, same_label(lab[j], label), g, lse, pos_stat, inv_n);
  }
}

// Vectorised instantiations for float: each clone inlines the template for its instruction set.
MSA_VECTOR_CLONES void row_max_f(const RowInput<float>& r, float& m_all, float& m_pos) { row_max(r, m_all, m_pos); }
MSA_VECTOR_CLONES void row_sums_out_f(const RowInput<float>& r, float ma, float mp, float it, float& sa, float& ss,
                                      float& np, float& se) {
  row_sums<float, false>(r, ma, mp, it, sa, ss, np, se);
}
MSA_VECTOR_CLONES void row_sums_in_f(const RowInput<float>& r, float ma, float mp, float it, float& sa, float& ss,
                                     float& np, float& se) {
  row_sums<float, true>(r, ma, mp, it, sa, ss, np, se);
}
MSA_VECTOR_CLONES void row_grad_out_f(float* s, const int32_t* l, int32_t li, int64_t b, int64_t e, float g, float it,
                                      float lse, float ps, float inv_n) {
  row_grad<float, false>(s, l, li, b, e, g, it, lse, ps, inv_n);
}
MSA_VECTOR_CLONES void row_grad_in_f(float* s, const int32_t* l, int32_t li, int64_t b, int64_t e, float g, float it,
                                     float lse, float ps, float inv_n) {
  row_grad<float, true>(s, l, li, b, e, g, it, lse, ps, inv_n);
}

// One call site per loop for both compute types: float goes to the vectorised clones, double to the
// plain templates (fp64 exists for gradcheck, not speed).
template <typename T>
struct Loops {
  static void max(const RowInput<T>& r, T& a, T& p) { row_max(r, a, p); }
  static void sums(bool in, const RowInput<T>& r, T ma, T mp, T it, T& sa, T& ss, T& np, T& se) {
    in ? row_sums<T, true>(r, ma, mp, it, sa, ss, np, se) : row_sums<T, false>(r, ma, mp, it, sa, ss, np, se);
  }
  static void grad(bool in, T* s, const int32_t* l, int32_t li, int64_t b, int64_t e, T g, T it, T lse, T ps, T inv_n) {
    in ? row_grad<T, true>(s, l, li, b, e, g, it, lse, ps, inv_n) : row_grad<T, false>(s, l, li, b, e, g, it, lse, ps, inv_n);
  }
};
template <>
struct Loops<float> {
  static void max(const RowInput<float>& r, float& a, float& p) { row_max_f(r, a, p); }
  static void sums(bool in, const RowInput<float>& r, float ma, float mp, float it, float& sa, float& ss, float& np,
                   float& se) {
    in ? row_sums_in_f(r, ma, mp, it, sa, ss, np, se) : row_sums_out_f(r, ma, mp, it, sa, ss, np, se);
  }
  static void grad(bool in, float* s, const int32_t* l, int32_t li, int64_t b, int64_t e, float g, float it, float lse,
                   float ps, float inv_n) {
    in ? row_grad_in_f(s, l, li, b, e, g, it, lse, ps, inv_n) : row_grad_out_f(s, l, li, b, e, g, it, lse, ps, inv_n);
  }
};

// ------------------------------------------------------------------------------------------------
// Symmetric engine: epilogue loops over one slab row of anchor i (label li), columns [begin, end).

// Row i's sums (Σ e, Σ_P s, |P|, Σ_P e), e = exp((s − 1)/τ), over columns [begin, end). With kCols
// (columns of later blocks) the same e_ij also goes to the column anchors' accumulators acc_*[j] (the
// pair relation is symmetric); without (the diagonal block, whose pairs every row of the block sees
// itself) the acc_* pointers are unused.
template <typename T, bool kCols>
MSA_ALWAYS_INLINE void sym_sums(const T* s, const int32_t* lab, int32_t li, int64_t begin, int64_t end, T inv_tau,
                                T* st, T* acc_e, T* acc_s, T* acc_n, T* acc_pe) {
  T sa = 0, ss = 0, np = 0, se = 0;
#pragma omp simd reduction(+ : sa, ss, np, se)
  for (int64_t j = begin; j < end; ++j) {
    const T v = s[j];
    const bool pos = same_label(lab[j], li);
    const T e = fast_exp((v - T(1)) * inv_tau);
    const T ps = pos ? v : T(0), pn = pos ? T(1) : T(0), pe = pos ? e : T(0);
    sa += e;
    ss += ps;
    np += pn;
    se += pe;
    if (kCols) {
      acc_e[j] += e;
      acc_s[j] += ps;
      acc_n[j] += pn;
      acc_pe[j] += pe;
    }
  }
  st[0] += sa;
  st[1] += ss;
  st[2] += np;
  st[3] += se;
}

// Backward, in place: s_ij ← H_ij = G_ij + G_ji from one exp. With a = g·exp(1/τ − lse) (the softmax
// factor) and b = g/n ('out') or g·exp(1/τ − LSE_P) ('in') per anchor (0 for inactive anchors):
//   'out': H = e (a_i + a_j) − 1[pos] (b_i + b_j),   'in': H = e (a_i + a_j − 1[pos] (b_i + b_j)).
// A pair of two inactive anchors stays exactly 0 (so a NaN there does not leak into dU, as in the
// row-slab engine).
template <typename T, bool kIn>
MSA_ALWAYS_INLINE void sym_grad(T* s, const int32_t* lab, int32_t li, int64_t begin, int64_t end, T inv_tau, T ai,
                                T bi, const T* A, const T* B) {
#pragma omp simd
  for (int64_t j = begin; j < end; ++j) {
    const T e = fast_exp((s[j] - T(1)) * inv_tau);
    const bool pos = same_label(lab[j], li);
    const T a = ai + A[j], b = pos ? bi + B[j] : T(0);
    const T h = kIn ? e * (a - b) : e * a - b;
    s[j] = (ai == T(0) && A[j] == T(0) && bi == T(0) && B[j] == T(0)) ? T(0) : h;
  }
}

MSA_VECTOR_CLONES void sym_row_f(const float* s, const int32_t* l, int32_t li, int64_t b, int64_t e, float it,
                                 float* st) {
  sym_sums<float, false>(s, l, li, b, e, it, st, nullptr, nullptr, nullptr, nullptr);
}
MSA_VECTOR_CLONES void sym_row_cols_f(const float* s, const int32_t* l, int32_t li, int64_t b, int64_t e, float it,
                                      float* st, float* ae, float* as, float* an, float* ape) {
  sym_sums<float, true>(s, l, li, b, e, it, st, ae, as, an, ape);
}
MSA_VECTOR_CLONES void sym_grad_out_f(float* s, const int32_t* l, int32_t li, int64_t b, int64_t e, float it, float ai,
                                      float bi, const float* A, const float* B) {
  sym_grad<float, false>(s, l, li, b, e, it, ai, bi, A, B);
}
MSA_VECTOR_CLONES void sym_grad_in_f(float* s, const int32_t* l, int32_t li, int64_t b, int64_t e, float it, float ai,
                                     float bi, const float* A, const float* B) {
  sym_grad<float, true>(s, l, li, b, e, it, ai, bi, A, B);
}

template <typename T>
struct SymLoops {
  static void row(const T* s, const int32_t* l, int32_t li, int64_t b, int64_t e, T it, T* st) {
    sym_sums<T, false>(s, l, li, b, e, it, st, nullptr, nullptr, nullptr, nullptr);
  }
  static void row_cols(const T* s, const int32_t* l, int32_t li, int64_t b, int64_t e, T it, T* st, T* ae, T* as,
                       T* an, T* ape) {
    sym_sums<T, true>(s, l, li, b, e, it, st, ae, as, an, ape);
  }
  static void grad(bool in, T* s, const int32_t* l, int32_t li, int64_t b, int64_t e, T it, T ai, T bi, const T* A,
                   const T* B) {
    in ? sym_grad<T, true>(s, l, li, b, e, it, ai, bi, A, B) : sym_grad<T, false>(s, l, li, b, e, it, ai, bi, A, B);
  }
};
template <>
struct SymLoops<float> {
  static void row(const float* s, const int32_t* l, int32_t li, int64_t b, int64_t e, float it, float* st) {
    sym_row_f(s, l, li, b, e, it, st);
  }
  static void row_cols(const float* s, const int32_t* l, int32_t li, int64_t b, int64_t e, float it, float* st,
                       float* ae, float* as, float* an, float* ape) {
    sym_row_cols_f(s, l, li, b, e, it, st, ae, as, an, ape);
  }
  static void grad(bool in, float* s, const int32_t* l, int32_t li, int64_t b, int64_t e, float it, float ai, float bi,
                   const float* A, const float* B) {
    in ? sym_grad_in_f(s, l, li, b, e, it, ai, bi, A, B) : sym_grad_out_f(s, l, li, b, e, it, ai, bi, A, B);
  }
};

// Forward, symmetric engine: raw sums [N, 4] = (Σ_A e, Σ_P s, |P|, Σ_P e) of every anchor.
template <typename T>
at::Tensor symmetric_sums(const at::Tensor& u, const int32_t* lab, T inv_tau) {
  const int64_t N = u.size(0);
  const pairwise::Blocking bl = pairwise::triangular_blocking(N, sizeof(T));
  at::Tensor sums = at::zeros({N, 4}, u.options());
  at::Tensor col_acc = at::zeros({bl.items, 4, N}, u.options());  // column side, per work item
  T* out = sums.data_ptr<T>();
  pairwise::for_each_triangular_slab(bl, u, [&](const pairwise::TriangularSlab& sl) {
    const int64_t i0 = sl.i0, rows = sl.rows, W = sl.W;
    T* acc = col_acc[sl.item].data_ptr<T>();
    const T* sp = sl.s.data_ptr<T>();
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = i0 + r;
      const T* row = sp + r * W;  // row[j − i0] = s_ij
      T* st = out + i * 4;
      pairwise::around(0, rows, r, [&](int64_t lo, int64_t hi) {
        SymLoops<T>::row(row, lab + i0, lab[i], lo, hi, inv_tau, st);
      });
      SymLoops<T>::row_cols(row, lab + i0, lab[i], rows, W, inv_tau, st, acc + i0, acc + N + i0,
                            acc + 2 * N + i0, acc + 3 * N + i0);
    }
  });
  sums.add_(col_acc.sum(0).t());
  return sums;
}

// Backward, symmetric engine: dU/τ⁻¹ = H U with H = G + Gᵀ from the per-anchor factors a, b (sym_grad).
template <typename T>
at::Tensor symmetric_grad(const at::Tensor& u, const int32_t* lab, T inv_tau, bool variant_in, const at::Tensor& a_t,
                          const at::Tensor& b_t) {
  const int64_t N = u.size(0);
  const pairwise::Blocking bl = pairwise::triangular_blocking(N, sizeof(T));
  at::Tensor du_items = at::zeros({bl.items, N, u.size(1)}, u.options());
  const T *A = a_t.data_ptr<T>(), *B = b_t.data_ptr<T>();
  pairwise::for_each_triangular_slab(bl, u, [&](const pairwise::TriangularSlab& sl) {
    const int64_t i0 = sl.i0, rows = sl.rows, W = sl.W;
    at::Tensor du = du_items[sl.item];
    T* sp = sl.s.data_ptr<T>();
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = i0 + r;
      T* row = sp + r * W;
      pairwise::around(0, W, r, [&](int64_t lo, int64_t hi) {
        SymLoops<T>::grad(variant_in, row, lab + i0, lab[i], lo, hi, inv_tau, A[i], B[i], A + i0, B + i0);
      });
      row[r] = T(0);
    }
    pairwise::add_symmetric_slab_grad(du, sl, u);
  });
  return du_items.sum(0);
}

// Labels are compared by equality only: dense int32 ids keep the label lanes as wide as the float lanes,
// so the epilogue loops vectorise fully.
at::Tensor dense_label_ids(const at::Tensor& labels) {
  return std::get<1>(at::_unique(labels, /*sorted=*/false, /*return_inverse=*/true)).to(at::kInt).contiguous();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> supcon_rows_cpu(const at::Tensor& z, const at::Tensor& labels_in,
                                                                           double temperature, bool variant_in,
                                                                           bool normalize) {
  contrastive::check_supcon(z, labels_in, temperature);
  const at::ScalarType ct = compute_type(z);
  const pairwise::Normalized n = pairwise::normalize_rows(z, ct, normalize);
  const at::Tensor labels = dense_label_ids(labels_in);
  const int64_t N = z.size(0);
  // fp32 statistics (fp64 for fp64 input, so gradcheck sees full precision).
  const auto stat_opts = z.options().dtype(ct);
  at::Tensor loss = at::empty({N}, stat_opts), lse_all = at::empty({N}, stat_opts), pos_stat = at::empty({N}, stat_opts),
             n_pos = at::empty({N}, stat_opts);
  if (symmetric_engine(normalize, temperature)) {
    AT_DISPATCH_FLOATING_TYPES(ct, "msa_fast_supcon_rows_cpu", [&] {
      using T = scalar_t;
      const T inv_tau = T(1) / T(temperature);
      const at::Tensor sums = symmetric_sums<T>(n.u, labels.data_ptr<int32_t>(), inv_tau);
      const T* sp = sums.data_ptr<T>();
      T *lp = loss.data_ptr<T>(), *ap = lse_all.data_ptr<T>(), *pp = pos_stat.data_ptr<T>(), *cp = n_pos.data_ptr<T>();
      for (int64_t i = 0; i < N; ++i) {
        const T* st = sp + 4 * i;  // (Σ e, Σ_P s, |P|, Σ_P e) with e = exp(s/τ − 1/τ)
        const T lse = inv_tau + std::log(st[0]);
        const T stat = variant_in ? inv_tau + std::log(st[3]) : st[1] * inv_tau;
        lp[i] = contrastive::supcon_row_loss(lse, stat, st[2], variant_in);
        ap[i] = lse;
        pp[i] = stat;
        cp[i] = st[2];
      }
    });
    return {loss, lse_all, pos_stat, n_pos};
  }
  AT_DISPATCH_FLOATING_TYPES(ct, "msa_fast_supcon_rows_cpu", [&] {
    using T = scalar_t;
    const T inv_tau = T(1) / T(temperature);
    const int64_t bm = pairwise::block_rows(N, N, sizeof(T));
    at::Tensor slab = at::empty({bm, N}, n.u.options());
    const at::Tensor ut = n.u.t();
    const int32_t* lab = labels.data_ptr<int32_t>();
    for (int64_t i0 = 0; i0 < N; i0 += bm) {
      const int64_t rows = std::min(bm, N - i0);
      at::Tensor s = slab.narrow(0, 0, rows);
      at::mm_out(s, n.u.narrow(0, i0, rows), ut);  // raw u_i·u_j of this block
      const T* sp = s.data_ptr<T>();
      at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t i = i0 + r;
          const T ninf = -std::numeric_limits<T>::infinity();
          const RowInput<T> left{sp + r * N, lab, lab[i], 0, i}, right{sp + r * N, lab, lab[i], i + 1, N};
          T m_all = ninf, m_pos = ninf;
          Loops<T>::max(left, m_all, m_pos);
          Loops<T>::max(right, m_all, m_pos);
          T sum_all = 0, sum_pos_s = 0, count = 0, sum_pos_exp = 0;
          Loops<T>::sums(variant_in, left, m_all, m_pos, inv_tau, sum_all, sum_pos_s, count, sum_pos_exp);
          Loops<T>::sums(variant_in, right, m_all, m_pos, inv_tau, sum_all, sum_pos_s, count, sum_pos_exp);
          const T lse = m_all * inv_tau + std::log(sum_all);
          const T stat = variant_in ? m_pos * inv_tau + std::log(sum_pos_exp) : sum_pos_s * inv_tau;
          loss.data_ptr<T>()[i] = contrastive::supcon_row_loss(lse, stat, count, variant_in);
          lse_all.data_ptr<T>()[i] = lse;
          pos_stat.data_ptr<T>()[i] = stat;
          n_pos.data_ptr<T>()[i] = count;
        }
      });
    }
  });
  return {loss, lse_all, pos_stat, n_pos};
}

at::Tensor supcon_rows_backward_cpu(const at::Tensor& grad_rows, const at::Tensor& z, const at::Tensor& labels_in,
                                    const at::Tensor& lse_all, const at::Tensor& pos_stat, const at::Tensor& n_pos,
                                    double temperature, bool variant_in, bool normalize) {
  contrastive::check_supcon(z, labels_in, temperature);
  const int64_t N = z.size(0);
  contrastive::check_rows(contrastive::kSupconOp,
                          {{"grad_rows", &grad_rows}, {"lse_all", &lse_all}, {"pos_stat", &pos_stat}, {"n_pos", &n_pos}},
                          N, "N", z);
  const at::ScalarType ct = compute_type(z);
  const pairwise::Normalized n = pairwise::normalize_rows(z, ct, normalize);
  const at::Tensor labels = dense_label_ids(labels_in);
  // Statistics in the compute dtype: the fp64 path keeps fp64 throughout (gradcheck).
  const at::Tensor g = grad_rows.to(ct).contiguous(), lse = lse_all.to(ct).contiguous(),
                   ps = pos_stat.to(ct).contiguous(), cnt = n_pos.to(ct).contiguous();
  if (symmetric_engine(normalize, temperature)) {
    at::Tensor du;
    AT_DISPATCH_FLOATING_TYPES(ct, "msa_fast_supcon_rows_backward_cpu", [&] {
      using T = scalar_t;
      const T inv_tau = T(1) / T(temperature);
      // Per-anchor factors of H (sym_grad): 0 for anchors that pass no gradient.
      at::Tensor a_t = at::empty({N}, g.options()), b_t = at::empty({N}, g.options());
      const T *gp = g.data_ptr<T>(), *lp = lse.data_ptr<T>(), *pp = ps.data_ptr<T>(), *cp = cnt.data_ptr<T>();
      T *A = a_t.data_ptr<T>(), *B = b_t.data_ptr<T>();
      for (int64_t i = 0; i < N; ++i) {
        const bool active = contrastive::supcon_row_active(gp[i], cp[i]);
        A[i] = active ? gp[i] * std::exp(inv_tau - lp[i]) : T(0);
        B[i] = active ? (variant_in ? gp[i] * std::exp(inv_tau - pp[i]) : gp[i] / cp[i]) : T(0);
      }
      du = symmetric_grad<T>(n.u, labels.data_ptr<int32_t>(), inv_tau, variant_in, a_t, b_t).mul_(inv_tau);
    });
    return pairwise::normalize_backward(du, n).to(z.scalar_type());
  }
  at::Tensor du = at::zeros_like(n.u);
  AT_DISPATCH_FLOATING_TYPES(ct, "msa_fast_supcon_rows_backward_cpu", [&] {
    using T = scalar_t;
    const T inv_tau = T(1) / T(temperature);
    const int64_t bm = pairwise::block_rows(N, N, sizeof(T));
    at::Tensor slab = at::empty({bm, N}, n.u.options());
    const at::Tensor ut = n.u.t();
    const int32_t* lab = labels.data_ptr<int32_t>();
    const T *gp = g.data_ptr<T>(), *lp = lse.data_ptr<T>(), *pp = ps.data_ptr<T>(), *cp = cnt.data_ptr<T>();
    for (int64_t i0 = 0; i0 < N; i0 += bm) {
      const int64_t rows = std::min(bm, N - i0);
      at::Tensor s = slab.narrow(0, 0, rows);
      const at::Tensor u_blk = n.u.narrow(0, i0, rows);
      at::mm_out(s, u_blk, ut);
      T* sp = s.data_ptr<T>();
      at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t i = i0 + r;
          T* row = sp + r * N;
          if (!contrastive::supcon_row_active(gp[i], cp[i])) {  // ℓ_i is constant 0 here, or no upstream weight
            std::fill(row, row + N, T(0));
            continue;
          }
          const T inv_n = T(1) / cp[i];
          Loops<T>::grad(variant_in, row, lab, lab[i], 0, i, gp[i], inv_tau, lp[i], pp[i], inv_n);
          Loops<T>::grad(variant_in, row, lab, lab[i], i + 1, N, gp[i], inv_tau, lp[i], pp[i], inv_n);
          row[i] = T(0);
        }
      });
      // dU_i += Σ_j G_ij u_j (rows of this block) and dU_j += Σ_i G_ij u_i (every column).
      du.narrow(0, i0, rows).addmm_(s, n.u);
      du.addmm_(s.t(), u_blk);
    }
    du.mul_(inv_tau);
  });
  return pairwise::normalize_backward(du, n).to(z.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(msa_fast, CPU, m) {
  m.impl("supcon_rows", &supcon_rows_cpu);
  m.impl("supcon_rows_backward", &supcon_rows_backward_cpu);
}

}  // namespace msa_fast
