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
// Forward: per block of BM rows one GEMM writes the BM × 3K slab of s, then each slab row is reduced
// by one vectorised loop per view segment, split around the anchor's own sample (j = k).
// Backward: the stats are sums of per-pair functions φ_r(s_rc), and s is symmetric (Y = X), so
//   dU = (dS + dSᵀ) U,  dS_rc = Σ_q g_rq ∂stat_q[r]/∂s_rc.
// The pair sets are symmetric too (same class / other class / same sample are symmetric relations,
// as is "same view"), so G_rc = dS_rc + dS_cr needs only the row's own coefficients g_r and the
// column's g_c, read from a transposed [7, 3K] copy. The slab is rebuilt, G written into it, and ONE
// GEMM per slab gives the block's rows of dU (no second, transposed GEMM: every row of dU is owned by
// one block, so no atomics and no reduction across blocks). Then back through n(·).
// Blocks run in parallel, each thread with its own slab and single-threaded GEMMs, so a slab is made
// and consumed on the same core. The block partition depends only on N and the thread count (small
// N is split so that every thread gets a block), and each row's sums run in a fixed order, so results
// are deterministic for a given thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <string>

#include "cpu/pairwise.h"

namespace msa_fast {
namespace {

using pairwise::fast_exp;

constexpr const char* kOp = "msa_fast.ops.hycon_loss";
constexpr int64_t kStats = 7;
// Slab per thread: small enough to stay in a core's L2 between the GEMM that writes it and the epilogue
// (and the backward GEMM) that read it.
constexpr int64_t kSlabBytesPerThread = int64_t(8) << 20;

enum Transform : int { kCos = 0, kCos01 = 1, kExpTau = 2 };

// The loop templates must be inlined into each target clone below, or the clones just call one
// baseline (scalar) copy.
#if defined(__GNUC__)
#define MSA_HYCON_INLINE inline __attribute__((always_inline))
#else
#define MSA_HYCON_INLINE inline
#endif

Transform parse_transform(const std::string& t) {
  if (t == "cos") return kCos;
  if (t == "cos01") return kCos01;
  TORCH_CHECK_VALUE(t == "exp_tau", kOp, ": sim_transform must be one of ('cos', 'cos01', 'exp_tau'), got '", t,
                    "'");
  return kExpTau;
}

template <typename T, int F>
MSA_HYCON_INLINE T transform(T v, T inv_tau) {
  if constexpr (F == kCos) return v;
  if constexpr (F == kCos01) return (T(1) + v) * T(0.5);
  return fast_exp(v * inv_tau);
}

// f′(s): 1, ½, exp(s/τ)/τ.
template <typename T, int F>
MSA_HYCON_INLINE T transform_grad(T v, T inv_tau) {
  if constexpr (F == kCos) return T(1);
  if constexpr (F == kCos01) return T(0.5);
  return fast_exp(v * inv_tau) * inv_tau;
}

// Forward, one view segment of a slab row over candidates j ∈ [begin, end) (the caller splits around
// j = k): Σ_pos f(s), Σ_neg f(s), Σ_pos (s − target)², for an anchor of class c ≥ 0. Selection (not
// multiplication by a mask) so that a NaN only enters through the pairs of the anchor's own sets.
template <typename T, int F>
MSA_HYCON_INLINE void seg_sums(const T* s, const int32_t* cls, int64_t begin, int64_t end, int32_t c, T target,
                               T inv_tau, T* acc) {
  T sp = 0, sn = 0, sq = 0;
#pragma omp simd reduction(+ : sp, sn, sq)
  for (int64_t j = begin; j < end; ++j) {
    const T v = s[j];
    const int32_t cj = cls[j];
    const T fv = transform<T, F>(v, inv_tau);
    const bool pos = cj == c;
    const bool neg = (cj != c) & (cj >= 0);
    const T d = v - target;
    sp += pos ? fv : T(0);
    sn += neg ? fv : T(0);
    sq += pos ? d * d : T(0);
  }
  acc[0] += sp;
  acc[1] += sn;
  acc[2] += sq;
}

// Backward, one view segment in place: s_j ← G = dS_rj + dS_jr for j ∈ [begin, end), anchor class
// c ≥ 0. (ap, an, aq) are the row's coefficients of (Σ_pos f, Σ_neg f, Σ_pos (s − target)²) and
// (Ap, An, Aq) the columns' coefficients of the same three statistics.
template <typename T, int F>
MSA_HYCON_INLINE void seg_grad(T* s, const int32_t* cls, int64_t begin, int64_t end, int32_t c, T target,
                               T inv_tau, T ap, T an, T aq, const T* Ap, const T* An, const T* Aq) {
#pragma omp simd
  for (int64_t j = begin; j < end; ++j) {
    const T v = s[j];
    const int32_t cj = cls[j];
    const T fp = transform_grad<T, F>(v, inv_tau);
    const bool pos = cj == c;
    const bool neg = (cj != c) & (cj >= 0);
    const T gpos = (ap + Ap[j]) * fp + (aq + Aq[j]) * (T(2) * (v - target));
    const T gneg = (an + An[j]) * fp;
    s[j] = pos ? gpos : (neg ? gneg : T(0));
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
  static void grad(int f, float* s, const int32_t* cls, int64_t b, int64_t e, int32_t c, float t, float it, float ap,
                   float an, float aq, const float* Ap, const float* An, const float* Aq) {
    switch (f) {
      case kCos: return seg_grad_cos(s, cls, b, e, c, t, it, ap, an, aq, Ap, An, Aq);
      case kCos01: return seg_grad_cos01(s, cls, b, e, c, t, it, ap, an, aq, Ap, An, Aq);
      default: return seg_grad_exp_tau(s, cls, b, e, c, t, it, ap, an, aq, Ap, An, Aq);
    }
  }
};

struct Args {
  int64_t K;
  Transform f;
};

Args check_inputs(const at::Tensor& x, const at::Tensor& classes, double tau, const std::string& transform_name) {
  const auto st = x.scalar_type();
  TORCH_CHECK_TYPE(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16, kOp,
                   ": x must be fp32/fp16/bf16/fp64, got ", st);
  TORCH_CHECK_VALUE(x.dim() == 2, kOp, ": x must be [3K, d] (= [x_l; x_a; x_v]), got shape ", x.sizes());
  TORCH_CHECK_VALUE(x.numel() > 0, kOp, ": x is empty (shape ", x.sizes(), ")");
  TORCH_CHECK_VALUE(x.size(0) % 3 == 0, kOp, ": x must stack the three modalities, [3K, d], got ", x.size(0),
                    " rows (shape ", x.sizes(), ")");
  const int64_t K = x.size(0) / 3;
  TORCH_CHECK_VALUE(K <= std::numeric_limits<int32_t>::max(), kOp, ": K = ", K, " samples is too many");
  TORCH_CHECK_TYPE(classes.scalar_type() == at::kLong, kOp, ": classes must be int64 here, got ",
                   classes.scalar_type());
  TORCH_CHECK_VALUE(classes.dim() == 1 && classes.size(0) == K, kOp, ": classes must be [K] = [", K,
                    "] for x of shape ", x.sizes(), ", got shape ", classes.sizes());
  TORCH_CHECK_VALUE(classes.device() == x.device(), kOp, ": classes is on ", classes.device(), " but x is on ",
                    x.device());
  TORCH_CHECK_VALUE(tau > 0, kOp, ": tau must be > 0, got ", tau);
  return {K, parse_transform(transform_name)};
}

at::ScalarType compute_type(const at::Tensor& x) { return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

// Class ids as dense int32 ranks (equal ids ↔ equal ranks, ranks ≥ 0), −1 kept as "dropped": int32
// lanes match the float lanes of the epilogue loops.
at::Tensor dense_classes(const at::Tensor& classes) {
  const at::Tensor c = classes.contiguous();
  const at::Tensor sorted = std::get<0>(at::sort(c));
  at::Tensor rank = at::searchsorted(sorted, c);  // index of the first equal id: a rank in [0, K)
  return rank.masked_fill_(c == -1, -1).to(at::kInt).contiguous();
}

// Rows per block: a slab of about kSlabBytesPerThread (at least 64 rows, for GEMM efficiency), but no
// more than an even share of the rows per thread, so that mid-sized N still uses every core.
int64_t slab_rows(int64_t n, int64_t elem_bytes) {
  const int64_t by_bytes = std::max<int64_t>(64, kSlabBytesPerThread / std::max<int64_t>(n * elem_bytes, 1));
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t share = (n + threads - 1) / threads;
  return std::max<int64_t>(1, std::min({n, by_bytes, (share + 15) / 16 * 16}));
}

at::Tensor hycon_rows_cpu(const at::Tensor& x, const at::Tensor& classes, double alpha, c10::string_view transform_sv,
                          double tau) {
  const Args a = check_inputs(x, classes, tau, std::string(transform_sv));
  const at::ScalarType ct = compute_type(x);
  const pairwise::Normalized n = pairwise::normalize_rows(x, ct, /*normalize=*/true);
  const at::Tensor cls_t = dense_classes(classes);
  const int64_t K = a.K, N = 3 * K;
  at::Tensor stats = at::empty({N, kStats}, x.options().dtype(ct));
  AT_DISPATCH_FLOATING_TYPES(ct, "msa_fast_hycon_rows_cpu", [&] {
    using T = scalar_t;
    const T inv_tau = T(1) / T(tau), al = T(alpha);
    const int64_t bm = slab_rows(N, sizeof(T));
    const int64_t blocks = (N + bm - 1) / bm;
    const at::Tensor ut = n.u.t();
    const int32_t* cls = cls_t.data_ptr<int32_t>();
    T* out = stats.data_ptr<T>();
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      at::Tensor slab = at::empty({bm, N}, n.u.options());
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t i0 = b * bm, rows = std::min(bm, N - i0);
        at::Tensor s = slab.narrow(0, 0, rows);
        at::mm_out(s, n.u.narrow(0, i0, rows), ut);  // raw cosines of this block against all 3K rows
        const T* sp = s.data_ptr<T>();
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t i = i0 + r, m = i / K, k = i % K;
          const int32_t c = cls[k];
          const T* row = sp + r * N;
          T st[kStats] = {0, 0, 0, 0, 0, 0, 0};
          for (int64_t mp = 0; mp < 3; ++mp) {
            const T* seg = row + mp * K;
            if (c >= 0) {
              T* acc = mp == m ? st : st + 3;
              const T target = mp == m ? T(1) : al;
              Loops<T>::sums(a.f, seg, cls, 0, k, c, target, inv_tau, acc);
              Loops<T>::sums(a.f, seg, cls, k + 1, K, c, target, inv_tau, acc);
            }
            if (mp != m) {
              const T d = seg[k] - al;
              st[6] += d * d;
            }
          }
          std::copy(st, st + kStats, out + i * kStats);
        }
      }
    });
  });
  return stats;
}

at::Tensor hycon_rows_backward_cpu(const at::Tensor& grad_stats, const at::Tensor& x, const at::Tensor& classes,
                                   double alpha, c10::string_view transform_sv, double tau) {
  const Args a = check_inputs(x, classes, tau, std::string(transform_sv));
  const int64_t K = a.K, N = 3 * K;
  TORCH_CHECK_VALUE(grad_stats.dim() == 2 && grad_stats.size(0) == N && grad_stats.size(1) == kStats, kOp,
                    " backward: grad_stats must be [3K, 7] = [", N, ", 7], got shape ", grad_stats.sizes());
  TORCH_CHECK_VALUE(grad_stats.device() == x.device(), kOp, " backward: grad_stats is on ", grad_stats.device(),
                    " but x is on ", x.device());
  const at::ScalarType ct = compute_type(x);
  const pairwise::Normalized n = pairwise::normalize_rows(x, ct, /*normalize=*/true);
  const at::Tensor cls_t = dense_classes(classes);
  // Coefficients row-major ([3K, 7], the row's own) and transposed ([7, 3K], the columns', contiguous
  // per statistic so the epilogue streams them).
  const at::Tensor g = grad_stats.to(ct).contiguous();
  const at::Tensor gt = g.t().contiguous();
  at::Tensor du = at::empty_like(n.u);
  AT_DISPATCH_FLOATING_TYPES(ct, "msa_fast_hycon_rows_backward_cpu", [&] {
    using T = scalar_t;
    const T inv_tau = T(1) / T(tau), al = T(alpha);
    const int64_t bm = slab_rows(N, sizeof(T));
    const int64_t blocks = (N + bm - 1) / bm;
    const at::Tensor ut = n.u.t();
    const int32_t* cls = cls_t.data_ptr<int32_t>();
    const T* gp = g.data_ptr<T>();
    const T* gtp = gt.data_ptr<T>();
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      at::Tensor slab = at::empty({bm, N}, n.u.options());
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t i0 = b * bm, rows = std::min(bm, N - i0);
        at::Tensor s = slab.narrow(0, 0, rows);
        at::mm_out(s, n.u.narrow(0, i0, rows), ut);
        T* sp = s.data_ptr<T>();
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t i = i0 + r, m = i / K, k = i % K;
          const int32_t c = cls[k];
          const T* ar = gp + i * kStats;
          T* row = sp + r * N;
          for (int64_t mp = 0; mp < 3; ++mp) {
            T* seg = row + mp * K;
            const int64_t q = mp == m ? 0 : 3;  // same view: stats 0–2, other views: 3–5
            const T target = mp == m ? T(1) : al;
            const T s_kk = seg[k];
            if (c >= 0) {
              const T* A = gtp + q * N + mp * K;
              Loops<T>::grad(a.f, seg, cls, 0, k, c, target, inv_tau, ar[q], ar[q + 1], ar[q + 2], A, A + N,
                             A + 2 * N);
              Loops<T>::grad(a.f, seg, cls, k + 1, K, c, target, inv_tau, ar[q], ar[q + 1], ar[q + 2], A, A + N,
                             A + 2 * N);
            } else {
              std::fill(seg, seg + K, T(0));  // a dropped sample is in no IAMCL/IEMCL pair, either side
            }
            // j = k: no pair in the same view; SCL's (s − α)² in the others, for row (k, m) and row (k, m′).
            seg[k] = mp == m ? T(0) : (ar[6] + gtp[6 * N + mp * K + k]) * (T(2) * (s_kk - al));
          }
        }
        // dU of this block's rows: G_slab · U (G symmetric in its pair roles, see the header).
        at::Tensor du_blk = du.narrow(0, i0, rows);
        at::mm_out(du_blk, s, n.u);
      }
    });
  });
  return pairwise::normalize_backward(du, n).to(x.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(msa_fast, CPU, m) {
  m.impl("hycon_rows", &hycon_rows_cpu);
  m.impl("hycon_rows_backward", &hycon_rows_backward_cpu);
}

}  // namespace msa_fast
