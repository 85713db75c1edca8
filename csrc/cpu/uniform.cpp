// C++ CPU kernels of uniform_rows / uniform_rows_backward (ops.md §6 on the engine of §1).
//
// Per row i, with p̂ = n(p), ĝ = n(g) (or the raw rows):
//   v_ij = −κ d²_ij,  d²_ij = max(‖p̂_i‖² + ‖ĝ_j‖² − 2 p̂_i·ĝ_j, 0),  lse_i = LSE_{j ≠ i} v_ij.
// The public op composes LSE_i lse_i − log(n(n−1)) ('cross'), or calls the row op on (p, p) and
// (g, g) ('wang_isola': LSE_{i<j} = LSE_{i≠j} − log 2 by symmetry).
// Forward: per block of rows one GEMM writes p̂_blk ĝᵀ into a slab; the epilogue turns each slab row
// into v (in place), then max and Σ exp. Backward rebuilds the slab and writes
// W_ij = ∂L/∂d²_ij = −κ g_i π_ij (π_ij = exp(v_ij − lse_i), W_ii = 0) with its row sums; then, since
// ∂d²_ij/∂p̂_i = 2(p̂_i − ĝ_j) and ∂d²_ij/∂ĝ_j = 2(ĝ_j − p̂_i):
//   dp̂ = 2 (rowsum(W) ⊙ p̂ − W ĝ),  dĝ = 2 (colsum(W) ⊙ ĝ − Wᵀ p̂),
// two GEMMs per slab, then back through n(·). The clamp of d² is treated as the identity in backward
// (the gradient of the direct-difference formula; where it bites, p̂_i ≈ ĝ_j and the term is ≈ 0).
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

// s_j ← v_j = −κ max(a + c_j − 2 s_j, 0); a NaN stays NaN (the clamp's test is false for NaN).
template <typename T>
inline void row_logits(T* s, const T* c, int64_t n, T a, T neg_kappa) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) s[j] = contrastive::uniform_logit(a, c[j], s[j], neg_kappa);
}

// max_j s_j over the NaN-free entries (−inf if none).
template <typename T>
inline T row_max(const T* s, int64_t n) {
  T m = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < n; ++j) m = s[j] > m ? s[j] : m;
  return m;
}

template <typename T>
inline T row_sum_exp(const T* s, int64_t n, T m) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t j = 0; j < n; ++j) acc += fast_exp(s[j] - m);
  return acc;
}

// s_j ← W_ij = −κ g exp(v_ij − lse) from the raw dot s_j over [b, e); returns Σ_j W_ij.
template <typename T>
inline T row_weights(T* s, const T* c, int64_t b, int64_t e, T a, T neg_kappa, T g, T lse) {
  T acc = 0;
  const T scale = neg_kappa * g;
#pragma omp simd reduction(+ : acc)
  for (int64_t j = b; j < e; ++j) {
    const T v = contrastive::uniform_logit(a, c[j], s[j], neg_kappa);
    const T w = scale * fast_exp(v - lse);
    s[j] = w;
    acc += w;
  }
  return acc;
}

MSA_VECTOR_CLONES void row_logits_f(float* s, const float* c, int64_t n, float a, float nk) {
  row_logits(s, c, n, a, nk);
}
MSA_VECTOR_CLONES float row_max_f(const float* s, int64_t n) { return row_max(s, n); }
MSA_VECTOR_CLONES float row_sum_exp_f(const float* s, int64_t n, float m) { return row_sum_exp(s, n, m); }
MSA_VECTOR_CLONES float row_weights_f(float* s, const float* c, int64_t b, int64_t e, float a, float nk, float g,
                                      float lse) {
  return row_weights(s, c, b, e, a, nk, g, lse);
}

template <typename T>
struct Loops {
  static void logits(T* s, const T* c, int64_t n, T a, T nk) { row_logits(s, c, n, a, nk); }
  static T max(const T* s, int64_t n) { return row_max(s, n); }
  static T sum_exp(const T* s, int64_t n, T m) { return row_sum_exp(s, n, m); }
  static T weights(T* s, const T* c, int64_t b, int64_t e, T a, T nk, T g, T lse) {
    return row_weights(s, c, b, e, a, nk, g, lse);
  }
};
template <>
struct Loops<float> {
  static void logits(float* s, const float* c, int64_t n, float a, float nk) { row_logits_f(s, c, n, a, nk); }
  static float max(const float* s, int64_t n) { return row_max_f(s, n); }
  static float sum_exp(const float* s, int64_t n, float m) { return row_sum_exp_f(s, n, m); }
  static float weights(float* s, const float* c, int64_t b, int64_t e, float a, float nk, float g, float lse) {
    return row_weights_f(s, c, b, e, a, nk, g, lse);
  }
};

struct Prepared {
  pairwise::Normalized p, g;
  at::Tensor p_sq, g_sq;  // [n] ‖p̂_i‖², ‖ĝ_j‖²
};

Prepared prepare(const at::Tensor& p, const at::Tensor& g, bool normalize) {
  const at::ScalarType ct = compute_type(p);
  Prepared pr;
  pr.p = normalize_rows(p, ct, normalize);
  const bool same = same_tensor(p, g);
  pr.g = same ? pr.p : normalize_rows(g, ct, normalize);
  pr.p_sq = (pr.p.u * pr.p.u).sum(1);
  pr.g_sq = same ? pr.p_sq : (pr.g.u * pr.g.u).sum(1);
  return pr;
}

at::Tensor uniform_rows_cpu(const at::Tensor& p, const at::Tensor& g, double kappa, bool normalize) {
  contrastive::check_uniform(p, g, kappa);
  const at::ScalarType ct = compute_type(p);
  const Prepared pr = prepare(p, g, normalize);
  const int64_t n = p.size(0);
  at::Tensor lse_out = at::empty({n}, p.options().dtype(ct));
  AT_DISPATCH_FLOATING_TYPES(ct, "msa_fast_uniform_rows_cpu", [&] {
    using T = scalar_t;
    const T neg_kappa = -T(kappa);
    const int64_t bm = pairwise::block_rows(n, n, sizeof(T));
    at::Tensor slab = at::empty({bm, n}, pr.p.u.options());
    const at::Tensor gt = pr.g.u.t();
    const T *pa = pr.p_sq.data_ptr<T>(), *gc = pr.g_sq.data_ptr<T>();
    T* out = lse_out.data_ptr<T>();
    for (int64_t i0 = 0; i0 < n; i0 += bm) {
      const int64_t rows = std::min(bm, n - i0);
      at::Tensor s = slab.narrow(0, 0, rows);
      at::mm_out(s, pr.p.u.narrow(0, i0, rows), gt);
      T* sp = s.data_ptr<T>();
      at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t i = i0 + r;
          T* row = sp + r * n;
          Loops<T>::logits(row, gc, n, pa[i], neg_kappa);
          row[i] = -std::numeric_limits<T>::infinity();  // j = i is not a pair: exp(−inf) = 0 below
          const T m = Loops<T>::max(row, n);
          const T mm = std::isinf(m) && m < 0 ? T(0) : m;  // every logit NaN: NaN reaches lse via the sum
          const T sum = Loops<T>::sum_exp(row, n, mm);
          // log in double: with κ = 0 this is exactly fl(log(n − 1)), the constant the public op subtracts.
          out[i] = mm + static_cast<T>(std::log(static_cast<double>(sum)));
        }
      });
    }
  });
  return lse_out;
}

std::tuple<at::Tensor, at::Tensor> uniform_rows_backward_cpu(const at::Tensor& grad_rows, const at::Tensor& p,
                                                             const at::Tensor& g, const at::Tensor& lse_in, double kappa,
                                                             bool normalize) {
  contrastive::check_uniform(p, g, kappa);
  const int64_t n = p.size(0);
  contrastive::check_rows(contrastive::kUniformOp, {{"grad_rows", &grad_rows}, {"lse_rows", &lse_in}}, n, "n", p);
  const at::ScalarType ct = compute_type(p);
  const Prepared pr = prepare(p, g, normalize);
  const at::Tensor gr = grad_rows.to(ct).contiguous(), lse = lse_in.to(ct).contiguous();
  at::Tensor dp = at::zeros_like(pr.p.u), dg = at::zeros_like(pr.g.u);
  at::Tensor row_sum = at::empty({n}, pr.p.u.options()), col_sum = at::zeros({n}, pr.p.u.options());
  AT_DISPATCH_FLOATING_TYPES(ct, "msa_fast_uniform_rows_backward_cpu", [&] {
    using T = scalar_t;
    const T neg_kappa = -T(kappa);
    const int64_t bm = pairwise::block_rows(n, n, sizeof(T));
    at::Tensor slab = at::empty({bm, n}, pr.p.u.options());
    const at::Tensor gt = pr.g.u.t();
    const T *pa = pr.p_sq.data_ptr<T>(), *gc = pr.g_sq.data_ptr<T>(), *gp = gr.data_ptr<T>(), *lp = lse.data_ptr<T>();
    T* rs = row_sum.data_ptr<T>();
    for (int64_t i0 = 0; i0 < n; i0 += bm) {
      const int64_t rows = std::min(bm, n - i0);
      at::Tensor s = slab.narrow(0, 0, rows);
      const at::Tensor p_blk = pr.p.u.narrow(0, i0, rows);
      at::mm_out(s, p_blk, gt);
      T* sp = s.data_ptr<T>();
      at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t i = i0 + r;
          T* row = sp + r * n;
          if (gp[i] == T(0)) {
            std::fill(row, row + n, T(0));
            rs[i] = T(0);
            continue;
          }
          // the two column ranges around j = i (not a pair: W_ii = 0)
          rs[i] = Loops<T>::weights(row, gc, 0, i, pa[i], neg_kappa, gp[i], lp[i]) +
                  Loops<T>::weights(row, gc, i + 1, n, pa[i], neg_kappa, gp[i], lp[i]);
          row[i] = T(0);
        }
      });
      // dp̂_blk −= 2 W ĝ;  dĝ −= 2 Wᵀ p̂_blk;  colsum(W) += Σ over the block's rows.
      dp.narrow(0, i0, rows).addmm_(s, pr.g.u, 1, -2);
      dg.addmm_(s.t(), p_blk, 1, -2);
      col_sum.add_(s.sum(0));
    }
    dp.add_(row_sum.unsqueeze(1) * pr.p.u, 2);
    dg.add_(col_sum.unsqueeze(1) * pr.g.u, 2);
  });
  return {pairwise::normalize_backward(dp, pr.p).to(p.scalar_type()),
          pairwise::normalize_backward(dg, pr.g).to(g.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(msa_fast, CPU, m) {
  m.impl("uniform_rows", &uniform_rows_cpu);
  m.impl("uniform_rows_backward", &uniform_rows_backward_cpu);
}

}  // namespace msa_fast
