// C++ CPU kernels of mgcl_rows / mgcl_rows_backward (ops.md §5 on the engine of §1).
//
// Rows: the 3B macro features stacked (T, V, A), row r = v·B + i. Columns: the 3B macro features and
// the 3B micro features, but row (v, i) only ever pairs with macro columns and the micro columns of
// its own view v (every other micro pair is excluded by design), so the slab of row block (v, i0…)
// is the GEMM  n(macro)[rows] · K_vᵀ  with K_v = [n(macro); n(micro_v)]  [4B, d]: 4B instead of 6B
// columns, a third of the GEMM work saved. Per row (v, i), column (c, j):
//   macro c = v, j ≠ i      → C1, positive iff E_ij ≤ δ, weight W±(E_ij)      (j = i: excluded)
//   macro c ≠ v, j ≠ i      → C2 cross-sample, as C1
//   macro c ≠ v, j = i      → C2 same-sample, positive with W⁺(0), iff v < c ('literal3') or always
//                             ('ordered6')
//   micro c = v, j = i      → C3 positive with W⁺(0);  j ∈ Neg(i) → C3 negative W⁻(E_ij); else excluded
// with E_ij = |ỹ_i − ỹ_j|, ỹ = float32(y)/float32(label_scale), all label arithmetic and the weights in
// fp32 (also for fp64 features, as the reference does). λ = W·s/τ; per row
//   lse_pos = LSE over the positives, lse_all = LSE over positives ∪ negatives.
// The status and weight of pair (i, j) do not depend on the views, so they are computed once per
// sample block (a bounded [bs, B] fp32 buffer next to the slab) and shared by the three view rows
// and all four column segments.
//
// Forward: per row two passes over the slab row (max, then one exp per element: positives shifted by
// their own max, negatives by the row max, so neither LSE underflows), no N×N buffer.
// Backward by recomputation: the slab is rebuilt and overwritten with
//   dS = (g_all·p_all + g_pos·p_pos)·W/τ   on positives,   g_all·p_all·W/τ   on negatives,   0 elsewhere
// (p_all = exp(λ − lse_all), p_pos = exp(λ − lse_pos); again one exp per element), then two GEMMs
// per slab: dU_macro[rows] += dS·K_v and the column side dSᵀ·U_rows (into per-thread buffers),
// and finally back through n(·).
//
// Helpers local to this file (the shared engine pieces are in pairwise.h): the label block
// (status/weights, tanh from ATen so that the fp32 weights match the reference's), and the row loops
// with `omp simd` reductions, which vectorise without -ffast-math and stay deterministic (fixed lane
// order per instruction set, independent of the thread count).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <torch/library.h>

#include <string>

#include "common/contrastive_args.h"
#include "cpu/pairwise.h"

namespace msa_fast {
namespace {

using pairwise::compute_type;

using pairwise::fast_exp;

// Force-inlined into the target_clones wrappers, so each clone compiles the loop for its own ISA
// (left to itself GCC calls one shared baseline copy of a large template).
#define MSA_INLINE inline __attribute__((always_inline))

constexpr const char* kOp = "msa_fast.ops.mgcl_contrastive_loss";
// Slab of one row block (per thread): [bs, 4B] compute-dtype values, bs chosen so that it stays near
// this size — large enough that BLAS's packing of K_v is amortised over many rows (measured: 16 MiB
// beat 2–8 MiB at B = 2048, d = 128), bounded so memory stays O(B·d) plus a fixed slab per thread.
constexpr int64_t kSlabBytes = int64_t(16) << 20;

using WeightKind = contrastive::MgclWeight;
using contrastive::kClgsi;
using contrastive::kMgcl;
using contrastive::kNone;

struct Params {
  float delta;      // float32(δ)
  float gain;       // float32(gain)
  float gain08;     // float32(0.8)·float32(gain), as the reference's 0.8·g
  double tau;
  WeightKind pos, neg;
  bool ordered6;
};

// ------------------------------------------------------------------------------------------------
// Label block: status and weight of the pairs (i, j), i in the block, j in [0, B).

// Pass 1 over one row: pos[j] = 1 if E_ij ≤ δ (NaN → 0), and the tanh argument of the pair's weight.
MSA_INLINE void label_args_impl(const float* __restrict__ yt, int64_t B, float yi, float delta, int pos_kind,
                            float* __restrict__ arg, float* __restrict__ pos) {
  for (int64_t j = 0; j < B; ++j) {
    const float E = std::fabs(yi - yt[j]);
    const bool p = contrastive::mgcl_positive(E, delta);
    pos[j] = p ? 1.0f : 0.0f;
    arg[j] = contrastive::mgcl_tanh_arg(E, p, delta, pos_kind);  // tanh(E − δ) / tanh(2δ − E); negatives tanh(E)
  }
}
MSA_VECTOR_CLONES void label_args(const float* yt, int64_t B, float yi, float delta, int pos_kind, float* arg,
                                  float* pos) {
  label_args_impl(yt, B, yi, delta, pos_kind, arg, pos);
}

// Pass 2 (after tanh): the weight W⁺ or W⁻ in place of t = tanh(arg).
MSA_INLINE void label_weights_impl(float* __restrict__ w, const float* __restrict__ pos, int64_t B, int pos_kind, int neg_kind, float g,
                               float g08) {
  for (int64_t j = 0; j < B; ++j) w[j] = contrastive::mgcl_weight(w[j], pos[j] != 0.0f, pos_kind, neg_kind, g, g08);
}
MSA_VECTOR_CLONES void label_weights(float* w, const float* pos, int64_t B, int pos_kind, int neg_kind, float g,
                                     float g08) {
  label_weights_impl(w, pos, B, pos_kind, neg_kind, g, g08);
}

// Fills w[r·B + j], pos[r·B + j] for samples i = i0 + r, r < n. The diagonal j = i is the same-sample
// pair: positive with E = 0 whatever δ or the label (also a NaN label), weight W⁺(0).
void label_block(const float* yt, int64_t B, int64_t i0, int64_t n, const Params& p, at::Tensor& wblk,
                 float* pos) {
  float* w = wblk.data_ptr<float>();
  const int pk = p.pos == kNone ? kMgcl : p.pos;  // argument kind is irrelevant for 'none'
  at::parallel_for(0, n, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t i = i0 + r;
      float* wr = w + r * B;
      float* pr = pos + r * B;
      label_args(yt, B, yt[i], p.delta, pk, wr, pr);
      pr[i] = 1.0f;
      wr[i] = contrastive::mgcl_tanh_arg(0.0f, true, p.delta, pk);
    }
  });
  if (p.pos != kNone || p.neg != kNone) {
    at::Tensor t = wblk.narrow(0, 0, n);
    at::tanh_(t);  // ATen's vectorised fp32 tanh, the reference's own
  }
  at::parallel_for(0, n, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) label_weights(w + r * B, pos + r * B, B, p.pos, p.neg, p.gain, p.gain08);
  });
}

// ------------------------------------------------------------------------------------------------
// Row loops over one column segment of B entries. Macro segments: every entry in [b, e) is in the
// pair set with status pos[j]. Micro segment (kMicro): only negatives (pos[j] = 0) are in the set;
// the same-sample positive (pos[i] = 1 on the diagonal) is handled by the caller.

// Pass 1: λ = W·s/τ in place (also on excluded micro entries, which the masks below skip), running
// maxima over the entries in the set and over its positives. Selects, not branches, and `omp simd`
// reductions so that the loop vectorises (fixed lane order per instruction set: deterministic).
template <typename T, bool kMicro>
MSA_INLINE void seg_logits(T* __restrict__ s, const float* __restrict__ w, const float* __restrict__ pos, int64_t b,
                           int64_t e, T inv_tau, T& m_all, T& m_pos) {
  T ma = m_all, mp = m_pos;
#pragma omp simd reduction(max : ma, mp)
  for (int64_t j = b; j < e; ++j) {
    const bool p = pos[j] != 0.0f;
    const T lam = T(w[j]) * s[j] * inv_tau;
    s[j] = lam;
    if (kMicro) {
      ma = (!p && lam > ma) ? lam : ma;  // micro: negatives only
    } else {
      ma = lam > ma ? lam : ma;
      mp = (p && lam > mp) ? lam : mp;
    }
  }
  m_all = ma;
  m_pos = mp;
}

// Pass 2: Σ exp(λ − m_pos) over positives and Σ exp(λ − m_all) over negatives (one exp per entry).
template <typename T, bool kMicro>
MSA_INLINE void seg_sums(const T* __restrict__ s, const float* __restrict__ pos, int64_t b, int64_t e, T m_all,
                         T m_pos, T& sum_pos, T& sum_neg) {
  T sp = 0, sn = 0;
#pragma omp simd reduction(+ : sp, sn)
  for (int64_t j = b; j < e; ++j) {
    const bool p = pos[j] != 0.0f;
    if (kMicro) {
      const T ex = fast_exp(s[j] - m_all);
      sn += p ? T(0) : ex;  // micro positives other than the same sample are not in the set
    } else {
      const T ex = fast_exp(s[j] - (p ? m_pos : m_all));
      sp += p ? ex : T(0);
      sn += p ? T(0) : ex;
    }
  }
  sum_pos += sp;
  sum_neg += sn;
}

// Backward: dS in place of s. Positives: (g_all·p_all + g_pos·p_pos)·W/τ = a_pos·exp(λ − lse_pos)·W/τ
// with a_pos = g_all·exp(lse_pos − lse_all) + g_pos; negatives: g_all·exp(λ − lse_all)·W/τ.
template <typename T, bool kMicro>
MSA_INLINE void seg_grad(T* __restrict__ s, const float* __restrict__ w, const float* __restrict__ pos, int64_t b, int64_t e, T inv_tau, T lse_pos, T lse_all,
                     T a_pos, T g_all) {
#pragma omp simd
  for (int64_t j = b; j < e; ++j) {
    const bool p = pos[j] != 0.0f;
    const T wj = T(w[j]);
    const T lam = wj * s[j] * inv_tau;  // exactly the forward's λ
    const T ds = contrastive::mgcl_pair_grad(lam, p, wj, inv_tau, lse_pos, lse_all, a_pos, g_all);
    s[j] = kMicro ? (p ? T(0) : ds) : ds;
  }
}

// Vectorised float instantiations (one per instruction set, picked at run time).
MSA_VECTOR_CLONES void logits_macro_f(float* s, const float* w, const float* p, int64_t b, int64_t e, float it,
                                      float& ma, float& mp) {
  seg_logits<float, false>(s, w, p, b, e, it, ma, mp);
}
MSA_VECTOR_CLONES void logits_micro_f(float* s, const float* w, const float* p, int64_t b, int64_t e, float it,
                                      float& ma, float& mp) {
  seg_logits<float, true>(s, w, p, b, e, it, ma, mp);
}
MSA_VECTOR_CLONES void sums_macro_f(const float* s, const float* p, int64_t b, int64_t e, float ma, float mp,
                                    float& sp, float& sn) {
  seg_sums<float, false>(s, p, b, e, ma, mp, sp, sn);
}
MSA_VECTOR_CLONES void sums_micro_f(const float* s, const float* p, int64_t b, int64_t e, float ma, float mp,
                                    float& sp, float& sn) {
  seg_sums<float, true>(s, p, b, e, ma, mp, sp, sn);
}
MSA_VECTOR_CLONES void grad_macro_f(float* s, const float* w, const float* p, int64_t b, int64_t e, float it,
                                    float lp, float la, float ap, float ga) {
  seg_grad<float, false>(s, w, p, b, e, it, lp, la, ap, ga);
}
MSA_VECTOR_CLONES void grad_micro_f(float* s, const float* w, const float* p, int64_t b, int64_t e, float it,
                                    float lp, float la, float ap, float ga) {
  seg_grad<float, true>(s, w, p, b, e, it, lp, la, ap, ga);
}

// One call site per loop for both compute types: float → the clones, double → the plain templates
// (fp64 is for gradcheck, not speed).
template <typename T>
struct Loops {
  static void logits(bool micro, T* s, const float* w, const float* p, int64_t b, int64_t e, T it, T& ma, T& mp) {
    micro ? seg_logits<T, true>(s, w, p, b, e, it, ma, mp) : seg_logits<T, false>(s, w, p, b, e, it, ma, mp);
  }
  static void sums(bool micro, const T* s, const float* p, int64_t b, int64_t e, T ma, T mp, T& sp, T& sn) {
    micro ? seg_sums<T, true>(s, p, b, e, ma, mp, sp, sn) : seg_sums<T, false>(s, p, b, e, ma, mp, sp, sn);
  }
  static void grad(bool micro, T* s, const float* w, const float* p, int64_t b, int64_t e, T it, T lp, T la, T ap,
                   T ga) {
    micro ? seg_grad<T, true>(s, w, p, b, e, it, lp, la, ap, ga) : seg_grad<T, false>(s, w, p, b, e, it, lp, la, ap, ga);
  }
};
template <>
struct Loops<float> {
  static void logits(bool micro, float* s, const float* w, const float* p, int64_t b, int64_t e, float it, float& ma,
                     float& mp) {
    micro ? logits_micro_f(s, w, p, b, e, it, ma, mp) : logits_macro_f(s, w, p, b, e, it, ma, mp);
  }
  static void sums(bool micro, const float* s, const float* p, int64_t b, int64_t e, float ma, float mp, float& sp,
                   float& sn) {
    micro ? sums_micro_f(s, p, b, e, ma, mp, sp, sn) : sums_macro_f(s, p, b, e, ma, mp, sp, sn);
  }
  static void grad(bool micro, float* s, const float* w, const float* p, int64_t b, int64_t e, float it, float lp,
                   float la, float ap, float ga) {
    micro ? grad_micro_f(s, w, p, b, e, it, lp, la, ap, ga) : grad_macro_f(s, w, p, b, e, it, lp, la, ap, ga);
  }
};

// The column ranges of row (v, i) in slab-row coordinates [0, 4B): segment c < 3 is macro view c,
// segment 3 the micro view v. Each range is (segment, begin, end) with begin/end inside the segment;
// `excluded` is the macro diagonal entry (c, i) when it is not in the pair set (−1 otherwise).
struct RowPlan {
  int64_t ranges[8][3];
  int count = 0;
  int64_t excluded[3];
  int n_excluded = 0;
};

inline RowPlan plan_row(int v, int64_t i, int64_t B, bool ordered6) {
  RowPlan plan;
  for (int c = 0; c < 3; ++c) {
    const bool diag_in = c != v && (ordered6 || v < c);  // C2 same-sample pair (v, c) of sample i
    if (diag_in) {
      plan.ranges[plan.count][0] = c, plan.ranges[plan.count][1] = 0, plan.ranges[plan.count][2] = B, ++plan.count;
    } else {
      if (i > 0) plan.ranges[plan.count][0] = c, plan.ranges[plan.count][1] = 0, plan.ranges[plan.count][2] = i, ++plan.count;
      if (i + 1 < B)
        plan.ranges[plan.count][0] = c, plan.ranges[plan.count][1] = i + 1, plan.ranges[plan.count][2] = B, ++plan.count;
      plan.excluded[plan.n_excluded++] = c * B + i;
    }
  }
  plan.ranges[plan.count][0] = 3, plan.ranges[plan.count][1] = 0, plan.ranges[plan.count][2] = B, ++plan.count;
  return plan;
}

// Forward epilogue of one slab row (raw similarities in `row`, 4B entries).
template <typename T>
inline void forward_row(T* row, const float* w, const float* pos, int64_t B, int v, int64_t i, bool ordered6,
                        T inv_tau, T& lse_pos, T& lse_all) {
  const T ninf = -std::numeric_limits<T>::infinity();
  const RowPlan plan = plan_row(v, i, B, ordered6);
  // C3 same-sample positive (v_a^i, v_i^i), handled here (the micro loops skip positives).
  const T lam_d = T(w[i]) * row[3 * B + i] * inv_tau;
  T m_all = ninf, m_pos = ninf;
  for (int k = 0; k < plan.count; ++k) {
    const int64_t c = plan.ranges[k][0];
    Loops<T>::logits(c == 3, row + c * B, w, pos, plan.ranges[k][1], plan.ranges[k][2], inv_tau, m_all, m_pos);
  }
  m_all = lam_d > m_all ? lam_d : m_all;
  m_pos = lam_d > m_pos ? lam_d : m_pos;
  T sum_pos = 0, sum_neg = 0;
  for (int k = 0; k < plan.count; ++k) {
    const int64_t c = plan.ranges[k][0];
    Loops<T>::sums(c == 3, row + c * B, pos, plan.ranges[k][1], plan.ranges[k][2], m_all, m_pos, sum_pos, sum_neg);
  }
  sum_pos += fast_exp(lam_d - m_pos);
  lse_pos = m_pos + std::log(sum_pos);
  // Positives were shifted by m_pos ≤ m_all: merge them into the all-set sum.
  contrastive::lse_merge(m_all, sum_neg, m_pos, sum_pos);
  lse_all = m_all + std::log(sum_neg);
}

// Backward epilogue: dS (gradient w.r.t. the raw similarity) in place of the slab row.
template <typename T>
inline void backward_row(T* row, const float* w, const float* pos, int64_t B, int v, int64_t i, bool ordered6,
                         T inv_tau, T g_pos, T g_all, T lse_pos, T lse_all) {
  const RowPlan plan = plan_row(v, i, B, ordered6);
  const T a_pos = contrastive::mgcl_pos_coef(g_pos, g_all, lse_pos, lse_all);
  const T wd = T(w[i]);
  const T lam_d = wd * row[3 * B + i] * inv_tau;
  const T ds_d = contrastive::mgcl_pair_grad(lam_d, true, wd, inv_tau, lse_pos, lse_all, a_pos, g_all);
  for (int k = 0; k < plan.count; ++k) {
    const int64_t c = plan.ranges[k][0];
    Loops<T>::grad(c == 3, row + c * B, w, pos, plan.ranges[k][1], plan.ranges[k][2], inv_tau, lse_pos, lse_all,
                   a_pos, g_all);
  }
  for (int k = 0; k < plan.n_excluded; ++k) row[plan.excluded[k]] = T(0);
  row[3 * B + i] = ds_d;
}

// ------------------------------------------------------------------------------------------------
// Checks and shared setup.

struct Setup {
  int64_t B, bs;
  Params p;
  pairwise::Normalized nm, ni;  // n(macro), n(micro) in the compute dtype
  at::Tensor yt;                // ỹ = float32(y) / float32(label_scale), fp32 [B]
  at::Tensor K[3];              // K_v = [n(macro); n(micro_v)]  [4B, d]
};

Setup make_setup(const at::Tensor& macro, const at::Tensor& micro, const at::Tensor& y, double delta, double tau,
                 double label_scale, c10::string_view pos_weight, c10::string_view neg_weight, double gain,
                 bool ordered6, bool normalize) {
  Setup st;
  st.B = contrastive::check_mgcl(macro, micro, y, delta, tau, label_scale, gain);
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"macro", macro}, {"micro", micro}})
    TORCH_CHECK_VALUE(t.device().is_cpu(), kOp, ": ", name, " must be a CPU tensor here, got ", t.device());
  const float g = static_cast<float>(gain);
  st.p = Params{static_cast<float>(delta), g, 0.8f * g, tau,
                contrastive::parse_mgcl_weight(std::string(pos_weight), "pos_weight"),
                contrastive::parse_mgcl_weight(std::string(neg_weight), "neg_weight"), ordered6};
  const at::ScalarType ct = compute_type(macro);
  st.nm = pairwise::normalize_rows(macro, ct, normalize);
  st.ni = pairwise::normalize_rows(micro, ct, normalize);
  // True fp32 division (as the reference's y.float() / tensor(label_scale)), not a reciprocal multiply.
  st.yt = y.to(at::kFloat).contiguous().clone();
  {
    float* yp = st.yt.data_ptr<float>();
    const float scale = static_cast<float>(label_scale);
    for (int64_t j = 0; j < st.B; ++j) yp[j] = yp[j] / scale;
  }
  for (int v = 0; v < 3; ++v) st.K[v] = at::cat({st.nm.u, st.ni.u.narrow(0, v * st.B, st.B)}, 0);
  const int64_t row_bytes = 4 * st.B * static_cast<int64_t>(c10::elementSize(ct));
  st.bs = std::min(st.B, std::max<int64_t>(8, kSlabBytes / row_bytes));
  // At least ~4 tasks (block, view) per thread, so that the static split stays balanced.
  const int64_t min_blocks = (4 * static_cast<int64_t>(at::get_num_threads()) + 2) / 3;
  st.bs = std::max<int64_t>(1, std::min(st.bs, (st.B + min_blocks - 1) / min_blocks));
  return st;
}

// ------------------------------------------------------------------------------------------------
// Ops. Work is split into tasks (sample block, view); each thread owns its slab and label buffers and
// runs its GEMMs single-threaded (BLAS inside a parallel region), so one forward is one parallel
// region with no barrier per slab, and the slab stays in that core's cache.

// Per-thread scratch: the slab [bs, 4B] and the label block (weights, status) [bs, B] of one sample block.
struct Scratch {
  at::Tensor slab, wblk, pblk;
  int64_t block = -1;  // sample block whose labels are in wblk / pblk
  Scratch(int64_t bs, int64_t B, const at::TensorOptions& opts)
      : slab(at::empty({bs, 4 * B}, opts)),
        wblk(at::empty({bs, B}, opts.dtype(at::kFloat))),
        pblk(at::empty({bs, B}, opts.dtype(at::kFloat))) {}
  void labels_for(int64_t blk, const Setup& st) {
    if (blk == block) return;
    const int64_t i0 = blk * st.bs;
    label_block(st.yt.data_ptr<float>(), st.B, i0, std::min(st.bs, st.B - i0), st.p, wblk, pblk.data_ptr<float>());
    block = blk;
  }
};

std::tuple<at::Tensor, at::Tensor> mgcl_rows_cpu(const at::Tensor& macro, const at::Tensor& micro, const at::Tensor& y,
                                                 double delta, double tau, double label_scale,
                                                 c10::string_view pos_weight, c10::string_view neg_weight, double gain,
                                                 bool ordered6, bool normalize) {
  Setup st = make_setup(macro, micro, y, delta, tau, label_scale, pos_weight, neg_weight, gain, ordered6, normalize);
  const int64_t B = st.B, bs = st.bs, nblk = (B + bs - 1) / bs;
  const at::ScalarType ct = compute_type(macro);
  const auto opts = macro.options().dtype(ct);
  at::Tensor lse_pos = at::empty({3 * B}, opts), lse_all = at::empty({3 * B}, opts);
  AT_DISPATCH_FLOATING_TYPES(ct, "msa_fast_mgcl_rows_cpu", [&] {
    using T = scalar_t;
    const T inv_tau = T(1) / T(tau);
    T* out_pos = lse_pos.data_ptr<T>();
    T* out_all = lse_all.data_ptr<T>();
    // Tasks t = 3·block + v, so that a thread's consecutive tasks share the label block. Each task
    // writes only its own rows: the result does not depend on the split.
    // The workers see the caller's dispatch state (below autograd): ATen calls there must not
    // record or reject autograd when an input requires grad.
    const at::ThreadLocalState tls;
    at::parallel_for(0, 3 * nblk, 1, [&](int64_t t0, int64_t t1) {
      const at::ThreadLocalStateGuard tls_guard(tls);
      Scratch sc(bs, B, opts);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t blk = t / 3, i0 = blk * bs, n = std::min(bs, B - i0);
        const int v = static_cast<int>(t % 3);
        sc.labels_for(blk, st);
        at::Tensor s = sc.slab.narrow(0, 0, n);
        at::mm_out(s, st.nm.u.narrow(0, v * B + i0, n), st.K[v].t());
        T* sp = s.data_ptr<T>();
        const float* w = sc.wblk.data_ptr<float>();
        const float* pos = sc.pblk.data_ptr<float>();
        for (int64_t r = 0; r < n; ++r) {
          const int64_t i = i0 + r;
          forward_row<T>(sp + r * 4 * B, w + r * B, pos + r * B, B, v, i, st.p.ordered6, inv_tau, out_pos[v * B + i],
                         out_all[v * B + i]);
        }
      }
    });
  });
  return {lse_pos, lse_all};
}

std::tuple<at::Tensor, at::Tensor> mgcl_rows_backward_cpu(const at::Tensor& grad_lse_pos, const at::Tensor& grad_lse_all,
                                                          const at::Tensor& macro, const at::Tensor& micro,
                                                          const at::Tensor& y, const at::Tensor& lse_pos,
                                                          const at::Tensor& lse_all, double delta, double tau,
                                                          double label_scale, c10::string_view pos_weight,
                                                          c10::string_view neg_weight, double gain, bool ordered6,
                                                          bool normalize) {
  Setup st = make_setup(macro, micro, y, delta, tau, label_scale, pos_weight, neg_weight, gain, ordered6, normalize);
  const int64_t B = st.B, bs = st.bs, nblk = (B + bs - 1) / bs, d = macro.size(1);
  contrastive::check_mgcl_grad({{"grad_lse_pos", &grad_lse_pos},
                                {"grad_lse_all", &grad_lse_all},
                                {"lse_pos", &lse_pos},
                                {"lse_all", &lse_all}},
                               B, macro);
  const at::ScalarType ct = compute_type(macro);
  const auto opts = macro.options().dtype(ct);
  // Statistics in the compute dtype (fp64 stays fp64 for gradcheck).
  const at::Tensor gp = grad_lse_pos.reshape({3 * B}).to(ct).contiguous(),
                   ga = grad_lse_all.reshape({3 * B}).to(ct).contiguous(),
                   lp = lse_pos.reshape({3 * B}).to(ct).contiguous(), la = lse_all.reshape({3 * B}).to(ct).contiguous();
  at::Tensor du_macro = at::zeros({3 * B, d}, opts);
  // Column-side sums Σ dSᵀ·U_rows, one [6B, d] buffer per thread (rows 0…3B: macro columns, shared by
  // the three views; rows 3B…6B: micro columns), reduced in thread order afterwards. Tasks are split
  // into fixed contiguous ranges per buffer, so the result is deterministic for a given thread count;
  // no atomics.
  const int64_t n_tasks = 3 * nblk;
  const int64_t n_parts = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n_tasks));
  at::Tensor cols = at::zeros({n_parts, 6 * B, d}, opts);
  AT_DISPATCH_FLOATING_TYPES(ct, "msa_fast_mgcl_rows_backward_cpu", [&] {
    using T = scalar_t;
    const T inv_tau = T(1) / T(tau);
    const T *gpp = gp.data_ptr<T>(), *gap = ga.data_ptr<T>(), *lpp = lp.data_ptr<T>(), *lap = la.data_ptr<T>();
    const at::ThreadLocalState tls;  // as in the forward
    at::parallel_for(0, n_parts, 1, [&](int64_t c0, int64_t c1) {
      const at::ThreadLocalStateGuard tls_guard(tls);
      for (int64_t c = c0; c < c1; ++c) {
        Scratch sc(bs, B, opts);
        at::Tensor col = cols.select(0, c);
        // Tasks t = 3·block + v as in the forward (consecutive tasks share the label block).
        for (int64_t t = n_tasks * c / n_parts; t < n_tasks * (c + 1) / n_parts; ++t) {
          const int64_t blk = t / 3, i0 = blk * bs, n = std::min(bs, B - i0);
          const int v = static_cast<int>(t % 3);
          sc.labels_for(blk, st);
          at::Tensor s = sc.slab.narrow(0, 0, n);
          const at::Tensor u_rows = st.nm.u.narrow(0, v * B + i0, n);
          at::mm_out(s, u_rows, st.K[v].t());
          T* sp = s.data_ptr<T>();
          const float* w = sc.wblk.data_ptr<float>();
          const float* pos = sc.pblk.data_ptr<float>();
          for (int64_t r = 0; r < n; ++r) {
            const int64_t i = i0 + r, row = v * B + i;
            backward_row<T>(sp + r * 4 * B, w + r * B, pos + r * B, B, v, i, st.p.ordered6, inv_tau, gpp[row],
                            gap[row], lpp[row], lap[row]);
          }
          // Row side: dU_rows += dS·K_v (macro and micro_v columns at once; these rows belong to this
          // task). Column side: macro columns += dS[:, :3B]ᵀ·U_rows, micro_v columns += dS[:, 3B:]ᵀ·U_rows.
          du_macro.narrow(0, v * B + i0, n).addmm_(s, st.K[v]);
          col.narrow(0, 0, 3 * B).addmm_(s.narrow(1, 0, 3 * B).t(), u_rows);
          col.narrow(0, 3 * B + v * B, B).addmm_(s.narrow(1, 3 * B, B).t(), u_rows);
        }
      }
    });
  });
  const at::Tensor col = n_parts == 1 ? cols.select(0, 0) : cols.sum(0);
  du_macro.add_(col.narrow(0, 0, 3 * B));
  const at::Tensor du_micro = col.narrow(0, 3 * B, 3 * B);
  return {pairwise::normalize_backward(du_macro, st.nm).to(macro.scalar_type()),
          pairwise::normalize_backward(du_micro, st.ni).to(micro.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(msa_fast, CPU, m) {
  m.impl("mgcl_rows", &mgcl_rows_cpu);
  m.impl("mgcl_rows_backward", &mgcl_rows_backward_cpu);
}

}  // namespace msa_fast
