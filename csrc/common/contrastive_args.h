// Host-side argument checks of the fused contrastive row ops (supcon_rows, info_nce_rows, uniform_rows,
// hycon_rows, mgcl_rows and their backwards), shared by the CPU kernels (csrc/cpu/) and the CUDA kernels
// (csrc/cuda/), so both raise the same ValueError / TypeError messages (ops.md §0.4) from eager code,
// torch.compile and TorchScript. Device placement beyond "all on one device" is checked by each backend.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <string>
#include <utility>

#include "common/contrastive.h"

namespace msa_fast {
namespace contrastive {

inline bool is_feature_dtype(at::ScalarType st) {
  return st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16;
}

// Per-row tensors of a backward (upstream gradients, saved statistics): `n` entries on the features' device.
inline void check_rows(const char* op, std::initializer_list<std::pair<const char*, const at::Tensor*>> tensors,
                       int64_t n, const char* n_name, const at::Tensor& like) {
  for (const auto& [name, t] : tensors) {
    TORCH_CHECK_VALUE(t->numel() == n, op, " backward: per-row tensors must have ", n_name, " = ", n,
                      " entries, got ", name, " of shape ", t->sizes());
    TORCH_CHECK_VALUE(t->device() == like.device(), op, " backward: ", name, " is on ", t->device(),
                      " but the features are on ", like.device());
  }
}

// ------------------------------------------------------------------------------------------------
// supcon_rows (ops.md §2)

constexpr const char* kSupconOp = "msa_fast.ops.supcon_loss";

inline void check_supcon(const at::Tensor& z, const at::Tensor& labels, double temperature) {
  TORCH_CHECK_TYPE(is_feature_dtype(z.scalar_type()), kSupconOp, ": z must be fp32/fp16/bf16/fp64, got ",
                   z.scalar_type());
  TORCH_CHECK_VALUE(z.dim() == 2, kSupconOp, ": z must be [N, D], got shape ", z.sizes());
  TORCH_CHECK_VALUE(z.numel() > 0, kSupconOp, ": z is empty (shape ", z.sizes(), ")");
  TORCH_CHECK_TYPE(labels.scalar_type() == at::kLong, kSupconOp, ": labels must be int64 here, got ",
                   labels.scalar_type());
  TORCH_CHECK_VALUE(labels.dim() == 1 && labels.size(0) == z.size(0), kSupconOp, ": labels must be [N] = [",
                    z.size(0), "], got shape ", labels.sizes());
  TORCH_CHECK_VALUE(labels.device() == z.device(), kSupconOp, ": labels is on ", labels.device(), " but z is on ",
                    z.device());
  TORCH_CHECK_VALUE(temperature > 0, kSupconOp, ": temperature must be > 0, got ", temperature);
}

// ------------------------------------------------------------------------------------------------
// info_nce_rows (ops.md §3)

constexpr const char* kInfoNceOp = "msa_fast.ops.info_nce";

inline void check_info_nce(const at::Tensor& q, const at::Tensor& k, double temperature) {
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"q", &q}, {"k", &k}}) {
    TORCH_CHECK_TYPE(is_feature_dtype(t->scalar_type()), kInfoNceOp, ": ", name, " must be fp32/fp16/bf16/fp64, got ",
                     t->scalar_type());
    TORCH_CHECK_VALUE(t->dim() == 2, kInfoNceOp, ": ", name, " must be [N, D], got shape ", t->sizes());
    TORCH_CHECK_VALUE(t->numel() > 0, kInfoNceOp, ": ", name, " is empty (shape ", t->sizes(), ")");
  }
  TORCH_CHECK_VALUE(q.sizes() == k.sizes(), kInfoNceOp, ": q and k must have the same shape, got ", q.sizes(), " and ",
                    k.sizes());
  TORCH_CHECK_TYPE(q.scalar_type() == k.scalar_type(), kInfoNceOp, ": q and k must share a dtype, got ",
                   q.scalar_type(), " and ", k.scalar_type());
  TORCH_CHECK_VALUE(q.device() == k.device(), kInfoNceOp, ": q is on ", q.device(), " but k is on ", k.device());
  TORCH_CHECK_VALUE(temperature > 0, kInfoNceOp, ": temperature must be > 0, got ", temperature);
}

// ------------------------------------------------------------------------------------------------
// uniform_rows (ops.md §6)

constexpr const char* kUniformOp = "msa_fast.ops.uniform_loss";

inline void check_uniform(const at::Tensor& p, const at::Tensor& g, double kappa) {
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"p", &p}, {"g", &g}}) {
    TORCH_CHECK_TYPE(is_feature_dtype(t->scalar_type()), kUniformOp, ": ", name, " must be fp32/fp16/bf16/fp64, got ",
                     t->scalar_type());
    TORCH_CHECK_VALUE(t->dim() == 2, kUniformOp, ": ", name, " must be [n, D], got shape ", t->sizes());
    TORCH_CHECK_VALUE(t->numel() > 0, kUniformOp, ": ", name, " is empty (shape ", t->sizes(), ")");
  }
  TORCH_CHECK_VALUE(p.sizes() == g.sizes(), kUniformOp, ": p and g must have the same shape, got ", p.sizes(), " and ",
                    g.sizes());
  TORCH_CHECK_TYPE(p.scalar_type() == g.scalar_type(), kUniformOp, ": p and g must share a dtype, got ",
                   p.scalar_type(), " and ", g.scalar_type());
  TORCH_CHECK_VALUE(p.device() == g.device(), kUniformOp, ": p is on ", p.device(), " but g is on ", g.device());
  TORCH_CHECK_VALUE(p.size(0) >= 2, kUniformOp, ": needs n >= 2 rows (the mean runs over pairs i != j), got p of shape ",
                    p.sizes());
  TORCH_CHECK_VALUE(kappa >= 0, kUniformOp, ": kappa must be >= 0, got ", kappa);
}

// ------------------------------------------------------------------------------------------------
// hycon_rows (ops.md §4)

constexpr const char* kHyconOp = "msa_fast.ops.hycon_loss";

inline HyconTransform parse_hycon_transform(const std::string& t) {
  if (t == "cos") return kCos;
  if (t == "cos01") return kCos01;
  TORCH_CHECK_VALUE(t == "exp_tau", kHyconOp, ": sim_transform must be one of ('cos', 'cos01', 'exp_tau'), got '", t,
                    "'");
  return kExpTau;
}

struct HyconArgs {
  int64_t K;
  HyconTransform f;
};

inline HyconArgs check_hycon(const at::Tensor& x, const at::Tensor& classes, double tau,
                             const std::string& transform_name) {
  const auto st = x.scalar_type();
  TORCH_CHECK_TYPE(is_feature_dtype(st), kHyconOp, ": x must be fp32/fp16/bf16/fp64, got ", st);
  TORCH_CHECK_VALUE(x.dim() == 2, kHyconOp, ": x must be [3K, d] (= [x_l; x_a; x_v]), got shape ", x.sizes());
  TORCH_CHECK_VALUE(x.numel() > 0, kHyconOp, ": x is empty (shape ", x.sizes(), ")");
  TORCH_CHECK_VALUE(x.size(0) % 3 == 0, kHyconOp, ": x must stack the three modalities, [3K, d], got ", x.size(0),
                    " rows (shape ", x.sizes(), ")");
  const int64_t K = x.size(0) / 3;
  TORCH_CHECK_VALUE(K <= std::numeric_limits<int32_t>::max(), kHyconOp, ": K = ", K, " samples is too many");
  TORCH_CHECK_TYPE(classes.scalar_type() == at::kLong, kHyconOp, ": classes must be int64 here, got ",
                   classes.scalar_type());
  TORCH_CHECK_VALUE(classes.dim() == 1 && classes.size(0) == K, kHyconOp, ": classes must be [K] = [", K,
                    "] for x of shape ", x.sizes(), ", got shape ", classes.sizes());
  TORCH_CHECK_VALUE(classes.device() == x.device(), kHyconOp, ": classes is on ", classes.device(), " but x is on ",
                    x.device());
  TORCH_CHECK_VALUE(tau > 0, kHyconOp, ": tau must be > 0, got ", tau);
  return {K, parse_hycon_transform(transform_name)};
}

inline void check_hycon_grad(const at::Tensor& grad_stats, const at::Tensor& x, int64_t K) {
  const int64_t N = 3 * K;
  TORCH_CHECK_VALUE(grad_stats.dim() == 2 && grad_stats.size(0) == N && grad_stats.size(1) == kHyconStats, kHyconOp,
                    " backward: grad_stats must be [3K, 7] = [", N, ", 7], got shape ", grad_stats.sizes());
  TORCH_CHECK_VALUE(grad_stats.device() == x.device(), kHyconOp, " backward: grad_stats is on ", grad_stats.device(),
                    " but x is on ", x.device());
}

// ------------------------------------------------------------------------------------------------
// mgcl_rows (ops.md §5)

constexpr const char* kMgclOp = "msa_fast.ops.mgcl_contrastive_loss";

inline MgclWeight parse_mgcl_weight(const std::string& s, const char* name) {
  if (s == "mgcl") return kMgcl;
  if (s == "clgsi") return kClgsi;
  if (s == "none") return kNone;
  TORCH_CHECK_VALUE(false, kMgclOp, ": ", name, " must be one of ('mgcl', 'clgsi', 'none'), got '", s, "'");
  return kNone;
}

// Returns B. Features must be [3B, d] (the views stacked T, V, A), y [B] real.
inline int64_t check_mgcl(const at::Tensor& macro, const at::Tensor& micro, const at::Tensor& y, double delta,
                          double tau, double label_scale, double gain) {
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"macro", &macro}, {"micro", &micro}}) {
    TORCH_CHECK_TYPE(is_feature_dtype(t->scalar_type()), kMgclOp, ": ", name, " must be fp32/fp16/bf16/fp64, got ",
                     t->scalar_type());
    TORCH_CHECK_VALUE(t->dim() == 2, kMgclOp, ": ", name, " must be [3B, d] (the three views stacked), got shape ",
                      t->sizes());
    TORCH_CHECK_VALUE(t->numel() > 0, kMgclOp, ": ", name, " is empty (shape ", t->sizes(), ")");
    TORCH_CHECK_VALUE(t->size(0) % 3 == 0, kMgclOp, ": ", name,
                      " must stack three views of B rows ([3B, d]), got shape ", t->sizes());
  }
  TORCH_CHECK_VALUE(macro.sizes() == micro.sizes(), kMgclOp, ": macro and micro must have the same shape, got ",
                    macro.sizes(), " and ", micro.sizes());
  TORCH_CHECK_TYPE(macro.scalar_type() == micro.scalar_type(), kMgclOp, ": macro and micro must share a dtype, got ",
                   macro.scalar_type(), " and ", micro.scalar_type());
  TORCH_CHECK_VALUE(macro.device() == micro.device(), kMgclOp, ": macro is on ", macro.device(), " but micro is on ",
                    micro.device());
  const int64_t B = macro.size(0) / 3;
  TORCH_CHECK_TYPE(!y.is_complex() && (y.is_floating_point() || at::isIntegralType(y.scalar_type(), /*includeBool=*/true)),
                   kMgclOp, ": y must be a real tensor, got ", y.scalar_type());
  TORCH_CHECK_VALUE(y.dim() == 1 && y.size(0) == B, kMgclOp, ": y must be [B] = [", B, "], got shape ", y.sizes());
  TORCH_CHECK_VALUE(y.device() == macro.device(), kMgclOp, ": y is on ", y.device(), " but the features are on ",
                    macro.device());
  TORCH_CHECK_VALUE(tau > 0, kMgclOp, ": tau must be > 0, got ", tau);
  TORCH_CHECK_VALUE(label_scale > 0, kMgclOp, ": label_scale must be > 0, got ", label_scale);
  TORCH_CHECK_VALUE(!std::isnan(delta) && !std::isnan(gain), kMgclOp, ": delta and gain must not be NaN");
  return B;
}

inline void check_mgcl_grad(std::initializer_list<std::pair<const char*, const at::Tensor*>> tensors, int64_t B,
                            const at::Tensor& macro) {
  for (const auto& [name, t] : tensors) {
    TORCH_CHECK_VALUE(t->numel() == 3 * B, kMgclOp, " backward: ", name, " must have 3B = ", 3 * B,
                      " entries (one per macro row), got shape ", t->sizes());
    TORCH_CHECK_VALUE(t->device() == macro.device(), kMgclOp, " backward: ", name, " is on ", t->device(),
                      " but the features are on ", macro.device());
  }
}

}  // namespace contrastive
}  // namespace msa_fast
