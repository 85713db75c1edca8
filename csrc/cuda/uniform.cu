// CUDA kernels of uniform_rows / uniform_rows_backward (ops.md §6) on the tile engine of
// pairwise_tiles.cuh; same outputs as csrc/cpu/uniform.cpp: lse_i = LSE_{j≠i} v_ij with
// v_ij = −κ max(‖p̂_i‖² + ‖ĝ_j‖² − 2 p̂_i·ĝ_j, 0) (common/contrastive.h), fp32 (fp64 for fp64 inputs).
// Forward, one launch: owners p, streamed g, online LSE per row (final log in double, so κ = 0 gives
// exactly fl(log(n − 1)) as on the CPU).
// Backward by recomputation, with W_ij = ∂L/∂d²_ij = −κ g_i exp(v_ij − lse_i) (W_ii = 0, the clamp of d²
// treated as the identity, as on the CPU): a row pass (owners p, streamed ĝ) gives Σ_j W_ij ĝ_j and the
// row sums, a column pass (owners g, streamed p̂) Σ_i W_ij p̂_i and the column sums;
//   dp̂ = 2 (rowsum ⊙ p̂ − W ĝ),  dĝ = 2 (colsum ⊙ ĝ − Wᵀ p̂),  then back through n(·).
#include "cuda/pairwise_host.cuh"

#include <torch/library.h>

#include <cmath>
#include <tuple>

#include "common/contrastive_args.h"

namespace msa_fast {
namespace uniform_cuda {
namespace {

using namespace tiles;
namespace cm = contrastive;

template <typename T>
struct Geometry {
  const char *own, *streamed;
  int64_t N, D, row_bytes;
  int dt;
  bool normalize;
  T neg_kappa;

  MSA_DEV Tile tile(unsigned b) const {
    const int64_t o0 = static_cast<int64_t>(b) * Cfg<T>::BM;
    return {o0, static_cast<int>(min64(Cfg<T>::BM, N - o0)), 0, N, 0};
  }
  MSA_DEV const char* owner_row(const Tile&, int64_t o) const { return own + o * row_bytes; }
  MSA_DEV const char* stream_row(const Tile&, int64_t t) const { return streamed + t * row_bytes; }
};

template <typename T>
struct Fwd : Geometry<T> {
  static constexpr int kStates = 2;  // m, s
  static constexpr bool kPartnerDot = false;
  T* lse;

  struct Row {
    T st[kStates];
  };
  struct Col {};

  MSA_DEV void init_row(const Tile&, int, bool, T, Row& r) const {
    r.st[0] = -std::numeric_limits<T>::infinity(), r.st[1] = T(0);
  }
  MSA_DEV Col load_col(const Tile&, int64_t) const { return {}; }

  template <class C>
  MSA_DEV void accumulate(const Tile& tile, int o, T sq_o, const C& c, const T (&s)[Cfg<T>::TN], Row& r) const {
    constexpr int TN = Cfg<T>::TN;
    const int64_t i = tile.o_begin + o;
    T v[TN];
    bool in[TN];
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      in[j] = c.valid[j] && c.t[j] != i;  // j = i is not a pair
      v[j] = cm::uniform_logit(sq_o, c.sq[j], s[j], this->neg_kappa);
    }
    lse_add<T, TN>(r.st[0], r.st[1], v, in);
  }
  MSA_DEV void merge(T* a, const T* b) const { cm::lse_merge(a[0], a[1], b[0], b[1]); }
  MSA_DEV void finish(const Tile& tile, int o, const T* st) const {
    lse[tile.o_begin + o] = st[0] + static_cast<T>(::log(static_cast<double>(st[1])));
  }
};

template <typename T>
struct RowStats {
  T g, lse;
};

// W of one pair from the saved stats of its p row (sq_p = ‖p̂_i‖², sq_g = ‖ĝ_j‖²).
template <typename T>
MSA_DEV T pair_weight(const RowStats<T>& p, T sq_p, T sq_g, T s, T neg_kappa) {
  if (p.g == T(0)) return T(0);
  const T v = cm::uniform_logit(sq_p, sq_g, s, neg_kappa);
  return (neg_kappa * p.g) * cm::fast_exp(v - p.lse);
}

// Row pass: owners p (i), streamed g (j); coef = Σ_j W_ij.
template <typename T>
struct BwdRows : Geometry<T> {
  const T *g, *lse;
  using Row = RowStats<T>;
  struct Col {};

  MSA_DEV void init_row(const Tile& tile, int o, bool live, T, Row& r) const {
    if (live) r = {g[tile.o_begin + o], lse[tile.o_begin + o]};
    else r = {T(0), T(0)};
  }
  MSA_DEV Col load_col(const Tile&, int64_t) const { return {}; }
  MSA_DEV T grad(const Tile& tile, int o, T sq_o, const Row& r, int64_t t, const Col&, T s, T sq_t, T& coef) const {
    if (t == tile.o_begin + o) return T(0);
    const T w = pair_weight(r, sq_o, sq_t, s, this->neg_kappa);
    coef += w;
    return w;
  }
  MSA_DEV int64_t out_row(const Tile& tile, int o) const { return tile.o_begin + o; }
};

// Column pass: owners g (j), streamed p (i) with their stats; coef = Σ_i W_ij.
template <typename T>
struct BwdCols : Geometry<T> {
  const T *g, *lse;
  struct Row {};
  using Col = RowStats<T>;

  MSA_DEV void init_row(const Tile&, int, bool, T, Row&) const {}
  MSA_DEV Col load_col(const Tile&, int64_t t) const { return {g[t], lse[t]}; }
  MSA_DEV T grad(const Tile& tile, int o, T sq_o, const Row&, int64_t t, const Col& c, T s, T sq_t, T& coef) const {
    if (t == tile.o_begin + o) return T(0);
    const T w = pair_weight(c, sq_t, sq_o, s, this->neg_kappa);
    coef += w;
    return w;
  }
  MSA_DEV int64_t out_row(const Tile& tile, int o) const { return tile.o_begin + o; }
};

template <typename T>
void fill_geometry(Geometry<T>& geo, const at::Tensor& own, const at::Tensor& streamed, double kappa, bool normalize) {
  geo.own = bytes(own);
  geo.streamed = bytes(streamed);
  geo.N = own.size(0);
  geo.D = own.size(1);
  geo.row_bytes = own.size(1) * static_cast<int64_t>(own.element_size());
  geo.dt = dtype_of(own);
  geo.normalize = normalize;
  geo.neg_kappa = -T(kappa);
}

at::Tensor uniform_rows_cuda(const at::Tensor& p_in, const at::Tensor& g_in, double kappa, bool normalize) {
  cm::check_uniform(p_in, g_in, kappa);
  check_device(cm::kUniformOp, {{"p", &p_in}, {"g", &g_in}});
  const Stream stream(p_in);
  const at::Tensor p = p_in.contiguous(), g = g_in.contiguous();
  const int64_t n = p.size(0);
  at::Tensor lse = at::empty({n}, p.options().dtype(p.scalar_type() == at::kDouble ? at::kDouble : at::kFloat));
  with_compute_type(p, [&](auto tag) {
    using T = decltype(tag);
    Fwd<T> f{};
    fill_geometry<T>(f, p, g, kappa, normalize);
    f.lse = lse.data_ptr<T>();
    launch(&rows_forward_kernel<T, Fwd<T>>, forward_grid(ceil_div(n, Cfg<T>::BM)), stream, f);
  });
  return lse;
}

std::tuple<at::Tensor, at::Tensor> uniform_rows_backward_cuda(const at::Tensor& grad_rows, const at::Tensor& p_in,
                                                              const at::Tensor& g_in, const at::Tensor& lse_in,
                                                              double kappa, bool normalize) {
  cm::check_uniform(p_in, g_in, kappa);
  const int64_t n = p_in.size(0), D = p_in.size(1);
  cm::check_rows(cm::kUniformOp, {{"grad_rows", &grad_rows}, {"lse_rows", &lse_in}}, n, "n", p_in);
  check_device(cm::kUniformOp, {{"p", &p_in}, {"g", &g_in}, {"grad_rows", &grad_rows}});
  const Stream stream(p_in);
  const at::Tensor p = p_in.contiguous(), g = g_in.contiguous();
  at::Tensor dp, dg;
  with_compute_type(p, [&](auto tag) {
    using T = decltype(tag);
    const auto ct = c10::CppTypeToScalarType<T>::value;
    const at::Tensor gr = grad_rows.to(ct).contiguous(), lse = lse_in.to(ct).contiguous();
    const auto opts = p.options().dtype(ct);
    const int64_t tiles = ceil_div(n, Cfg<T>::BM);
    at::Tensor du_p = at::empty({n, D}, opts), du_g = at::empty({n, D}, opts), row_sum = at::empty({n}, opts),
               col_sum = at::empty({n}, opts);
    BwdRows<T> rows{};
    fill_geometry<T>(rows, p, g, kappa, normalize);
    rows.g = gr.const_data_ptr<T>();
    rows.lse = lse.const_data_ptr<T>();
    launch(&rows_grad_kernel<T, BwdRows<T>>, grad_grid(tiles, D), stream, rows, du_p.data_ptr<T>(),
           row_sum.data_ptr<T>());
    BwdCols<T> cols{};
    fill_geometry<T>(cols, g, p, kappa, normalize);
    cols.g = gr.const_data_ptr<T>();
    cols.lse = lse.const_data_ptr<T>();
    launch(&rows_grad_kernel<T, BwdCols<T>>, grad_grid(tiles, D), stream, cols, du_g.data_ptr<T>(),
           col_sum.data_ptr<T>());
    dp = finalize<T>(stream, p, normalize, &du_p, nullptr, T(-2), &row_sum, T(2));
    dg = finalize<T>(stream, g, normalize, &du_g, nullptr, T(-2), &col_sum, T(2));
  });
  return {dp, dg};
}

}  // namespace
}  // namespace uniform_cuda

#if !defined(MSA_CUDA_EMULATION)
TORCH_LIBRARY_IMPL(msa_fast, CUDA, m) {
  m.impl("uniform_rows", &uniform_cuda::uniform_rows_cuda);
  m.impl("uniform_rows_backward", &uniform_cuda::uniform_rows_backward_cuda);
}
#endif

}  // namespace msa_fast
