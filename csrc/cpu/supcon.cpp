// C++ CPU kernels of supcon_rows / supcon_rows_backward (ops.md §2 on the engine of §1).
//
// Per anchor i (PML SupCon, Khosla et al. Eq. 2 'out'; MMCL Eq. 8 'in'), with s_ij = u_i·u_j/τ,
// A(i) = {j ≠ i}, P(i) = {j ≠ i : label_j = label_i}:
//   lse_all_i = LSE_{A(i)} s_ij,  n_i = |P(i)|,
//   pos_stat_i = Σ_{P(i)} s_ij ('out') or LSE_{P(i)} s_ij ('in'),
//   ℓ_i = lse_all_i − pos_stat_i / n_i ('out') or lse_all_i − pos_stat_i ('in'), 0 if n_i = 0.
// Backward rebuilds each slab and forms G_ij = g_i (p_ij − 1[j∈P(i)]/n_i) ('out') or
// g_i (p_ij − q_ij) ('in'); dU = (G + Gᵀ) U / τ by two GEMMs per slab, then back through n(·).
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
