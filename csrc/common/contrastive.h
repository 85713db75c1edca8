// Per-pair and per-row math of the fused contrastive losses (ops.md §1–§6), shared by the CPU slab
// kernels (csrc/cpu/{supcon,info_nce,uniform,hycon,mgcl}.cpp) and the CUDA tile kernels
// (csrc/cuda/*.cu), so the CPU tests exercise the exact formulas the GPU runs: pair status from labels,
// mgcl's pair weights, hycon's similarity transforms, the per-pair gradients and the log-sum-exp merge.
//
// Every helper is force-inlined on the host as well (MSA_HDI): the CPU epilogues call them inside
// `omp simd` loops compiled once per instruction set (target_clones), and an out-of-line call would
// run a scalar baseline copy. T is the compute type: float for fp32/fp16/bf16 inputs, double for fp64.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__CUDACC__)
#define MSA_HDI __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define MSA_HDI inline __attribute__((always_inline))
#else
#define MSA_HDI inline
#endif

namespace msa_fast {
namespace contrastive {

constexpr float kNormEps = 1e-12f;  // n(x) = x / max(‖x‖, 1e-12), ops.md preamble

// ------------------------------------------------------------------------------------------------
// Transcendentals.

// exp(x) for float, branch-free so loops over it vectorise: Cody–Waite reduction x = k·ln2 + r and
// the Cephes degree-6 polynomial for e^r (max relative error ≈ 2 ulp); exact 0 below −87.3 and +inf
// above 88.7; NaN propagates; exp(0) = 1 exactly. The clamps are spelled as std::max / std::min
// define them, so NaN passes through them unchanged.
MSA_HDI float fast_exp(float x) {
  const float lo = x < -87.33654f ? -87.33654f : x;
  const float clamped = 88.72283f < lo ? 88.72283f : lo;
  // Round to nearest with the 1.5·2²³ trick (vectorises everywhere, unlike nearbyint's libm call).
  const float k = (clamped * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = clamped - k * 0.693359375f;
  r = r - k * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t e = static_cast<int32_t>(k) + 127;
  const int32_t bits = e << 23;
#if defined(__CUDA_ARCH__)
  const float scale = __int_as_float(bits);
#else
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
#endif
  float result = p * scale;
  result = x < -87.33654f ? 0.0f : result;
  result = x > 88.72283f ? std::numeric_limits<float>::infinity() : result;
  return x != x ? x : result;
}

MSA_HDI double fast_exp(double x) { return ::exp(x); }

// Library exp / log / sqrt / |x| of the argument's own precision, on host and device.
MSA_HDI float exact_exp(float x) { return ::expf(x); }
MSA_HDI double exact_exp(double x) { return ::exp(x); }
MSA_HDI float exact_log(float x) { return ::logf(x); }
MSA_HDI double exact_log(double x) { return ::log(x); }
MSA_HDI float exact_sqrt(float x) { return ::sqrtf(x); }
MSA_HDI double exact_sqrt(double x) { return ::sqrt(x); }
MSA_HDI float abs_(float x) { return ::fabsf(x); }
MSA_HDI double abs_(double x) { return ::fabs(x); }

// ------------------------------------------------------------------------------------------------
// Log-sum-exp in (m, s) form: LSE = m + log(s), the empty set is (−inf, 0).

// (m, s) ← the LSE of the union of (m, s) and (m2, s2) (the FlashAttention / Inf-CL merge). Two empty
// (or all-NaN) parts keep m = −inf and add their sums, so NaN still propagates and ∅ ∪ ∅ stays ∅.
template <typename T>
MSA_HDI void lse_merge(T& m, T& s, T m2, T s2) {
  const T mx = m2 > m ? m2 : m;
  if (mx == -std::numeric_limits<T>::infinity()) {
    s = s + s2;
    return;
  }
  s = s * exact_exp(m - mx) + s2 * exact_exp(m2 - mx);
  m = mx;
}

// ------------------------------------------------------------------------------------------------
// Row normalisation n(x) = x / max(‖x‖, eps), zero rows → 0 (ops.md §1): the factor 1/max(‖x‖, eps)
// of a row from its norm, 0 for a zero row; NaN norms stay NaN (the clamp is written NaN-preserving).
template <typename T>
MSA_HDI T safe_norm(T norm) {
  return norm < T(kNormEps) ? T(kNormEps) : norm;
}

// ------------------------------------------------------------------------------------------------
// supcon (ops.md §2): positives share the label; self is excluded by the caller.

template <typename I>
MSA_HDI bool same_label(I a, I b) {
  return a == b;
}

// ℓ_i from the row statistics: lse_all − pos_stat/n ('out', pos_stat = Σ_P s/τ) or lse_all − pos_stat
// ('in', pos_stat = LSE_P s/τ); 0 without positives.
template <typename T>
MSA_HDI T supcon_row_loss(T lse_all, T pos_stat, T n_pos, bool variant_in) {
  return n_pos > T(0) ? (variant_in ? lse_all - pos_stat : lse_all - pos_stat / n_pos) : T(0);
}

// A row contributes gradient only with positives (else ℓ_i is constant 0) and upstream weight.
template <typename T>
MSA_HDI bool supcon_row_active(T g, T n_pos) {
  return !(n_pos == T(0) || g == T(0));
}

// G_ij = g_i (p_ij − 1[j∈P(i)]/n_i) ('out') or g_i (p_ij − q_ij) ('in'), p = softmax over A(i) of the
// logits s/τ (lse = lse_all), q = softmax over P(i) (pos_stat = LSE_P).
template <typename T, bool kIn>
MSA_HDI T supcon_pair_grad(T logit, bool pos, T g, T lse, T pos_stat, T inv_n) {
  const T p = fast_exp(logit - lse);
  const T target = kIn ? (pos ? fast_exp(logit - pos_stat) : T(0)) : (pos ? inv_n : T(0));
  return g * (p - target);
}

// ------------------------------------------------------------------------------------------------
// info_nce (ops.md §3): the upstream-weighted softmax entry g_i π_ij = g_i exp(logit − lse_i).

template <typename T>
MSA_HDI T softmax_weight(T g, T logit, T lse) {
  return g * fast_exp(logit - lse);
}

// ------------------------------------------------------------------------------------------------
// uniform (ops.md §6): v = −κ max(‖p̂_i‖² + ‖ĝ_j‖² − 2 p̂_i·ĝ_j, 0) from the dot product; a NaN stays NaN
// (the clamp's test is false for NaN).

template <typename T>
MSA_HDI T uniform_logit(T sq_row, T sq_col, T dot, T neg_kappa) {
  const T d2 = sq_row + sq_col - T(2) * dot;
  return neg_kappa * (d2 < T(0) ? T(0) : d2);
}

// ------------------------------------------------------------------------------------------------
// hycon (ops.md §4). Classes: −1 = dropped (drop_zero), neither anchor nor candidate of IAMCL/IEMCL.

enum HyconTransform : int { kCos = 0, kCos01 = 1, kExpTau = 2 };
constexpr int kHyconStats = 7;

template <typename I>
MSA_HDI bool hycon_kept(I c) {
  return c != I(-1);
}
// Candidate class cj for an anchor of kept class c: positive (same class) ...
template <typename I>
MSA_HDI bool hycon_positive(I cj, I c) {
  return cj == c;
}
// ... or negative (another class, not dropped).
template <typename I>
MSA_HDI bool hycon_negative(I cj, I c) {
  return (cj != c) & (cj != I(-1));
}

// Ratio transform f: 'cos' s, 'cos01' (1 + s)/2, 'exp_tau' exp(s/τ).
template <typename T, int F>
MSA_HDI T hycon_transform(T v, T inv_tau) {
  if constexpr (F == kCos) return v;
  if constexpr (F == kCos01) return (T(1) + v) * T(0.5);
  return fast_exp(v * inv_tau);
}

// f′(s): 1, ½, exp(s/τ)/τ.
template <typename T, int F>
MSA_HDI T hycon_transform_grad(T v, T inv_tau) {
  if constexpr (F == kCos) return T(1);
  if constexpr (F == kCos01) return T(0.5);
  return fast_exp(v * inv_tau) * inv_tau;
}

// Run-time transform (the GPU kernels branch uniformly instead of instantiating three kernels).
template <typename T>
MSA_HDI T hycon_transform(int f, T v, T inv_tau) {
  return f == kCos ? hycon_transform<T, kCos>(v, inv_tau)
                   : (f == kCos01 ? hycon_transform<T, kCos01>(v, inv_tau) : hycon_transform<T, kExpTau>(v, inv_tau));
}
template <typename T>
MSA_HDI T hycon_transform_grad(int f, T v, T inv_tau) {
  return f == kCos ? hycon_transform_grad<T, kCos>(v, inv_tau)
                   : (f == kCos01 ? hycon_transform_grad<T, kCos01>(v, inv_tau)
                                  : hycon_transform_grad<T, kExpTau>(v, inv_tau));
}

// Contributions of one candidate to the anchor's (Σ_pos f(s), Σ_neg f(s), Σ_pos (s − target)²), selected
// (not multiplied by a mask) so that a NaN only enters through the pairs of the anchor's own sets.
template <typename T, int F>
MSA_HDI void hycon_pair_terms(T v, bool pos, bool neg, T target, T inv_tau, T& sp, T& sn, T& sq) {
  const T fv = hycon_transform<T, F>(v, inv_tau);
  const T d = v - target;
  sp = pos ? fv : T(0);
  sn = neg ? fv : T(0);
  sq = pos ? d * d : T(0);
}

// G = dS_rc + dS_cr of one pair off the same sample: (ap, an, aq) are the coefficients of the three
// sums summed over both ends of the pair (row's + column's), fp = f′(s).
template <typename T>
MSA_HDI T hycon_pair_grad(T v, bool pos, bool neg, T target, T fp, T ap, T an, T aq) {
  const T gpos = ap * fp + aq * (T(2) * (v - target));
  const T gneg = an * fp;
  return pos ? gpos : (neg ? gneg : T(0));
}

// ------------------------------------------------------------------------------------------------
// mgcl (ops.md §5). Labels ỹ = float32(y)/float32(label_scale); E = |ỹ_i − ỹ_j| in fp32; a pair is
// positive iff E ≤ δ (NaN → negative). Same-sample pairs are positive with E = 0 whatever the label.

enum MgclWeight : int { kMgcl = 0, kClgsi = 1, kNone = 2 };

MSA_HDI bool mgcl_positive(float E, float delta) { return E <= delta; }

// The tanh argument of the pair's weight: positives E − δ ('mgcl') or 2δ − E ('clgsi'); negatives E.
// pos_kind is kMgcl or kClgsi ('none' ignores the argument; callers pass kMgcl for it).
MSA_HDI float mgcl_tanh_arg(float E, bool pos, float delta, int pos_kind) {
  const float pa = pos_kind == kMgcl ? E - delta : 2.0f * delta - E;
  return pos ? pa : E;
}

// The weight from t = tanh(arg): W⁺ = gain·|t| ('mgcl'), gain·t ('clgsi'), 1 ('none'); W⁻ = gain·|t|
// ('mgcl'), 0.8·gain·|t| ('clgsi', gain08 = float32(0.8)·gain), 1 ('none'). A weight of 0 is not a mask.
MSA_HDI float mgcl_weight(float t, bool pos, int pos_kind, int neg_kind, float gain, float gain08) {
  const float wp = pos_kind == kMgcl ? gain * ::fabsf(t) : (pos_kind == kClgsi ? gain * t : 1.0f);
  const float wn = neg_kind == kMgcl ? gain * ::fabsf(t) : (neg_kind == kClgsi ? gain08 * ::fabsf(t) : 1.0f);
  return pos ? wp : wn;
}

// Backward: the coefficient of the positives, a_pos = g_all·exp(lse_pos − lse_all) + g_pos.
template <typename T>
MSA_HDI T mgcl_pos_coef(T g_pos, T g_all, T lse_pos, T lse_all) {
  return g_all * exact_exp(lse_pos - lse_all) + g_pos;
}

// dS of one pair (gradient w.r.t. the raw similarity s, λ = W·s/τ): positives a_pos·exp(λ − lse_pos)·W/τ,
// negatives g_all·exp(λ − lse_all)·W/τ.
template <typename T>
MSA_HDI T mgcl_pair_grad(T lam, bool pos, T w, T inv_tau, T lse_pos, T lse_all, T a_pos, T g_all) {
  const T ex = fast_exp(lam - (pos ? lse_pos : lse_all));
  return (pos ? a_pos : g_all) * ex * (w * inv_tau);
}

}  // namespace contrastive
}  // namespace msa_fast
