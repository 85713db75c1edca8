// Host-side argument checking of the Philox test ops (shared by csrc/cpu/philox.cpp and
// csrc/cuda/philox.cu) and of the seed every random op takes, so all backends accept and reject exactly
// the same inputs.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "common/philox.h"

namespace msa_fast {
namespace philox {

inline void check_block_words(const at::Tensor& words) {
  TORCH_CHECK_VALUE(words.dim() == 1 && words.numel() == 6 && words.scalar_type() == at::kLong,
                    "msa_fast::philox_block: words must be int64 [6] = (c0, c1, c2, c3, k0, k1), got ",
                    words.scalar_type(), " ", words.sizes());
}

// Checks the stream bounds and returns the seed (one host read of the 0-dim seed tensor).
inline uint64_t check_randint(const at::Tensor& seed, int64_t offset, int64_t count) {
  TORCH_CHECK_VALUE(seed.numel() == 1 && seed.scalar_type() == at::kLong,
                    "msa_fast::philox_randint: seed must be 0-dim int64");
  TORCH_CHECK_VALUE(offset >= 0 && count >= 0 && offset <= (int64_t(1) << 32) &&
                        count <= (int64_t(1) << 32) - offset,
                    "msa_fast::philox_randint: offsets must stay below 2^32, got offset ", offset, " count ", count);
  return static_cast<uint64_t>(seed.item<int64_t>());
}

// The seed of a random op (`op` names it in errors): a 0-dim int64 tensor holding a non-negative value
// (one host read).
inline uint64_t checked_seed(const at::Tensor& seed, const char* op) {
  TORCH_CHECK_VALUE(seed.numel() == 1 && seed.scalar_type() == at::kLong, "msa_fast.ops.", op,
                    ": seed must be a 0-dim int64 tensor, got ", seed.scalar_type(), " of shape ", seed.sizes());
  const int64_t s = seed.item<int64_t>();
  TORCH_CHECK_VALUE(s >= 0, "msa_fast.ops.", op, ": seed must be non-negative, got ", s);
  return static_cast<uint64_t>(s);
}

}  // namespace philox
}  // namespace msa_fast
