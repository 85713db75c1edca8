// Per-element index math of cutoff (ops.md §9), shared by csrc/cpu/cutoff.cpp and csrc/cuda/cutoff.cu
// so the CPU tests cover the CUDA kernel's arithmetic. kernels/cutoff.py mirrors it in Triton.
#pragma once

#include <cstdint>

#include "common/philox.h"

namespace msa_fast {
namespace cutoff {

enum Mode : int { kFeature = 0, kToken = 1, kSpan = 2 };

// int(len * ratio) in double precision, exactly as Python computes it.
MSA_HD int64_t draws_for(int64_t len, double ratio) { return static_cast<int64_t>(static_cast<double>(len) * ratio); }

// Feature mode: draw t of sample b picks feature (r·D) >> 32, offset b·D + t.
MSA_HD int64_t feature_index(uint64_t seed, int64_t b, int64_t D, int64_t t) {
  return philox_index(philox_randint(seed, static_cast<uint32_t>(b * D + t)), static_cast<uint32_t>(D));
}

// Token mode: draw t of sample b picks valid step (r·len) >> 32, offset b·L + t.
MSA_HD int64_t token_position(uint64_t seed, int64_t b, int64_t L, int64_t t, int64_t len) {
  return philox_index(philox_randint(seed, static_cast<uint32_t>(b * L + t)), static_cast<uint32_t>(len));
}

// Span mode: the span of `span` steps starts at (r·(len − span)) >> 32, offset b; 0 if it fills len.
MSA_HD int64_t span_start(uint64_t seed, int64_t b, int64_t len, int64_t span) {
  if (len - span < 1) return 0;
  return philox_index(philox_randint(seed, static_cast<uint32_t>(b)), static_cast<uint32_t>(len - span));
}

// First valid time step: valid steps are [0, len) with right padding, [L − len, L) with left padding.
MSA_HD int64_t valid_begin(int64_t L, int64_t len, bool left_padding) { return left_padding ? L - len : 0; }

// Token mode: the time step (row of the sample, in [0, L)) that draw t of sample b cuts.
MSA_HD int64_t token_cut_row(uint64_t seed, int64_t b, int64_t L, int64_t t, int64_t len, bool left_padding) {
  return valid_begin(L, len, left_padding) + token_position(seed, b, L, t, len);
}

// Span mode: the first cut time step of sample b; rows [first, first + span) are cut when span > 0.
MSA_HD int64_t span_cut_begin(uint64_t seed, int64_t b, int64_t L, int64_t len, int64_t span, bool left_padding) {
  return valid_begin(L, len, left_padding) + span_start(seed, b, len, span);
}

// x is moved as raw bits of its element size: cut entries are selected to 0 by an AND with an
// all-zeros word (kept ones with all-ones), so NaN/Inf at a cut position become exactly +0.
template <int kBytes> struct BitsOf;
template <> struct BitsOf<2> { using type = uint16_t; };
template <> struct BitsOf<4> { using type = uint32_t; };
template <> struct BitsOf<8> { using type = uint64_t; };

template <typename bits_t>
MSA_HD bits_t keep_word(bool keep) {
  return keep ? static_cast<bits_t>(~bits_t(0)) : bits_t(0);
}

}  // namespace cutoff
}  // namespace msa_fast
