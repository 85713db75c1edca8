// C++ CPU kernel of dropout (spec: msa_fast/ops/dropout.py): x · keep / (1 − p) with the keep mask drawn from the
// counter-based Philox stream of csrc/common/dropout.h. Backward calls this same kernel on the upstream
// gradient with the same seed, so no mask is ever stored.
//
// Why blocks of kLanes counters: the ten Philox rounds of kLanes independent counters form a loop GCC
// vectorises (32×32→64-bit products become vpmuludq), which is where the time goes; the per-element
// select that follows streams x once. At 4 elements per Philox block, one AVX2 pass costs ~1 ns per
// element per core — an order of magnitude below torch's bernoulli_ or Inductor's per-element Philox.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Half.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "common/dropout.h"
#include "common/dropout_args.h"
#include "cpu/output_pages.h"
#include "cpu/pairwise.h"

namespace msa_fast {
namespace {

constexpr int64_t kLanes = 64;                                   // Philox blocks per vector batch
constexpr int64_t kChunk = kLanes * dropout::kWordsPerBlock;     // elements per batch

// The kChunk words of blocks first .. first + kLanes − 1, in element order.
MSA_VECTOR_CLONES void draw_words(uint64_t seed, uint64_t first, uint32_t* words) {
  uint32_t w0[kLanes], w1[kLanes], w2[kLanes], w3[kLanes];
#pragma omp simd
  for (int64_t j = 0; j < kLanes; ++j) {
    const Philox4x32 r = dropout::block(seed, first + static_cast<uint64_t>(j));
    w0[j] = r.c0;
    w1[j] = r.c1;
    w2[j] = r.c2;
    w3[j] = r.c3;
  }
  for (int64_t j = 0; j < kLanes; ++j) {
    words[4 * j] = w0[j];
    words[4 * j + 1] = w1[j];
    words[4 * j + 2] = w2[j];
    words[4 * j + 3] = w3[j];
  }
}

template <typename scalar_t, typename acc_t>
void apply_words(const scalar_t* x, scalar_t* out, const uint32_t* words, int64_t n, float p, acc_t scale) {
#pragma omp simd
  for (int64_t e = 0; e < n; ++e) {
    const acc_t v = static_cast<acc_t>(x[e]) * scale;
    out[e] = static_cast<scalar_t>(dropout::keep(words[e], p) ? v : acc_t(0));
  }
}

at::Tensor dropout_cpu(const at::Tensor& x_in, double p, const at::Tensor& seed_t) {
  const dropout::Args a = dropout::check_args(x_in, p, seed_t);
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = empty_streaming_output(x);
  const int64_t numel = x.numel();
  const int64_t chunks = (numel + kChunk - 1) / kChunk;
  const float pf = static_cast<float>(p);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "msa_fast_dropout_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t scale = dropout::keep_scale<acc_t>(p);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    // 64 chunks = 16K elements per task: enough to amortise the fork, small enough to balance.
    at::parallel_for(0, chunks, 64, [&](int64_t begin, int64_t end) {
      alignas(64) uint32_t words[kChunk];
      for (int64_t c = begin; c < end; ++c) {
        const int64_t e0 = c * kChunk;
        draw_words(a.seed, static_cast<uint64_t>(c) * kLanes, words);
        apply_words(xp + e0, op + e0, words, std::min(kChunk, numel - e0), pf, scale);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(msa_fast, CPU, m) { m.impl("dropout", &dropout_cpu); }

}  // namespace msa_fast
