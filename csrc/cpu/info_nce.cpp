// C++ CPU kernels of info_nce_rows / info_nce_rows_backward (ops.md §3 on the engine of §1).
//
// Per query i, with q̂ = n(q), k̂ = n(k) (or the raw rows), a_ij = q̂_i·k̂_j/τ and b_ij = q̂_i·q̂_j/τ:
//   'keys'    (CLIP/MoCo):  lse_i = LSE_j a_ij;
//   'queries' (MMCL UMCC):  lse_i = LSE({a_ii} ∪ {b_ij : j ≠ i});
//   loss_i = lse_i − a_ii.
// Forward: per block of rows one GEMM writes the raw dots of the block against k̂ ('keys') or q̂
// ('queries') into a slab; for 'queries' the slab's diagonal entry is replaced by the positive dot
// q̂_i·k̂_i (a row-wise dot computed once), so both modes are one LSE over a slab row.
// Backward rebuilds each slab and writes G_ij = g_i (π_ij − δ_ij) ('keys'; π = softmax of the row) or
// G_ij = g_i π_ij for j ≠ i, G_ii = 0 ('queries', with the positive's g_i (π_ii − 1) kept per row);
// π_ii − 1 is formed as −Σ_{j≠i} π_ij:
//   'keys':    dq̂ = G k̂ / τ,            dk̂ = Gᵀ q̂ / τ;
//   'queries': dq̂ = (G + Gᵀ) q̂ / τ + diag(Gp) k̂ / τ,   dk̂ = diag(Gp) q̂ / τ;
// two GEMMs per slab, then back through n(·). When q and k are the same tensor the op still returns
// (dq, dk) and autograd adds them.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common/contrastive_args.h"
#include "cpu/pairwise.h"

namespace msa_fast {
namespace {

using pairwise::compute_type;
using pairwise::same_tensor;
using pairwise::normalize_rows;

using pairwise::fast_exp;

// max_j s_j (NaN entries are skipped here; they reach the result through the sum).
template <typename T>
inline T row_max(const T* s, int64_t n) {
  T m = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < n; ++j) m = s[j] > m ? s[j] : m;
  return m;
}

// Σ_j exp((s_j − m)/τ).
template <typename T>
inline T row_sum_exp(const T* s, int64_t n, T m, T inv_tau) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t j = 0; j < n; ++j) acc += fast_exp((s[j] - m) * inv_tau);
  return acc;
}

// s_j ← g · exp(s_j/τ − lse) over [b, e), the upstream-weighted softmax of the row (backward);
// returns its sum.
template <typename T>
inline T row_softmax(T* s, int64_t b, int64_t e, T g, T inv_tau, T lse) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t j = b; j < e; ++j) {
    const T w = contrastive::softmax_weight(g, s[j] * inv_tau, lse);
    s[j] = w;
    acc += w;
  }
  return acc;
}

MSA_VECTOR_CLONES float row_max_f(const float* s, int64_t n) { return row_max(s, n); }
MSA_VECTOR_CLONES float row_sum_exp_f(const float* s, int64_t n, float m, float it) { return row_sum_exp(s, n, m, it); }
MSA_VECTOR_CLONES float row_softmax_f(float* s, int64_t b, int64_t e, float g, float it, float lse) {
  return row_softmax(s, b, e, g, it, lse);
}

// float → the vectorised clones; double (gradcheck) → the plain templates.
template <typename T>
struct Loops {
  static T max(const T* s, int64_t n) { return row_max(s, n); }
  static T sum_exp(const T* s, int64_t n, T m, T it) { return row_sum_exp(s, n, m, it); }
  static T softmax(T* s, int64_t b, int64_t e, T g, T it, T lse) { return row_softmax(s, b, e, g, it, lse); }
};
template <>
struct Loops<float> {
  static float max(const float* s, int64_t n) { return row_max_f(s, n); }
  static float sum_exp(const float* s, int64_t n, float m, float it) { return row_sum_exp_f(s, n, m, it); }
  static float softmax(float* s, int64_t b, int64_t e, float g, float it, float lse) {
    return row_softmax_f(s, b, e, g, it, lse);
  }
};

struct Prepared {
  pairwise::Normalized q, k;
  at::Tensor pos_dot;  // [N] q̂_i·k̂_i ('queries' only)
};

Prepared prepare(const at::Tensor& q, const at::Tensor& k, bool negatives_queries, bool normalize) {
  const at::ScalarType ct = compute_type(q);
  Prepared p;
  p.q = normalize_rows(q, ct, normalize);
  p.k = same_tensor(q, k) ? p.q : normalize_rows(k, ct, normalize);
  if (negatives_queries) p.pos_dot = (p.q.u * p.k.u).sum(1);
  return p;
}

std::tuple<at::Tensor, at::Tensor> info_nce_rows_cpu(const at::Tensor& q, const at::Tensor& k, double temperature,
                                                     bool negatives_queries, bool normalize) {
  contrastive::check_info_nce(q, k, temperature);
  const at::ScalarType ct = compute_type(q);
  const Prepared pr = prepare(q, k, negatives_queries, normalize);
  const int64_t N = q.size(0);
  const auto opts = q.options().dtype(ct);
  at::Tensor loss = at::empty({N}, opts), lse_out = at::empty({N}, opts);
  AT_DISPATCH_FLOATING_TYPES(ct, "msa_fast_info_nce_rows_cpu", [&] {
    using T = scalar_t;
    const T inv_tau = T(1) / T(temperature);
    const int64_t bm = pairwise::block_rows(N, N, sizeof(T));
    at::Tensor slab = at::empty({bm, N}, pr.q.u.options());
    // Columns: k̂ for 'keys', q̂ for 'queries' (whose diagonal is then replaced by the positive).
    const at::Tensor cols_t = (negatives_queries ? pr.q.u : pr.k.u).t();
    const T* pos = negatives_queries ? pr.pos_dot.data_ptr<T>() : nullptr;
    T *lp = loss.data_ptr<T>(), *sp_out = lse_out.data_ptr<T>();
    for (int64_t i0 = 0; i0 < N; i0 += bm) {
      const int64_t rows = std::min(bm, N - i0);
      at::Tensor s = slab.narrow(0, 0, rows);
      at::mm_out(s, pr.q.u.narrow(0, i0, rows), cols_t);
      T* sp = s.data_ptr<T>();
      at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t i = i0 + r;
          T* row = sp + r * N;
          if (negatives_queries) row[i] = pos[i];
          const T diag = row[i];  // raw positive dot q̂_i·k̂_i
          const T m = Loops<T>::max(row, N);
          // max over a row of NaNs stays −inf; the NaN then reaches lse through the sum.
          const T mm = std::isinf(m) && m < 0 ? T(0) : m;
          const T sum = Loops<T>::sum_exp(row, N, mm, inv_tau);
          const T lse = mm * inv_tau + static_cast<T>(std::log(static_cast<double>(sum)));
          sp_out[i] = lse;
          lp[i] = lse - diag * inv_tau;
        }
      });
    }
  });
  return {loss, lse_out};
}

std::tuple<at::Tensor, at::Tensor> info_nce_rows_backward_cpu(const at::Tensor& grad_rows, const at::Tensor& q,
                                                              const at::Tensor& k, const at::Tensor& lse_in,
                                                              double temperature, bool negatives_queries,
                                                              bool normalize) {
  contrastive::check_info_nce(q, k, temperature);
  const int64_t N = q.size(0);
  contrastive::check_rows(contrastive::kInfoNceOp, {{"grad_rows", &grad_rows}, {"lse", &lse_in}}, N, "N", q);
  const at::ScalarType ct = compute_type(q);
  const Prepared pr = prepare(q, k, negatives_queries, normalize);
  const at::Tensor g = grad_rows.to(ct).contiguous(), lse = lse_in.to(ct).contiguous();
  at::Tensor dq = at::zeros_like(pr.q.u), dk = at::zeros_like(pr.k.u);
  AT_DISPATCH_FLOATING_TYPES(ct, "msa_fast_info_nce_rows_backward_cpu", [&] {
    using T = scalar_t;
    const T inv_tau = T(1) / T(temperature);
    const int64_t bm = pairwise::block_rows(N, N, sizeof(T));
    at::Tensor slab = at::empty({bm, N}, pr.q.u.options());
    const at::Tensor& cols = negatives_queries ? pr.q.u : pr.k.u;
    const at::Tensor cols_t = cols.t();
    at::Tensor& dcols = negatives_queries ? dq : dk;
    at::Tensor gpos = negatives_queries ? at::empty({N}, pr.q.u.options()) : at::Tensor();
    const T *gp = g.data_ptr<T>(), *lp = lse.data_ptr<T>();
    const T* pos = negatives_queries ? pr.pos_dot.data_ptr<T>() : nullptr;
    T* gpos_p = negatives_queries ? gpos.data_ptr<T>() : nullptr;
    for (int64_t i0 = 0; i0 < N; i0 += bm) {
      const int64_t rows = std::min(bm, N - i0);
      at::Tensor s = slab.narrow(0, 0, rows);
      const at::Tensor q_blk = pr.q.u.narrow(0, i0, rows);
      at::mm_out(s, q_blk, cols_t);
      T* sp = s.data_ptr<T>();
      at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t i = i0 + r;
          T* row = sp + r * N;
          if (gp[i] == T(0)) {  // no upstream weight on this query
            std::fill(row, row + N, T(0));
            if (negatives_queries) gpos_p[i] = T(0);
            continue;
          }
          // g_i π_ij off the diagonal; the positive's g_i (π_ii − 1) is taken as −Σ_{j≠i} g_i π_ij (no
          // cancellation when π_ii ≈ 1, and exactly 0 for N = 1).
          const T others = Loops<T>::softmax(row, 0, i, gp[i], inv_tau, lp[i]) +
                           Loops<T>::softmax(row, i + 1, N, gp[i], inv_tau, lp[i]);
          if (negatives_queries) {
            gpos_p[i] = -others;  // on the positive a_ii = q̂_i·k̂_i/τ
            row[i] = T(0);        // b_ii is not a term
          } else {
            row[i] = -others;
          }
        }
      });
      // rows of this block: dq̂_i += Σ_j G_ij c_j; every column: dc_j += Σ_i G_ij q̂_i.
      dq.narrow(0, i0, rows).addmm_(s, cols);
      dcols.addmm_(s.t(), q_blk);
    }
    if (negatives_queries) {
      const at::Tensor gcol = gpos.unsqueeze(1);
      dq.add_(gcol * pr.k.u);
      dk.add_(gcol * pr.q.u);
    }
    dq.mul_(inv_tau);
    dk.mul_(inv_tau);
  });
  return {pairwise::normalize_backward(dq, pr.q).to(q.scalar_type()),
          pairwise::normalize_backward(dk, pr.k).to(k.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(msa_fast, CPU, m) {
  m.impl("info_nce_rows", &info_nce_rows_cpu);
  m.impl("info_nce_rows_backward", &info_nce_rows_backward_cpu);
}

}  // namespace msa_fast
