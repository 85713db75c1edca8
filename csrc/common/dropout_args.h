// Host-side argument checking for dropout, shared by the CPU and CUDA kernels so both raise the same
// clear errors (ValueError / TypeError in Python) from eager code, torch.compile and TorchScript.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "common/philox_args.h"

namespace msa_fast {
namespace dropout {

struct Args {
  uint64_t seed;
};

inline Args check_args(const at::Tensor& x, double p, const at::Tensor& seed) {
  const at::ScalarType dt = x.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || dt == at::kDouble,
                   "msa_fast.ops.dropout: x must be float32, float16, bfloat16 or float64, got ", dt);
  TORCH_CHECK_VALUE(p >= 0.0 && p <= 1.0, "msa_fast.ops.dropout: p must lie in [0, 1], got ", p);
  return {philox::checked_seed(seed, "dropout")};
}

}  // namespace dropout
}  // namespace msa_fast
