// CUDA kernels of mgcl_rows / mgcl_rows_backward (ops.md §5) on the tile engine of pairwise_tiles.cuh;
// same outputs as csrc/cpu/mgcl.cpp: per macro row (v, i) (row v·B + i of macro = (T, V, A) stacked)
// LSE over the positives and over positives ∪ negatives of λ = W·s/τ, fp32 [3B] (fp64 for fp64 features).
// Pair sets from the view ids, status and weight from fp32 label distances, all in-kernel with the helpers
// of common/contrastive.h (the same ones the CPU kernel calls). Row (v, i) against column (c, j):
//   macro c, j ≠ i      → C1 (c = v) / C2 cross-sample (c ≠ v): positive iff E_ij ≤ δ, weight W±(E_ij);
//   macro c ≠ v, j = i  → C2 same-sample, positive, W⁺(0), iff v < c ('literal3') or always ('ordered6');
//   micro of view v     → C3: j = i positive W⁺(0); j ≠ i only negatives, W⁻(E_ij);
// everything else is excluded (never a weight-0 pair: a weight of 0 inside the sets still counts exp(0)).
// ỹ = float32(y)/float32(label_scale) is read in y's own dtype inside the kernel, so the forward is one launch.
//
// Forward: blocks own BM macro rows of one view and stream that view's 4B columns [macro (3B); micro_v (B)].
// Backward by recomputation, deterministic, no atomics:
//   row pass    (owners: macro rows of view v, streamed: its 4B columns) → Σ_c dS_rc u_c into du_rows;
//   column pass (owners: the 3B macro columns, streamed: all 3B macro rows; and the micro columns of
//                view v, streamed: the B macro rows of view v) → Σ_r dS_rc u_r into du_cols [6B, d];
//   d macro = n-backward(du_rows + du_cols[:3B]), d micro = n-backward(du_cols[3B:]).
#include "cuda/pairwise_host.cuh"

#include <torch/library.h>

#include <cmath>
#include <string>
#include <tuple>

#include "common/contrastive_args.h"

namespace msa_fast {
namespace mgcl_cuda {
namespace {

using namespace tiles;
namespace cm = contrastive;

// Label dtypes read in-kernel (others are converted to fp32 on the host first).
enum LabelType : int { kLF32, kLF64, kLF16, kLBF16, kLI64, kLI32, kLI16, kLI8, kLU8, kLBool };

MSA_DEV float label_as_float(const void* y, int64_t i, int lt) {
  switch (lt) {
    case kLF32: return static_cast<const float*>(y)[i];
    case kLF64: return static_cast<float>(static_cast<const double*>(y)[i]);
    case kLF16: return static_cast<float>(static_cast<const c10::Half*>(y)[i]);
    case kLBF16: return static_cast<float>(static_cast<const c10::BFloat16*>(y)[i]);
    case kLI64: return static_cast<float>(static_cast<const int64_t*>(y)[i]);
    case kLI32: return static_cast<float>(static_cast<const int32_t*>(y)[i]);
    case kLI16: return static_cast<float>(static_cast<const int16_t*>(y)[i]);
    case kLI8: return static_cast<float>(static_cast<const int8_t*>(y)[i]);
    case kLU8: return static_cast<float>(static_cast<const uint8_t*>(y)[i]);
    default: return static_cast<const bool*>(y)[i] ? 1.0f : 0.0f;
  }
}

template <typename T>
struct Params {
  const char *macro, *micro;
  int64_t B, D, row_bytes;
  int dt;
  bool normalize;
  const void* y;
  int label_type;
  float label_scale, delta, gain, gain08;
  int pos_kind, neg_kind, arg_kind;  // arg_kind: the tanh-argument rule (kMgcl for 'none')
  bool need_tanh, ordered6;
  T inv_tau;

  MSA_DEV float label(int64_t i) const { return label_as_float(y, i, label_type) / label_scale; }

  // Pair (row (rv, ri), column (ck, cj)) with ck < 3 a macro view and ck = 3 the micro of view rv: whether it
  // is in the pair sets, its status and weight.
  MSA_DEV bool pair(int rv, int64_t ri, float yr, int ck, int64_t cj, float yc, bool& pos, float& w) const {
    float E = 0.0f;
    if (cj == ri) {  // same sample: E = 0, positive, whatever the label
      if (ck < 3 && (ck == rv || !(ordered6 || rv < ck))) return false;
      pos = true;
    } else {
      E = ::fabsf(yr - yc);
      pos = cm::mgcl_positive(E, delta);
      if (ck == 3 && pos) return false;  // micro features of positive other samples are not used
    }
    const float t = need_tanh ? ::tanhf(cm::mgcl_tanh_arg(E, pos, delta, arg_kind)) : 0.0f;
    w = cm::mgcl_weight(t, pos, pos_kind, neg_kind, gain, gain08);
    return true;
  }
};

// A column of a row pass: kind 0..2 = macro view, 3 = micro (of the row's view).
struct ColId {
  int kind;
  int64_t j;
  float y;
};

// Forward: blocks of BM macro rows of view v = tile.view; streamed index t ∈ [0, 4B).
template <typename T>
struct RowGeometry : Params<T> {
  MSA_DEV Tile tile(unsigned b) const {
    const int64_t per_view = ceil_div_dev(this->B, Cfg<T>::BM);
    const int v = static_cast<int>(b / per_view);
    const int64_t i0 = static_cast<int64_t>(b % per_view) * Cfg<T>::BM;
    return {v * this->B + i0, static_cast<int>(min64(Cfg<T>::BM, this->B - i0)), 0, 4 * this->B, v};
  }
  static MSA_DEV int64_t ceil_div_dev(int64_t a, int64_t b) { return (a + b - 1) / b; }
  MSA_DEV const char* owner_row(const Tile&, int64_t o) const { return this->macro + o * this->row_bytes; }
  MSA_DEV const char* stream_row(const Tile& tile, int64_t t) const {
    const int64_t B3 = 3 * this->B;
    return t < B3 ? this->macro + t * this->row_bytes
                  : this->micro + (tile.view * this->B + (t - B3)) * this->row_bytes;
  }
  MSA_DEV ColId load_col(const Tile&, int64_t t) const {
    const int64_t B = this->B, B3 = 3 * B;
    const int kind = t < B3 ? static_cast<int>(t / B) : 3;
    const int64_t j = t < B3 ? t - kind * B : t - B3;
    return {kind, j, this->label(j)};
  }
};

template <typename T>
struct Fwd : RowGeometry<T> {
  static constexpr int kStates = 4;  // LSE over the positives (m, s) and over the negatives (m, s)
  static constexpr bool kPartnerDot = false;
  T *lse_pos, *lse_all;

  struct Row {
    T st[kStates];
    int64_t i;
    float y;
  };
  using Col = ColId;

  MSA_DEV void init_row(const Tile& tile, int o, bool live, T, Row& r) const {
    const T ninf = -std::numeric_limits<T>::infinity();
    r.st[0] = ninf, r.st[1] = T(0), r.st[2] = ninf, r.st[3] = T(0);
    r.i = tile.o_begin + o - tile.view * this->B;
    r.y = live ? this->label(r.i) : 0.0f;
  }

  template <class C>
  MSA_DEV void accumulate(const Tile& tile, int, T, const C& c, const T (&s)[Cfg<T>::TN], Row& r) const {
    constexpr int TN = Cfg<T>::TN;
    T lam[TN];
    bool in_pos[TN], in_neg[TN];
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      bool pos = false;
      float w = 0.0f;
      const bool in = c.valid[j] && this->pair(tile.view, r.i, r.y, c.meta[j].kind, c.meta[j].j, c.meta[j].y, pos, w);
      lam[j] = T(w) * s[j] * this->inv_tau;
      in_pos[j] = in && pos;
      in_neg[j] = in && !pos;
    }
    lse_add<T, TN>(r.st[0], r.st[1], lam, in_pos);
    lse_add<T, TN>(r.st[2], r.st[3], lam, in_neg);
  }
  MSA_DEV void merge(T* a, const T* b) const {
    cm::lse_merge(a[0], a[1], b[0], b[1]);
    cm::lse_merge(a[2], a[3], b[2], b[3]);
  }
  MSA_DEV void finish(const Tile& tile, int o, const T* st) const {
    const int64_t row = tile.o_begin + o;
    lse_pos[row] = st[0] + cm::exact_log(st[1]);
    T m = st[2], s = st[3];
    cm::lse_merge(m, s, st[0], st[1]);
    lse_all[row] = m + cm::exact_log(s);
  }
};

// The saved statistics of a macro row and its backward coefficients.
template <typename T>
struct RowStats {
  int v;
  int64_t i;
  float y;
  T lse_pos, lse_all, a_pos, g_all;
};

template <typename T>
struct Stats {
  const T *g_pos, *g_all, *lse_pos, *lse_all;  // [3B], compute dtype
};

template <typename T>
MSA_DEV RowStats<T> row_stats(const Params<T>& p, const Stats<T>& st, int64_t row) {
  const int64_t v = row / p.B;
  const int64_t i = row - v * p.B;
  const T lp = st.lse_pos[row], la = st.lse_all[row], ga = st.g_all[row];
  return {static_cast<int>(v), i, p.label(i), lp, la, cm::mgcl_pos_coef(st.g_pos[row], ga, lp, la), ga};
}

template <typename T>
MSA_DEV T pair_grad(const Params<T>& p, const RowStats<T>& r, int ck, int64_t cj, float yc, T s) {
  bool pos = false;
  float w = 0.0f;
  if (!p.pair(r.v, r.i, r.y, ck, cj, yc, pos, w)) return T(0);
  const T wt = T(w);
  const T lam = wt * s * p.inv_tau;  // exactly the forward's λ
  return cm::mgcl_pair_grad(lam, pos, wt, p.inv_tau, r.lse_pos, r.lse_all, r.a_pos, r.g_all);
}

// Row pass: owners = macro rows of one view, streamed = its 4B columns; du row = the macro row index.
template <typename T>
struct BwdRows : RowGeometry<T> {
  Stats<T> st;
  using Row = RowStats<T>;
  using Col = ColId;

  MSA_DEV void init_row(const Tile& tile, int o, bool live, T, Row& r) const {
    if (live) r = row_stats(*this, st, tile.o_begin + o);
    else r = Row{0, -1, 0.0f, T(0), T(0), T(0), T(0)};
  }
  MSA_DEV T grad(const Tile&, int, T, const Row& r, int64_t, const Col& c, T s, T, T&) const {
    return pair_grad(*this, r, c.kind, c.j, c.y, s);
  }
  MSA_DEV int64_t out_row(const Tile& tile, int o) const { return tile.o_begin + o; }
};

// Column pass: tiles over the 3B macro columns (tile.view = −1, streamed: all 3B macro rows), then over the
// micro columns of each view v (tile.view = v, streamed: the B macro rows of view v). du row: the macro
// column index, or 3B + the micro row index.
template <typename T>
struct BwdCols : Params<T> {
  Stats<T> st;
  struct Row {
    int kind;  // column's macro view 0..2, or 3 = micro
    int64_t j;
    float y;
  };
  using Col = RowStats<T>;

  MSA_DEV int64_t macro_tiles() const { return (3 * this->B + Cfg<T>::BM - 1) / Cfg<T>::BM; }
  MSA_DEV Tile tile(unsigned b) const {
    const int64_t B = this->B, nm = macro_tiles();
    if (static_cast<int64_t>(b) < nm) {
      const int64_t o0 = static_cast<int64_t>(b) * Cfg<T>::BM;
      return {o0, static_cast<int>(min64(Cfg<T>::BM, 3 * B - o0)), 0, 3 * B, -1};
    }
    const int64_t per_view = (B + Cfg<T>::BM - 1) / Cfg<T>::BM, q = static_cast<int64_t>(b) - nm;
    const int v = static_cast<int>(q / per_view);
    const int64_t j0 = (q % per_view) * Cfg<T>::BM;
    return {v * B + j0, static_cast<int>(min64(Cfg<T>::BM, B - j0)), v * B, (v + 1) * B, v};
  }
  MSA_DEV const char* owner_row(const Tile& tile, int64_t o) const {
    return (tile.view < 0 ? this->macro : this->micro) + o * this->row_bytes;
  }
  MSA_DEV const char* stream_row(const Tile&, int64_t t) const { return this->macro + t * this->row_bytes; }
  MSA_DEV void init_row(const Tile& tile, int o, bool live, T, Row& r) const {
    const int64_t c = tile.o_begin + o, cv = c / this->B, j = c - cv * this->B;
    r = {tile.view < 0 ? static_cast<int>(cv) : 3, j, live ? this->label(j) : 0.0f};
  }
  MSA_DEV Col load_col(const Tile&, int64_t t) const { return row_stats(*this, st, t); }
  MSA_DEV T grad(const Tile&, int, T, const Row& r, int64_t, const Col& c, T s, T, T&) const {
    return pair_grad(*this, c, r.kind, r.j, r.y, s);
  }
  MSA_DEV int64_t out_row(const Tile& tile, int o) const {
    return (tile.view < 0 ? 0 : 3 * this->B) + tile.o_begin + o;
  }
};

int label_type(const at::Tensor& y) {
  switch (y.scalar_type()) {
    case at::kFloat: return kLF32;
    case at::kDouble: return kLF64;
    case at::kHalf: return kLF16;
    case at::kBFloat16: return kLBF16;
    case at::kLong: return kLI64;
    case at::kInt: return kLI32;
    case at::kShort: return kLI16;
    case at::kChar: return kLI8;
    case at::kByte: return kLU8;
    case at::kBool: return kLBool;
    default: return -1;
  }
}

struct Prepared {
  at::Tensor macro, micro, y;
  int64_t B;
};

Prepared prepare(const at::Tensor& macro_in, const at::Tensor& micro_in, const at::Tensor& y_in, double delta,
                 double tau, double label_scale, double gain) {
  Prepared p;
  p.B = cm::check_mgcl(macro_in, micro_in, y_in, delta, tau, label_scale, gain);
  check_device(cm::kMgclOp, {{"macro", &macro_in}, {"micro", &micro_in}, {"y", &y_in}});
  p.macro = macro_in.contiguous();
  p.micro = micro_in.contiguous();
  // Labels the kernel cannot read directly become fp32 first (the CPU kernel's y.to(float32)).
  p.y = (label_type(y_in) < 0 ? y_in.to(at::kFloat) : y_in).contiguous();
  return p;
}

template <typename T>
void fill_params(Params<T>& q, const Prepared& p, double delta, double tau, double label_scale,
                 c10::string_view pos_weight, c10::string_view neg_weight, double gain, bool ordered6, bool normalize) {
  q.macro = bytes(p.macro);
  q.micro = bytes(p.micro);
  q.B = p.B;
  q.D = p.macro.size(1);
  q.row_bytes = p.macro.size(1) * static_cast<int64_t>(p.macro.element_size());
  q.dt = dtype_of(p.macro);
  q.normalize = normalize;
  q.y = p.y.const_data_ptr();
  q.label_type = label_type(p.y);
  q.label_scale = static_cast<float>(label_scale);
  q.delta = static_cast<float>(delta);
  q.gain = static_cast<float>(gain);
  q.gain08 = 0.8f * q.gain;
  q.pos_kind = cm::parse_mgcl_weight(std::string(pos_weight), "pos_weight");
  q.neg_kind = cm::parse_mgcl_weight(std::string(neg_weight), "neg_weight");
  q.arg_kind = q.pos_kind == cm::kNone ? cm::kMgcl : q.pos_kind;
  q.need_tanh = q.pos_kind != cm::kNone || q.neg_kind != cm::kNone;
  q.ordered6 = ordered6;
  q.inv_tau = T(1) / T(tau);
}

std::tuple<at::Tensor, at::Tensor> mgcl_rows_cuda(const at::Tensor& macro_in, const at::Tensor& micro_in,
                                                  const at::Tensor& y_in, double delta, double tau, double label_scale,
                                                  c10::string_view pos_weight, c10::string_view neg_weight, double gain,
                                                  bool ordered6, bool normalize) {
  const Prepared p = prepare(macro_in, micro_in, y_in, delta, tau, label_scale, gain);
  const Stream stream(macro_in);
  const int64_t B = p.B;
  const auto opts = p.macro.options().dtype(p.macro.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  at::Tensor lse_pos = at::empty({3 * B}, opts), lse_all = at::empty({3 * B}, opts);
  with_compute_type(p.macro, [&](auto tag) {
    using T = decltype(tag);
    Fwd<T> f{};
    fill_params<T>(f, p, delta, tau, label_scale, pos_weight, neg_weight, gain, ordered6, normalize);
    f.lse_pos = lse_pos.data_ptr<T>();
    f.lse_all = lse_all.data_ptr<T>();
    launch(&rows_forward_kernel<T, Fwd<T>>, forward_grid(3 * ceil_div(B, Cfg<T>::BM)), stream, f);
  });
  return {lse_pos, lse_all};
}

std::tuple<at::Tensor, at::Tensor> mgcl_rows_backward_cuda(const at::Tensor& grad_lse_pos,
                                                           const at::Tensor& grad_lse_all, const at::Tensor& macro_in,
                                                           const at::Tensor& micro_in, const at::Tensor& y_in,
                                                           const at::Tensor& lse_pos_in, const at::Tensor& lse_all_in,
                                                           double delta, double tau, double label_scale,
                                                           c10::string_view pos_weight, c10::string_view neg_weight,
                                                           double gain, bool ordered6, bool normalize) {
  const Prepared p = prepare(macro_in, micro_in, y_in, delta, tau, label_scale, gain);
  const int64_t B = p.B, D = p.macro.size(1);
  cm::check_mgcl_grad({{"grad_lse_pos", &grad_lse_pos},
                       {"grad_lse_all", &grad_lse_all},
                       {"lse_pos", &lse_pos_in},
                       {"lse_all", &lse_all_in}},
                      B, macro_in);
  const Stream stream(macro_in);
  at::Tensor d_macro, d_micro;
  with_compute_type(p.macro, [&](auto tag) {
    using T = decltype(tag);
    const auto ct = c10::CppTypeToScalarType<T>::value;
    const auto opts = p.macro.options().dtype(ct);
    // Statistics in the compute dtype (fp64 stays fp64 for gradcheck), as the CPU kernel.
    const at::Tensor gp = grad_lse_pos.reshape({3 * B}).to(ct).contiguous(),
                     ga = grad_lse_all.reshape({3 * B}).to(ct).contiguous(),
                     lp = lse_pos_in.reshape({3 * B}).to(ct).contiguous(),
                     la = lse_all_in.reshape({3 * B}).to(ct).contiguous();
    const Stats<T> st{gp.const_data_ptr<T>(), ga.const_data_ptr<T>(), lp.const_data_ptr<T>(), la.const_data_ptr<T>()};
    at::Tensor du_rows = at::empty({3 * B, D}, opts), du_cols = at::empty({6 * B, D}, opts);
    BwdRows<T> rows{};
    fill_params<T>(rows, p, delta, tau, label_scale, pos_weight, neg_weight, gain, ordered6, normalize);
    rows.st = st;
    launch(&rows_grad_kernel<T, BwdRows<T>>, grad_grid(3 * ceil_div(B, Cfg<T>::BM), D), stream, rows,
           du_rows.data_ptr<T>(), static_cast<T*>(nullptr));
    BwdCols<T> cols{};
    fill_params<T>(cols, p, delta, tau, label_scale, pos_weight, neg_weight, gain, ordered6, normalize);
    cols.st = st;
    launch(&rows_grad_kernel<T, BwdCols<T>>,
           grad_grid(ceil_div(3 * B, Cfg<T>::BM) + 3 * ceil_div(B, Cfg<T>::BM), D), stream, cols,
           du_cols.data_ptr<T>(), static_cast<T*>(nullptr));
    const at::Tensor cols_macro = du_cols.narrow(0, 0, 3 * B), cols_micro = du_cols.narrow(0, 3 * B, 3 * B);
    d_macro = finalize<T>(stream, p.macro, normalize, &du_rows, &cols_macro, T(1));
    d_micro = finalize<T>(stream, p.micro, normalize, &cols_micro, nullptr, T(1));
  });
  return {d_macro, d_micro};
}

}  // namespace
}  // namespace mgcl_cuda

#if !defined(MSA_CUDA_EMULATION)
TORCH_LIBRARY_IMPL(msa_fast, CUDA, m) {
  m.impl("mgcl_rows", &mgcl_cuda::mgcl_rows_cuda);
  m.impl("mgcl_rows_backward", &mgcl_cuda::mgcl_rows_backward_cuda);
}
#endif

}  // namespace msa_fast
