// Host-side argument checking for the Hard Concrete ops, shared by the CPU and CUDA kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

#include "common/hard_concrete.h"

namespace msa_fast {
namespace hard_concrete {

template <typename T>
inline Params<T> make_params(double beta, double gamma, double zeta, c10::optional<double> threshold,
                             bool training, double eps, bool ste_sbar) {
  TORCH_CHECK_VALUE(beta > 0, "msa_fast.ops.hard_concrete: beta must be > 0, got ", beta);
  TORCH_CHECK_VALUE(gamma < 0, "msa_fast.ops.hard_concrete: gamma must be < 0, got ", gamma);
  TORCH_CHECK_VALUE(zeta > 1, "msa_fast.ops.hard_concrete: zeta must be > 1, got ", zeta);
  TORCH_CHECK_VALUE(eps >= 0 && eps < 0.5, "msa_fast.ops.hard_concrete: eps must lie in [0, 0.5), got ", eps);
  if (threshold.has_value())
    TORCH_CHECK_VALUE(*threshold >= 0 && *threshold <= 1,
                      "msa_fast.ops.hard_concrete: threshold must lie in [0, 1], got ", *threshold);
  return Params<T>{T(beta), T(gamma), T(zeta), T(threshold.value_or(0.0)), T(eps),
                   threshold.has_value(), training, ste_sbar};
}

inline void check_log_alpha(const at::Tensor& log_alpha) {
  const at::ScalarType dt = log_alpha.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || dt == at::kDouble,
                   "msa_fast.ops.hard_concrete: log_alpha must be float32, float16, bfloat16 or float64, got ", dt);
  TORCH_CHECK_VALUE(log_alpha.numel() > 0, "msa_fast.ops.hard_concrete: log_alpha is empty (shape ",
                    log_alpha.sizes(), ")");
  TORCH_CHECK_VALUE(log_alpha.numel() <= (int64_t(1) << 32),
                    "msa_fast.ops.hard_concrete: log_alpha has ", log_alpha.numel(),
                    " elements, more than the 2^32 Philox offsets; split it");
}

// An upstream gradient as a contiguous tensor of log_alpha's shape and dtype. It must live on
// log_alpha's device: the kernels read it directly.
inline at::Tensor grad_tensor(const at::Tensor& grad, const at::Tensor& log_alpha, const char* name) {
  TORCH_CHECK_VALUE(grad.device() == log_alpha.device(), "msa_fast.ops.hard_concrete: ", name, " is on ",
                    grad.device(), " but log_alpha is on ", log_alpha.device());
  return grad.expand(log_alpha.sizes()).to(log_alpha.scalar_type()).contiguous();
}

// u as a contiguous tensor of log_alpha's shape and dtype, or undefined when none was given.
inline at::Tensor noise_tensor(const at::Tensor& log_alpha, const c10::optional<at::Tensor>& u) {
  if (!u.has_value()) return at::Tensor();
  TORCH_CHECK_TYPE(u->scalar_type() == log_alpha.scalar_type(), "msa_fast.ops.hard_concrete: u is ",
                   u->scalar_type(), " but log_alpha is ", log_alpha.scalar_type());
  TORCH_CHECK_VALUE(u->device() == log_alpha.device(), "msa_fast.ops.hard_concrete: u is on ", u->device(),
                    " but log_alpha is on ", log_alpha.device());
  return u->expand(log_alpha.sizes()).contiguous();
}

inline uint64_t seed_value(const c10::optional<at::Tensor>& seed, bool needed) {
  if (!needed) return 0;
  TORCH_CHECK_VALUE(seed.has_value() && seed->numel() == 1 && seed->scalar_type() == at::kLong,
                    "msa_fast.ops.hard_concrete: training without u needs a 0-dim int64 seed");
  const int64_t s = seed->item<int64_t>();
  TORCH_CHECK_VALUE(s >= 0, "msa_fast.ops.hard_concrete: seed must be non-negative, got ", s);
  return static_cast<uint64_t>(s);
}

inline bool parse_ste(const std::string& ste) {
  TORCH_CHECK_VALUE(ste == "clamp" || ste == "sbar", "msa_fast.ops.hard_concrete: ste must be 'clamp' or 'sbar', got '",
                    ste, "'");
  return ste == "sbar";
}

}  // namespace hard_concrete
}  // namespace msa_fast
