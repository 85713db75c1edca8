// CUDA kernels of info_nce_rows / info_nce_rows_backward (ops.md §3) on the tile engine of
// pairwise_tiles.cuh; same outputs as csrc/cpu/info_nce.cpp: (loss_i = lse_i − a_ii, lse_i), fp32 (fp64 for
// fp64 inputs), with a_ij = q̂_i·k̂_j/τ, b_ij = q̂_i·q̂_j/τ and
//   'keys':    lse_i = LSE_j a_ij;     'queries': lse_i = LSE({a_ii} ∪ {b_ij : j ≠ i}).
// Forward, one launch: a block owns BM queries and streams k̂ ('keys') or q̂ ('queries', whose diagonal is
// replaced by the positive a_ii = q̂_i·k̂_i, a row-wise dot taken in the block's prologue); online LSE per row.
// Backward by recomputation (G_ij = g_i π_ij off the diagonal, π the row softmax; the diagonal's
// g_i (π_ii − 1) is formed as −Σ_{j≠i} G_ij, as on the CPU):
//   'keys':    a row pass (owners q, streamed k̂) gives Σ_j G_ij k̂_j and others_i = Σ_{j≠i} G_ij, then a
//              column pass (owners k, streamed q̂) Σ_i G_ij q̂_i;  dq̂ = (Σ_j G_ij k̂_j − others_i k̂_i)/τ,
//              dk̂ = (Σ_i G_ij q̂_i − others_j q̂_j)/τ.
//   'queries': one symmetric pass over q̂ (b is symmetric) gives Σ_j (G_ij + G_ji) q̂_j and others_i;
//              dq̂ = (Σ_j (G_ij + G_ji) q̂_j − others_i k̂_i)/τ,  dk̂ = −others_i q̂_i/τ.
// then back through n(·). When q and k are one tensor the op still returns (dq, dk); autograd adds them.
#include "cuda/pairwise_host.cuh"

#include <torch/library.h>

#include <cmath>
#include <tuple>

#include "common/contrastive_args.h"

namespace msa_fast {
namespace info_nce_cuda {
namespace {

using namespace tiles;
namespace cm = contrastive;

template <typename T>
struct Geometry {
  const char *own, *streamed;  // owner rows and streamed rows ([N, D] each)
  int64_t N, D, row_bytes;
  int dt;
  bool normalize;
  T inv_tau;

  MSA_DEV Tile tile(unsigned b) const {
    const int64_t o0 = static_cast<int64_t>(b) * Cfg<T>::BM;
    return {o0, static_cast<int>(min64(Cfg<T>::BM, N - o0)), 0, N, 0};
  }
  MSA_DEV const char* owner_row(const Tile&, int64_t o) const { return own + o * row_bytes; }
  MSA_DEV const char* stream_row(const Tile&, int64_t t) const { return streamed + t * row_bytes; }
};

// Forward: owners q, streamed k ('keys') or q ('queries'); partner k (the positive of 'queries').
template <typename T>
struct Fwd : Geometry<T> {
  static constexpr int kStates = 3;  // m, s (LSE of the row), the diagonal logit
  static constexpr bool kPartnerDot = true;
  const char* partner;
  bool queries;
  T *loss, *lse;

  struct Row {
    T st[kStates];
    T pos_logit;  // a_ii ('queries')
  };
  struct Col {};

  MSA_DEV bool use_partner_dot() const { return queries; }
  MSA_DEV const char* partner_row(const Tile&, int64_t o) const { return partner + o * this->row_bytes; }
  MSA_DEV void init_row(const Tile&, int, bool, T pd, Row& r) const {
    r.st[0] = -std::numeric_limits<T>::infinity(), r.st[1] = T(0), r.st[2] = T(0);
    r.pos_logit = pd * this->inv_tau;
  }
  MSA_DEV Col load_col(const Tile&, int64_t) const { return {}; }

  template <class C>
  MSA_DEV void accumulate(const Tile& tile, int o, T, const C& c, const T (&s)[Cfg<T>::TN], Row& r) const {
    constexpr int TN = Cfg<T>::TN;
    const int64_t i = tile.o_begin + o;
    T v[TN];
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      v[j] = s[j] * this->inv_tau;
      if (c.valid[j] && c.t[j] == i) {
        if (queries) v[j] = r.pos_logit;  // b_ii is not a term: the positive a_ii takes its place
        r.st[2] = v[j];
      }
    }
    lse_add<T, TN>(r.st[0], r.st[1], v, c.valid);
  }
  MSA_DEV void merge(T* a, const T* b) const {
    cm::lse_merge(a[0], a[1], b[0], b[1]);
    a[2] += b[2];  // one thread saw the diagonal, the others hold 0
  }
  MSA_DEV void finish(const Tile& tile, int o, const T* st) const {
    const int64_t i = tile.o_begin + o;
    // log in double, as the CPU kernel.
    const T l = st[0] + static_cast<T>(::log(static_cast<double>(st[1])));
    lse[i] = l;
    loss[i] = l - st[2];
  }
};

// The saved statistics of a query row: upstream weight and LSE.
template <typename T>
struct QStats {
  T g, lse;
};

template <typename T>
MSA_DEV T weight(const QStats<T>& q, T logit) {
  return q.g == T(0) ? T(0) : cm::softmax_weight(q.g, logit, q.lse);  // no upstream weight: the row is 0
}

// Backward, 'keys' rows (owners q, streamed k̂) and 'queries' (owners q, streamed q̂, symmetric): dS and
// the per-row others_i = Σ_{j≠i} G_ij in coef.
template <typename T>
struct BwdRows : Geometry<T> {
  const T *g, *lse;
  bool symmetric;  // 'queries': G_ij + G_ji
  using Row = QStats<T>;
  using Col = QStats<T>;

  MSA_DEV void init_row(const Tile& tile, int o, bool live, T, Row& r) const {
    if (live) r = {g[tile.o_begin + o], lse[tile.o_begin + o]};
    else r = {T(0), T(0)};
  }
  MSA_DEV Col load_col(const Tile&, int64_t t) const {
    if (symmetric) return {g[t], lse[t]};
    return {T(0), T(0)};
  }
  MSA_DEV T grad(const Tile& tile, int o, T, const Row& r, int64_t t, const Col& c, T s, T, T& coef) const {
    if (t == tile.o_begin + o) return T(0);  // the diagonal is added in finalize
    const T logit = s * this->inv_tau;
    const T wij = weight(r, logit);
    coef += wij;
    return symmetric ? wij + weight(c, logit) : wij;
  }
  MSA_DEV int64_t out_row(const Tile& tile, int o) const { return tile.o_begin + o; }
};

// Backward, 'keys' columns: owners k (index j), streamed q̂ (index i): Σ_{i≠j} G_ij q̂_i with the rows' stats.
template <typename T>
struct BwdCols : Geometry<T> {
  const T *g, *lse;
  struct Row {};
  using Col = QStats<T>;

  MSA_DEV void init_row(const Tile&, int, bool, T, Row&) const {}
  MSA_DEV Col load_col(const Tile&, int64_t t) const { return {g[t], lse[t]}; }
  MSA_DEV T grad(const Tile& tile, int o, T, const Row&, int64_t t, const Col& c, T s, T, T&) const {
    if (t == tile.o_begin + o) return T(0);
    return weight(c, s * this->inv_tau);
  }
  MSA_DEV int64_t out_row(const Tile& tile, int o) const { return tile.o_begin + o; }
};

template <typename T>
void fill_geometry(Geometry<T>& geo, const at::Tensor& own, const at::Tensor& streamed, double temperature,
                   bool normalize) {
  geo.own = bytes(own);
  geo.streamed = bytes(streamed);
  geo.N = own.size(0);
  geo.D = own.size(1);
  geo.row_bytes = own.size(1) * static_cast<int64_t>(own.element_size());
  geo.dt = dtype_of(own);
  geo.normalize = normalize;
  geo.inv_tau = T(1) / T(temperature);
}

std::tuple<at::Tensor, at::Tensor> info_nce_rows_cuda(const at::Tensor& q_in, const at::Tensor& k_in,
                                                      double temperature, bool negatives_queries, bool normalize) {
  cm::check_info_nce(q_in, k_in, temperature);
  check_device(cm::kInfoNceOp, {{"q", &q_in}, {"k", &k_in}});
  const Stream stream(q_in);
  const at::Tensor q = q_in.contiguous(), k = k_in.contiguous();
  const int64_t N = q.size(0);
  const auto opts = q.options().dtype(q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  at::Tensor loss = at::empty({N}, opts), lse = at::empty({N}, opts);
  with_compute_type(q, [&](auto tag) {
    using T = decltype(tag);
    Fwd<T> f{};
    fill_geometry<T>(f, q, negatives_queries ? q : k, temperature, normalize);
    f.partner = bytes(k);
    f.queries = negatives_queries;
    f.loss = loss.data_ptr<T>();
    f.lse = lse.data_ptr<T>();
    launch(&rows_forward_kernel<T, Fwd<T>>, forward_grid(ceil_div(N, Cfg<T>::BM)), stream, f);
  });
  return {loss, lse};
}

std::tuple<at::Tensor, at::Tensor> info_nce_rows_backward_cuda(const at::Tensor& grad_rows, const at::Tensor& q_in,
                                                               const at::Tensor& k_in, const at::Tensor& lse_in,
                                                               double temperature, bool negatives_queries,
                                                               bool normalize) {
  cm::check_info_nce(q_in, k_in, temperature);
  const int64_t N = q_in.size(0), D = q_in.size(1);
  cm::check_rows(cm::kInfoNceOp, {{"grad_rows", &grad_rows}, {"lse", &lse_in}}, N, "N", q_in);
  check_device(cm::kInfoNceOp, {{"q", &q_in}, {"k", &k_in}, {"grad_rows", &grad_rows}});
  const Stream stream(q_in);
  const at::Tensor q = q_in.contiguous(), k = k_in.contiguous();
  at::Tensor dq, dk;
  with_compute_type(q, [&](auto tag) {
    using T = decltype(tag);
    const auto ct = c10::CppTypeToScalarType<T>::value;
    const at::Tensor g = grad_rows.to(ct).contiguous(), lse = lse_in.to(ct).contiguous();
    const auto opts = q.options().dtype(ct);
    const T inv_tau = T(1) / T(temperature);
    const int64_t tiles = ceil_div(N, Cfg<T>::BM);
    at::Tensor du_q = at::empty({N, D}, opts), others = at::empty({N}, opts);
    BwdRows<T> rows{};
    fill_geometry<T>(rows, q, negatives_queries ? q : k, temperature, normalize);
    rows.g = g.const_data_ptr<T>();
    rows.lse = lse.const_data_ptr<T>();
    rows.symmetric = negatives_queries;
    launch(&rows_grad_kernel<T, BwdRows<T>>, grad_grid(tiles, D), stream, rows, du_q.data_ptr<T>(),
           others.data_ptr<T>());
    // dq̂ = (Σ G k̂ or Σ (G + Gᵀ) q̂ − others ⊙ k̂)/τ: the diagonal G_ii = −others_i on the positive a_ii.
    dq = finalize<T>(stream, q, normalize, &du_q, nullptr, inv_tau, nullptr, T(0), &k, &others, -inv_tau);
    if (negatives_queries) {
      dk = finalize<T>(stream, k, normalize, nullptr, nullptr, T(0), nullptr, T(0), &q, &others, -inv_tau);
    } else {
      at::Tensor du_k = at::empty({N, D}, opts);
      BwdCols<T> cols{};
      fill_geometry<T>(cols, k, q, temperature, normalize);
      cols.g = g.const_data_ptr<T>();
      cols.lse = lse.const_data_ptr<T>();
      launch(&rows_grad_kernel<T, BwdCols<T>>, grad_grid(tiles, D), stream, cols, du_k.data_ptr<T>(),
             static_cast<T*>(nullptr));
      dk = finalize<T>(stream, k, normalize, &du_k, nullptr, inv_tau, nullptr, T(0), &q, &others, -inv_tau);
    }
  });
  return {dq, dk};
}

}  // namespace
}  // namespace info_nce_cuda

#if !defined(MSA_CUDA_EMULATION)
TORCH_LIBRARY_IMPL(msa_fast, CUDA, m) {
  m.impl("info_nce_rows", &info_nce_cuda::info_nce_rows_cuda);
  m.impl("info_nce_rows_backward", &info_nce_cuda::info_nce_rows_backward_cuda);
}
#endif

}  // namespace msa_fast
