// Host-side argument checking for cutoff, shared by the CPU and CUDA kernels so both raise the same
// clear errors (ValueError / TypeError in Python) from eager code, torch.compile and TorchScript.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/aminmax.h>
#include <ATen/ops/full.h>
#include <ATen/ops/stack.h>

#include <algorithm>
#include <string>

#include "common/cutoff.h"
#include "common/philox_args.h"

namespace msa_fast {
namespace cutoff {

struct Args {
  Mode mode;
  bool left_padding;
  int64_t B, L, D;
  uint64_t seed;
  int64_t feature_draws;  // n = int(D·ratio) for feature mode
};

inline Args check_args(const at::Tensor& x, double ratio, const std::string& mode,
                       const at::Tensor& seed, const c10::optional<at::Tensor>& lengths,
                       const std::string& padding_side) {
  const at::ScalarType dt = x.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || dt == at::kDouble,
                   "msa_fast.ops.cutoff: x must be float32, float16, bfloat16 or float64, got ", dt);
  TORCH_CHECK_VALUE(x.dim() == 3, "msa_fast.ops.cutoff: x must be [B, L, D], got shape ", x.sizes());
  TORCH_CHECK_VALUE(x.numel() > 0, "msa_fast.ops.cutoff: x is empty (shape ", x.sizes(), ")");
  TORCH_CHECK_VALUE(ratio >= 0.0 && ratio <= 1.0, "msa_fast.ops.cutoff: ratio must lie in [0, 1], got ", ratio);
  Args a;
  if (mode == "feature") a.mode = kFeature;
  else if (mode == "token") a.mode = kToken;
  else if (mode == "span") a.mode = kSpan;
  else TORCH_CHECK_VALUE(false, "msa_fast.ops.cutoff: mode must be 'feature', 'token' or 'span', got '", mode, "'");
  TORCH_CHECK_VALUE(padding_side == "right" || padding_side == "left",
                    "msa_fast.ops.cutoff: padding_side must be 'right' or 'left', got '", padding_side, "'");
  a.left_padding = padding_side == "left";
  a.B = x.size(0);
  a.L = x.size(1);
  a.D = x.size(2);
  TORCH_CHECK_VALUE(a.B * std::max(a.D, a.L) < (int64_t(1) << 32),
                    "msa_fast.ops.cutoff: B·max(D, L) = ", a.B * std::max(a.D, a.L),
                    " reaches 2^32, the Philox offset limit; split the batch");
  a.seed = philox::checked_seed(seed, "cutoff");
  a.feature_draws = draws_for(a.D, ratio);
  if (lengths.has_value()) {
    const at::Tensor& len = *lengths;
    TORCH_CHECK_TYPE(len.scalar_type() == at::kLong || len.scalar_type() == at::kInt,
                     "msa_fast.ops.cutoff: lengths must be int32 or int64, got ", len.scalar_type());
    TORCH_CHECK_VALUE(len.dim() == 1 && len.size(0) == a.B, "msa_fast.ops.cutoff: lengths must be [B] = [", a.B,
                      "], got shape ", len.sizes());
    TORCH_CHECK_VALUE(len.device() == x.device(), "msa_fast.ops.cutoff: lengths is on ", len.device(),
                      " but x is on ", x.device());
  }
  return a;
}

// Valid lengths as int64 on x's device, checked to lie in [0, L] (one small host read on CUDA:
// min and max travel together).
inline at::Tensor checked_lengths(const Args& a, const at::Tensor& x, const c10::optional<at::Tensor>& lengths) {
  if (!lengths.has_value()) return at::full({a.B}, a.L, x.options().dtype(at::kLong));
  at::Tensor len = lengths->to(at::kLong).contiguous();
  const auto min_max = at::aminmax(len);
  const at::Tensor bounds = at::stack({std::get<0>(min_max), std::get<1>(min_max)}).cpu();
  const int64_t lo = bounds.data_ptr<int64_t>()[0], hi = bounds.data_ptr<int64_t>()[1];
  TORCH_CHECK_VALUE(lo >= 0 && hi <= a.L, "msa_fast.ops.cutoff: lengths must lie in [0, L] = [0, ", a.L,
                    "], got values in [", lo, ", ", hi, "]");
  return len;
}

}  // namespace cutoff
}  // namespace msa_fast
