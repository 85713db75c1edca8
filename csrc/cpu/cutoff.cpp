// C++ CPU kernel of cutoff (ops.md §9): one pass over x, the cut set rebuilt from Philox per sample.
//
// Cut entries are selected to 0 with a bitwise AND against an all-ones / all-zeros word, which is
// selection (NaN or Inf at a cut position becomes exactly 0) and vectorises to one AND per lane.
// No mask is stored: backward calls this same kernel on the upstream gradient with the same seed.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>

#include <cstring>
#include <vector>

#include "common/cutoff.h"
#include "common/cutoff_args.h"
#include "cpu/output_pages.h"

namespace msa_fast {
namespace {

using namespace cutoff;

// Rows are (b, l) pairs; each chunk rebuilds the cut set of a sample when it reaches a new one.
template <typename bits_t>
void feature_rows(const bits_t* x, bits_t* out, const Args& a, int64_t row_begin, int64_t row_end) {
  std::vector<bits_t> keep(a.D);
  int64_t current = -1;
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t b = row / a.L;
    if (b != current) {
      std::fill(keep.begin(), keep.end(), keep_word<bits_t>(true));
      for (int64_t t = 0; t < a.feature_draws; ++t) keep[feature_index(a.seed, b, a.D, t)] = keep_word<bits_t>(false);
      current = b;
    }
    const bits_t* xr = x + row * a.D;
    bits_t* orow = out + row * a.D;
    const bits_t* k = keep.data();
#pragma omp simd
    for (int64_t d = 0; d < a.D; ++d) orow[d] = xr[d] & k[d];
  }
}

// Token and span modes cut whole time steps: a row is either zeroed or copied.
template <typename bits_t>
void step_rows(const bits_t* x, bits_t* out, const Args& a, double ratio, const int64_t* lengths,
               int64_t row_begin, int64_t row_end) {
  std::vector<uint8_t> cut(a.L);
  int64_t current = -1;
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t b = row / a.L, l = row % a.L;
    if (b != current) {
      std::fill(cut.begin(), cut.end(), uint8_t(0));
      const int64_t len = lengths[b], n = draws_for(len, ratio);
      if (a.mode == kToken) {
        for (int64_t t = 0; t < n; ++t) cut[token_cut_row(a.seed, b, a.L, t, len, a.left_padding)] = 1;
      } else if (n > 0) {
        const int64_t start = span_cut_begin(a.seed, b, a.L, len, n, a.left_padding);
        std::fill(cut.begin() + start, cut.begin() + start + n, uint8_t(1));
      }
      current = b;
    }
    if (cut[l]) std::memset(out + row * a.D, 0, a.D * sizeof(bits_t));
    else std::memcpy(out + row * a.D, x + row * a.D, a.D * sizeof(bits_t));
  }
}

at::Tensor cutoff_cpu(const at::Tensor& x_in, double ratio, c10::string_view mode, const at::Tensor& seed,
                      const c10::optional<at::Tensor>& lengths, c10::string_view padding_side) {
  const Args a = check_args(x_in, ratio, std::string(mode), seed, lengths, std::string(padding_side));
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = empty_streaming_output(x);
  const at::Tensor len = checked_lengths(a, x, lengths);
  const int64_t rows = a.B * a.L;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(a.D, 1));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "msa_fast_cutoff_cpu", [&] {
    using bits_t = typename BitsOf<sizeof(scalar_t)>::type;
    const bits_t* xp = reinterpret_cast<const bits_t*>(x.data_ptr<scalar_t>());
    bits_t* op = reinterpret_cast<bits_t*>(out.data_ptr<scalar_t>());
    const int64_t* lp = len.data_ptr<int64_t>();
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      if (a.mode == kFeature) feature_rows(xp, op, a, begin, end);
      else step_rows(xp, op, a, ratio, lp, begin, end);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(msa_fast, CPU, m) { m.impl("cutoff", &cutoff_cpu); }

}  // namespace msa_fast
