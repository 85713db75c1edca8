// Per-element rule of dropout (spec: msa_fast/ops/dropout.py), shared by csrc/cpu/dropout.cpp and csrc/cuda/dropout.cu so
// the CPU tests cover the CUDA kernel's arithmetic. kernels/dropout.py mirrors it with tl.randint4x.
//
// Element i of the contiguous tensor reads word (i mod 4) of the Philox4x32-10 block at counter
// n = i div 4, with counter words (lo32(n), hi32(n), 0, 0) and key (lo32(seed), hi32(seed)): all four
// words of every block are used (4x fewer Philox evaluations than one draw per element), and the
// layout is exactly tl.randint4x(seed, n) for a 64-bit n. The element is kept iff u(r) ≥ p in fp32,
// u(r) = (2·(r >> 9) + 1)·2⁻²⁴ as for every other random op (ops.md §0.8).
#pragma once

#include <cstdint>

#include "common/philox.h"

namespace msa_fast {
namespace dropout {

// Elements per Philox block: the four output words.
constexpr int64_t kWordsPerBlock = 4;

MSA_HD Philox4x32 block(uint64_t seed, uint64_t counter) {
  return philox4x32_10(static_cast<uint32_t>(counter), static_cast<uint32_t>(counter >> 32), 0u, 0u,
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

MSA_HD bool keep(uint32_t r, float p) { return philox_uniform(r) >= p; }

// The survivors' factor 1/(1 − p) in the math type (fp32, fp64 for fp64 tensors); 0 when p = 1,
// where nothing is kept (selection, not multiplication, so no 0·∞).
template <typename acc_t>
MSA_HD acc_t keep_scale(double p) { return p < 1.0 ? static_cast<acc_t>(1.0 / (1.0 - p)) : acc_t(0); }

}  // namespace dropout
}  // namespace msa_fast
