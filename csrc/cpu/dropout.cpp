// C++ CPU kernel of dropout (spec: msa_fast/ops/dropout.py): x · keep / (1 − p) with the keep mask drawn from the
// counter-based Philox stream of csrc/common/dropout.h. Backward calls this same kernel on the upstream
// gradient with the same seed, so no mask is ever stored.
//
// Why blocks of kLanes counters: the ten Philox rounds are where the time goes, and kLanes independent
// counters let them run as vector code — cpu/philox_avx2.h's intrinsics where the CPU has AVX2 (0.86 ns
// per element per core), otherwise a loop GCC vectorises (2.5 ns); the per-element select that follows
// streams x once. Either is far below torch's bernoulli_ or Inductor's one full Philox per element.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Half.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "common/dropout.h"
#include "common/dropout_args.h"
#include "cpu/output_pages.h"
#include "cpu/pairwise.h"
#include "cpu/philox_avx2.h"

namespace msa_fast {
namespace {

constexpr int64_t kLanes = 64;                                   // Philox blocks per vector batch
constexpr int64_t kChunk = kLanes * dropout::kWordsPerBlock;     // elements per batch

static_assert(kLanes % philox_avx2::kBlocks == 0, "a chunk is whole AVX2 batches");

// The kChunk words of blocks first .. first + kLanes − 1, in element order: the portable path.
MSA_VECTOR_CLONES void draw_words_portable(uint64_t seed, uint64_t first, uint32_t* words) {
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

void draw_words(uint64_t seed, uint64_t first, uint32_t* words, bool avx2) {
  if (!avx2) return draw_words_portable(seed, first, words);
  for (int64_t b = 0; b < kLanes; b += philox_avx2::kBlocks)
    philox_avx2::philox_words(seed, first + static_cast<uint64_t>(b), words + dropout::kWordsPerBlock * b);
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
  const bool avx2 = philox_avx2::supported();
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
        draw_words(a.seed, static_cast<uint64_t>(c) * kLanes, words, avx2);
        apply_words(xp + e0, op + e0, words, std::min(kChunk, numel - e0), pf, scale);
      }
    });
  });
  return out;
}

// Test op: the words of blocks first_block .. first_block + blocks − 1 from one CPU path ("avx2" or
// "portable"), so both are checked against the reference, including counters past 2³² that no
// allocatable tensor reaches.
at::Tensor dropout_words_cpu(const at::Tensor& seed_t, int64_t first_block, int64_t blocks, c10::string_view path) {
  const uint64_t seed = philox::checked_seed(seed_t, "dropout_words");
  TORCH_CHECK(first_block >= 0 && blocks >= 0, "dropout_words: first_block and blocks must be >= 0, got ",
              first_block, " and ", blocks);
  const bool avx2 = path == "avx2";
  TORCH_CHECK(avx2 || path == "portable", "dropout_words: path must be 'avx2' or 'portable', got '", path, "'");
  TORCH_CHECK(!avx2 || philox_avx2::supported(), "dropout_words: this CPU (or build) has no AVX2 path");
  at::Tensor out = at::empty({blocks * dropout::kWordsPerBlock}, seed_t.options().dtype(at::kLong));
  int64_t* o = out.data_ptr<int64_t>();
  alignas(64) uint32_t words[kChunk];
  for (int64_t b = 0; b < blocks; b += kLanes) {
    draw_words(seed, static_cast<uint64_t>(first_block + b), words, avx2);
    const int64_t n = std::min(kLanes, blocks - b) * dropout::kWordsPerBlock;
    for (int64_t i = 0; i < n; ++i) o[b * dropout::kWordsPerBlock + i] = words[i];
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(msa_fast, CPU, m) {
  m.impl("dropout", &dropout_cpu);
  m.impl("dropout_words", &dropout_words_cpu);
}

}  // namespace msa_fast
