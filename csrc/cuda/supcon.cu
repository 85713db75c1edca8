// CUDA kernels of supcon_rows / supcon_rows_backward (ops.md §2) on the tile engine of
// pairwise_tiles.cuh; same outputs as csrc/cpu/supcon.cpp (per-row loss, LSE over A(i), positive statistic,
// positive count; fp32, fp64 for fp64 z) and the same per-pair math (common/contrastive.h).
//
// Forward, one launch: a block owns BM anchors and streams every row of z; per anchor and thread an
// online LSE over A(i) = {j ≠ i} (and over P(i) for 'in'), Σ_P s and |P(i)|, merged across the block.
// Backward by recomputation, one pass: s is symmetric, so the block owning rows i forms
// G_ij + G_ji = g_i (p_ij − t_ij) + g_j (p_ji − t_ji) from both rows' saved statistics and accumulates
// dU_i = Σ_j (G_ij + G_ji) u_j; then dz = (dU/τ) back through n(·).
//
// Loss interface used by the engine (the other contrastive .cu files follow it):
//   forward: kStates, kPartnerDot (with use_partner_dot(), partner_row(tile, o)); Row with st[kStates]; Col;
//   tile(b) → Tile; owner_row(tile, o) / stream_row(tile, t) → row pointers; D, dt, normalize;
//   init_row(tile, o_local, live, partner_dot, row); load_col(tile, t);
//   forward: accumulate(tile, o_local, ‖n(x_o)‖², cols, s[TN], row), merge(st, other), finish(tile, o_local, st);
//   backward: Row, Col; grad(tile, o_local, ‖n(x_o)‖², row, t, col, s, ‖n(x_t)‖², coef) → dS, out_row(tile, o_local).
#include "cuda/pairwise_host.cuh"

#include <torch/library.h>

#include <tuple>

#include "common/contrastive_args.h"

namespace msa_fast {
namespace supcon_cuda {
namespace {

using namespace tiles;
namespace cm = contrastive;

// Owners and streamed rows are both the rows of z.
template <typename T>
struct Geometry {
  const char* z;
  int64_t N, D, row_bytes;
  int dt;
  bool normalize;
  const int64_t* labels;
  T inv_tau;
  bool variant_in;

  MSA_DEV Tile tile(unsigned b) const {
    const int64_t o0 = static_cast<int64_t>(b) * Cfg<T>::BM;
    return {o0, static_cast<int>(min64(Cfg<T>::BM, N - o0)), 0, N, 0};
  }
  MSA_DEV const char* owner_row(const Tile&, int64_t o) const { return z + o * row_bytes; }
  MSA_DEV const char* stream_row(const Tile&, int64_t t) const { return z + t * row_bytes; }
};

template <typename T>
struct Fwd : Geometry<T> {
  static constexpr int kStates = 6;  // m_all, s_all (LSE over A), Σ_P s, |P|, m_pos, s_pos (LSE over P, 'in')
  static constexpr bool kPartnerDot = false;
  T *loss, *lse_all, *pos_stat, *n_pos;

  struct Row {
    T st[kStates];
    int64_t label;
  };
  struct Col {
    int64_t label;
  };

  MSA_DEV void init_row(const Tile& tile, int o, bool live, T, Row& r) const {
    const T ninf = -std::numeric_limits<T>::infinity();
    r.st[0] = ninf, r.st[1] = T(0), r.st[2] = T(0), r.st[3] = T(0), r.st[4] = ninf, r.st[5] = T(0);
    r.label = live ? this->labels[tile.o_begin + o] : 0;
  }
  MSA_DEV Col load_col(const Tile&, int64_t t) const { return {this->labels[t]}; }

  template <class C>
  MSA_DEV void accumulate(const Tile& tile, int o, T, const C& c, const T (&s)[Cfg<T>::TN], Row& r) const {
    constexpr int TN = Cfg<T>::TN;
    const int64_t i = tile.o_begin + o;
    T v[TN];
    bool all[TN], pos[TN];
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      all[j] = c.valid[j] && c.t[j] != i;  // A(i): every other row
      pos[j] = all[j] && cm::same_label(c.meta[j].label, r.label);
      v[j] = s[j] * this->inv_tau;
      r.st[2] += pos[j] ? s[j] : T(0);
      r.st[3] += pos[j] ? T(1) : T(0);
    }
    lse_add<T, TN>(r.st[0], r.st[1], v, all);
    if (this->variant_in) lse_add<T, TN>(r.st[4], r.st[5], v, pos);
  }
  MSA_DEV void merge(T* a, const T* b) const {
    cm::lse_merge(a[0], a[1], b[0], b[1]);
    a[2] += b[2];
    a[3] += b[3];
    cm::lse_merge(a[4], a[5], b[4], b[5]);
  }
  MSA_DEV void finish(const Tile& tile, int o, const T* st) const {
    const int64_t i = tile.o_begin + o;
    const T lse = st[0] + cm::exact_log(st[1]);
    const T stat = this->variant_in ? st[4] + cm::exact_log(st[5]) : st[2] * this->inv_tau;
    loss[i] = cm::supcon_row_loss(lse, stat, st[3], this->variant_in);
    lse_all[i] = lse;
    pos_stat[i] = stat;
    n_pos[i] = st[3];
  }
};

template <typename T>
struct Bwd : Geometry<T> {
  const T *g, *lse, *stat, *cnt;

  // The saved statistics of one row: its own G_i· coefficients, also read for the columns (G_ji).
  struct Stats {
    int64_t label;
    T g, lse, stat, inv_n;
    bool active;
  };
  using Row = Stats;
  using Col = Stats;

  MSA_DEV Stats stats(int64_t i) const {
    const T c = cnt[i];
    return {this->labels[i], g[i], lse[i], stat[i], T(1) / c, cm::supcon_row_active(g[i], c)};
  }
  MSA_DEV void init_row(const Tile& tile, int o, bool live, T, Row& r) const {
    if (live) r = stats(tile.o_begin + o);
    else r = Stats{0, T(0), T(0), T(0), T(0), false};
  }
  MSA_DEV Col load_col(const Tile&, int64_t t) const { return stats(t); }

  MSA_DEV T pair(const Stats& a, bool pos, T logit) const {
    if (!a.active) return T(0);  // ℓ is constant 0 for this row, or it has no upstream weight
    return this->variant_in ? cm::supcon_pair_grad<T, true>(logit, pos, a.g, a.lse, a.stat, a.inv_n)
                            : cm::supcon_pair_grad<T, false>(logit, pos, a.g, a.lse, a.stat, a.inv_n);
  }
  MSA_DEV T grad(const Tile& tile, int o, T, const Row& r, int64_t t, const Col& c, T s, T, T&) const {
    if (t == tile.o_begin + o) return T(0);  // self is in no set
    const bool pos = cm::same_label(c.label, r.label);
    const T logit = s * this->inv_tau;
    return pair(r, pos, logit) + pair(c, pos, logit);
  }
  MSA_DEV int64_t out_row(const Tile& tile, int o) const { return tile.o_begin + o; }
};

template <typename T>
void fill_geometry(Geometry<T>& geo, const at::Tensor& z, const at::Tensor& labels, double temperature,
                   bool variant_in, bool normalize) {
  geo.z = bytes(z);
  geo.N = z.size(0);
  geo.D = z.size(1);
  geo.row_bytes = z.size(1) * static_cast<int64_t>(z.element_size());
  geo.dt = dtype_of(z);
  geo.normalize = normalize;
  geo.labels = labels.const_data_ptr<int64_t>();
  geo.inv_tau = T(1) / T(temperature);
  geo.variant_in = variant_in;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> supcon_rows_cuda(const at::Tensor& z_in,
                                                                            const at::Tensor& labels_in,
                                                                            double temperature, bool variant_in,
                                                                            bool normalize) {
  cm::check_supcon(z_in, labels_in, temperature);
  check_device(cm::kSupconOp, {{"z", &z_in}, {"labels", &labels_in}});
  const Stream stream(z_in);
  const at::Tensor z = z_in.contiguous(), labels = labels_in.contiguous();
  const int64_t N = z.size(0);
  const auto opts = z.options().dtype(z.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  at::Tensor loss = at::empty({N}, opts), lse_all = at::empty({N}, opts), pos_stat = at::empty({N}, opts),
             n_pos = at::empty({N}, opts);
  with_compute_type(z, [&](auto tag) {
    using T = decltype(tag);
    Fwd<T> f{};
    fill_geometry<T>(f, z, labels, temperature, variant_in, normalize);
    f.loss = loss.data_ptr<T>();
    f.lse_all = lse_all.data_ptr<T>();
    f.pos_stat = pos_stat.data_ptr<T>();
    f.n_pos = n_pos.data_ptr<T>();
    launch(&rows_forward_kernel<T, Fwd<T>>, forward_grid(ceil_div(N, Cfg<T>::BM)), stream, f);
  });
  return {loss, lse_all, pos_stat, n_pos};
}

at::Tensor supcon_rows_backward_cuda(const at::Tensor& grad_rows, const at::Tensor& z_in, const at::Tensor& labels_in,
                                     const at::Tensor& lse_all, const at::Tensor& pos_stat, const at::Tensor& n_pos,
                                     double temperature, bool variant_in, bool normalize) {
  cm::check_supcon(z_in, labels_in, temperature);
  const int64_t N = z_in.size(0), D = z_in.size(1);
  cm::check_rows(cm::kSupconOp,
                 {{"grad_rows", &grad_rows}, {"lse_all", &lse_all}, {"pos_stat", &pos_stat}, {"n_pos", &n_pos}}, N,
                 "N", z_in);
  check_device(cm::kSupconOp, {{"z", &z_in}, {"labels", &labels_in}, {"grad_rows", &grad_rows}});
  const Stream stream(z_in);
  const at::Tensor z = z_in.contiguous(), labels = labels_in.contiguous();
  at::Tensor dz;
  with_compute_type(z, [&](auto tag) {
    using T = decltype(tag);
    const auto ct = c10::CppTypeToScalarType<T>::value;
    // Statistics in the compute dtype (fp64 stays fp64 for gradcheck), as the CPU kernel.
    const at::Tensor g = grad_rows.to(ct).contiguous(), lse = lse_all.to(ct).contiguous(),
                     ps = pos_stat.to(ct).contiguous(), cnt = n_pos.to(ct).contiguous();
    at::Tensor du = at::empty({N, D}, z.options().dtype(ct));
    Bwd<T> b{};
    fill_geometry<T>(b, z, labels, temperature, variant_in, normalize);
    b.g = g.const_data_ptr<T>();
    b.lse = lse.const_data_ptr<T>();
    b.stat = ps.const_data_ptr<T>();
    b.cnt = cnt.const_data_ptr<T>();
    launch(&rows_grad_kernel<T, Bwd<T>>, grad_grid(ceil_div(N, Cfg<T>::BM), D), stream, b, du.data_ptr<T>(),
           static_cast<T*>(nullptr));
    dz = finalize<T>(stream, z, normalize, &du, nullptr, T(1) / T(temperature));
  });
  return dz;
}

}  // namespace
}  // namespace supcon_cuda

#if !defined(MSA_CUDA_EMULATION)
TORCH_LIBRARY_IMPL(msa_fast, CUDA, m) {
  m.impl("supcon_rows", &supcon_cuda::supcon_rows_cuda);
  m.impl("supcon_rows_backward", &supcon_cuda::supcon_rows_backward_cuda);
}
#endif

}  // namespace msa_fast
