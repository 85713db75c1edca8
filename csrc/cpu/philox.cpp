// CPU kernels of the Philox test ops (ops.md §0.8 known answers, cross-backend streams).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/tensor.h>
#include <torch/library.h>

#include "common/philox.h"
#include "common/philox_args.h"

namespace msa_fast {
namespace {

at::Tensor philox_block_cpu(const at::Tensor& words) {
  philox::check_block_words(words);
  auto w = words.contiguous();
  const int64_t* p = w.data_ptr<int64_t>();
  auto u32 = [](int64_t v) { return static_cast<uint32_t>(v); };
  const Philox4x32 r = philox4x32_10(u32(p[0]), u32(p[1]), u32(p[2]), u32(p[3]), u32(p[4]), u32(p[5]));
  return at::tensor({int64_t(r.c0), int64_t(r.c1), int64_t(r.c2), int64_t(r.c3)}, words.options());
}

at::Tensor philox_randint_cpu(const at::Tensor& seed, int64_t offset, int64_t count) {
  const uint64_t s = philox::check_randint(seed, offset, count);
  auto out = at::empty({count}, seed.options().dtype(at::kLong));
  int64_t* o = out.data_ptr<int64_t>();
  for (int64_t i = 0; i < count; ++i) o[i] = philox_randint(s, static_cast<uint32_t>(offset + i));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(msa_fast, CPU, m) {
  m.impl("philox_block", &philox_block_cpu);
  m.impl("philox_randint", &philox_randint_cpu);
}

}  // namespace msa_fast
