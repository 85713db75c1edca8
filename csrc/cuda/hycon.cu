// CUDA kernels of hycon_rows / hycon_rows_backward (ops.md §4) on the tile engine of pairwise_tiles.cuh;
// same output as csrc/cpu/hycon.cpp: stats [3K, 7] (fp32, fp64 for fp64 x) over the rows of
// x = [x_l; x_a; x_v], row r = m·K + k, u = n(x), s_rc = u_r·u_c, per anchor
//   (Σ_Pos1 f(s), Σ_Neg1 f(s), Σ_Pos1 (s − 1)²) over its own view, the same three with target α over the
//   other views, and SCL's unhalved Σ_{m′≠m} (s_{r, m′K+k} − α)²,
// with the pair status, transforms and gradients of common/contrastive.h (classes compared as given:
// −1 = dropped; the CPU kernel's dense ranks give the same relations).
// Forward, one launch: a block owns BM anchors and streams all 3K rows (the full square, not the CPU's
// upper triangle: no column-side scatter, no atomics).
// Backward by recomputation, one pass: the stats are sums of per-pair functions and s and the relations
// are symmetric, so G_rc = dS_rc + dS_cr needs the row's and the column's 7 coefficients, and
// dU_r = Σ_c G_rc u_c; then back through n(·).
#include "cuda/pairwise_host.cuh"

#include <torch/library.h>

#include <string>

#include "common/contrastive_args.h"

namespace msa_fast {
namespace hycon_cuda {
namespace {

using namespace tiles;
namespace cm = contrastive;
constexpr int kStats = cm::kHyconStats;

template <typename T>
struct Geometry {
  const char* x;
  int64_t N, K, D, row_bytes;
  int dt;
  bool normalize;  // always true (hycon uses cosines)
  const int64_t* classes;
  T alpha, inv_tau;
  int f;  // transform

  MSA_DEV Tile tile(unsigned b) const {
    const int64_t o0 = static_cast<int64_t>(b) * Cfg<T>::BM;
    return {o0, static_cast<int>(min64(Cfg<T>::BM, N - o0)), 0, N, 0};
  }
  MSA_DEV const char* owner_row(const Tile&, int64_t o) const { return x + o * row_bytes; }
  MSA_DEV const char* stream_row(const Tile&, int64_t t) const { return x + t * row_bytes; }
};

// (view, sample, class) of row r = m·K + k.
struct Anchor {
  int m;
  int64_t k, c;
};

template <typename T>
MSA_DEV Anchor anchor(const Geometry<T>& geo, int64_t r) {
  const int64_t m = r / geo.K, k = r - m * geo.K;
  return {static_cast<int>(m), k, geo.classes[k]};
}

template <typename T>
struct Fwd : Geometry<T> {
  static constexpr int kStates = kStats;
  static constexpr bool kPartnerDot = false;
  T* stats;

  struct Row {
    T st[kStates];
    Anchor a;
  };
  using Col = Anchor;

  MSA_DEV void init_row(const Tile& tile, int o, bool live, T, Row& r) const {
#pragma unroll
    for (int q = 0; q < kStates; ++q) r.st[q] = T(0);
    r.a = live ? anchor(*this, tile.o_begin + o) : Anchor{0, -1, -1};
  }
  MSA_DEV Col load_col(const Tile&, int64_t t) const { return anchor(*this, t); }

  template <class C>
  MSA_DEV void accumulate(const Tile&, int, T, const C& cols, const T (&s)[Cfg<T>::TN], Row& r) const {
    const bool kept = cm::hycon_kept(r.a.c);
#pragma unroll
    for (int j = 0; j < Cfg<T>::TN; ++j) {
      if (!cols.valid[j]) continue;
      const Anchor& c = cols.meta[j];
      const T v = s[j];
      const bool same_view = c.m == r.a.m;
      if (c.k == r.a.k) {  // same sample: SCL on the other views, nothing on its own
        const T d = v - this->alpha;
        r.st[6] += same_view ? T(0) : d * d;
        continue;
      }
      if (!kept) continue;  // a dropped anchor has no IAMCL/IEMCL pairs
      const bool pos = cm::hycon_positive(c.c, r.a.c), neg = cm::hycon_negative(c.c, r.a.c);
      const T target = same_view ? T(1) : this->alpha;
      const T fv = cm::hycon_transform(this->f, v, this->inv_tau);
      const T d = v - target;
      const T tp = pos ? fv : T(0), tn = neg ? fv : T(0), tq = pos ? d * d : T(0);
      r.st[0] += same_view ? tp : T(0);
      r.st[1] += same_view ? tn : T(0);
      r.st[2] += same_view ? tq : T(0);
      r.st[3] += same_view ? T(0) : tp;
      r.st[4] += same_view ? T(0) : tn;
      r.st[5] += same_view ? T(0) : tq;
    }
  }
  MSA_DEV void merge(T* a, const T* b) const {
#pragma unroll
    for (int q = 0; q < kStates; ++q) a[q] += b[q];
  }
  MSA_DEV void finish(const Tile& tile, int o, const T* st) const {
    T* out = stats + (tile.o_begin + o) * kStats;
#pragma unroll
    for (int q = 0; q < kStates; ++q) out[q] = st[q];
  }
};

template <typename T>
struct Coefs {
  Anchor a;
  T g[kStats];  // ∂L/∂stats of this row
};

template <typename T>
struct Bwd : Geometry<T> {
  const T* grad_stats;  // [3K, 7], compute dtype
  using Row = Coefs<T>;
  using Col = Coefs<T>;

  MSA_DEV Coefs<T> load(int64_t r) const {
    Coefs<T> c;
    c.a = anchor(*this, r);
#pragma unroll
    for (int q = 0; q < kStats; ++q) c.g[q] = grad_stats[r * kStats + q];
    return c;
  }
  MSA_DEV void init_row(const Tile& tile, int o, bool live, T, Row& r) const {
    if (live) {
      r = load(tile.o_begin + o);
    } else {
      r.a = Anchor{0, -1, -1};
#pragma unroll
      for (int q = 0; q < kStats; ++q) r.g[q] = T(0);
    }
  }
  MSA_DEV Col load_col(const Tile&, int64_t t) const { return load(t); }
  MSA_DEV T grad(const Tile&, int, T, const Row& r, int64_t, const Col& c, T s, T, T&) const {
    const bool same_view = c.a.m == r.a.m;
    if (c.a.k == r.a.k)  // j = k: no pair in the same view; SCL's (s − α)² of both rows in the others
      return same_view ? T(0) : (r.g[6] + c.g[6]) * (T(2) * (s - this->alpha));
    if (!cm::hycon_kept(r.a.c)) return T(0);  // a dropped sample is in no IAMCL/IEMCL pair
    const bool pos = cm::hycon_positive(c.a.c, r.a.c), neg = cm::hycon_negative(c.a.c, r.a.c);
    const T target = same_view ? T(1) : this->alpha;
    const T ap = same_view ? r.g[0] + c.g[0] : r.g[3] + c.g[3];
    const T an = same_view ? r.g[1] + c.g[1] : r.g[4] + c.g[4];
    const T aq = same_view ? r.g[2] + c.g[2] : r.g[5] + c.g[5];
    return cm::hycon_pair_grad(s, pos, neg, target, cm::hycon_transform_grad(this->f, s, this->inv_tau), ap, an, aq);
  }
  MSA_DEV int64_t out_row(const Tile& tile, int o) const { return tile.o_begin + o; }
};

template <typename T>
void fill_geometry(Geometry<T>& geo, const at::Tensor& x, const at::Tensor& classes, const cm::HyconArgs& a,
                   double alpha, double tau) {
  geo.x = bytes(x);
  geo.N = x.size(0);
  geo.K = a.K;
  geo.D = x.size(1);
  geo.row_bytes = x.size(1) * static_cast<int64_t>(x.element_size());
  geo.dt = dtype_of(x);
  geo.normalize = true;
  geo.classes = classes.const_data_ptr<int64_t>();
  geo.alpha = T(alpha);
  geo.inv_tau = T(1) / T(tau);
  geo.f = a.f;
}

at::Tensor hycon_rows_cuda(const at::Tensor& x_in, const at::Tensor& classes_in, double alpha,
                           c10::string_view transform, double tau) {
  const cm::HyconArgs a = cm::check_hycon(x_in, classes_in, tau, std::string(transform));
  check_device(cm::kHyconOp, {{"x", &x_in}, {"classes", &classes_in}});
  const Stream stream(x_in);
  const at::Tensor x = x_in.contiguous(), classes = classes_in.contiguous();
  const int64_t N = x.size(0);
  at::Tensor stats =
      at::empty({N, kStats}, x.options().dtype(x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat));
  with_compute_type(x, [&](auto tag) {
    using T = decltype(tag);
    Fwd<T> f{};
    fill_geometry<T>(f, x, classes, a, alpha, tau);
    f.stats = stats.data_ptr<T>();
    launch(&rows_forward_kernel<T, Fwd<T>>, forward_grid(ceil_div(N, Cfg<T>::BM)), stream, f);
  });
  return stats;
}

at::Tensor hycon_rows_backward_cuda(const at::Tensor& grad_stats, const at::Tensor& x_in, const at::Tensor& classes_in,
                                   double alpha, c10::string_view transform, double tau) {
  const cm::HyconArgs a = cm::check_hycon(x_in, classes_in, tau, std::string(transform));
  cm::check_hycon_grad(grad_stats, x_in, a.K);
  check_device(cm::kHyconOp, {{"x", &x_in}, {"classes", &classes_in}, {"grad_stats", &grad_stats}});
  const Stream stream(x_in);
  const at::Tensor x = x_in.contiguous(), classes = classes_in.contiguous();
  const int64_t N = x.size(0), D = x.size(1);
  at::Tensor dx;
  with_compute_type(x, [&](auto tag) {
    using T = decltype(tag);
    const auto ct = c10::CppTypeToScalarType<T>::value;
    const at::Tensor g = grad_stats.to(ct).contiguous();
    at::Tensor du = at::empty({N, D}, x.options().dtype(ct));
    Bwd<T> b{};
    fill_geometry<T>(b, x, classes, a, alpha, tau);
    b.grad_stats = g.const_data_ptr<T>();
    launch(&rows_grad_kernel<T, Bwd<T>>, grad_grid(ceil_div(N, Cfg<T>::BM), D), stream, b, du.data_ptr<T>(),
           static_cast<T*>(nullptr));
    dx = finalize<T>(stream, x, /*normalize=*/true, &du, nullptr, T(1));
  });
  return dx;
}

}  // namespace
}  // namespace hycon_cuda

#if !defined(MSA_CUDA_EMULATION)
TORCH_LIBRARY_IMPL(msa_fast, CUDA, m) {
  m.impl("hycon_rows", &hycon_cuda::hycon_rows_cuda);
  m.impl("hycon_rows_backward", &hycon_cuda::hycon_rows_backward_cuda);
}
#endif

}  // namespace msa_fast
