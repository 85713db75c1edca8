// CUDA kernel of dropout (spec: msa_fast/ops/dropout.py): the same keep mask as the CPU kernel (csrc/common/dropout.h),
// bit for bit. One thread per Philox block: it evaluates the ten rounds once and serves the block's four
// consecutive elements, grid-stride over the tensor. Math in fp32
// (fp64 for fp64), dropped elements stored as 0 by selection. No mask is stored: backward reruns the op
// on the upstream gradient with the same seed.
//
// Lean includes on purpose: nvcc parses every header once per target architecture.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "common/dropout.h"
#include "common/dropout_args.h"

namespace msa_fast {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    dropout_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ out, int64_t numel, uint64_t seed,
                   float p, acc_t scale) {
  const int64_t blocks = (numel + dropout::kWordsPerBlock - 1) / dropout::kWordsPerBlock;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; n < blocks; n += stride) {
    const Philox4x32 r = dropout::block(seed, static_cast<uint64_t>(n));
    const uint32_t words[4] = {r.c0, r.c1, r.c2, r.c3};
    const int64_t e0 = n * dropout::kWordsPerBlock;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int64_t e = e0 + k;
      if (e < numel) {
        const acc_t v = static_cast<acc_t>(x[e]) * scale;
        out[e] = static_cast<scalar_t>(dropout::keep(words[k], p) ? v : acc_t(0));
      }
    }
  }
}

at::Tensor dropout_cuda(const at::Tensor& x_in, double p, const at::Tensor& seed) {
  const dropout::Args a = dropout::check_args(x_in, p, seed);
  TORCH_CHECK_VALUE(x_in.is_cuda(), "msa_fast.ops.dropout: x is on ", x_in.device(), " but the CUDA kernel was called");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t numel = x.numel();
  if (numel == 0) return out;
  const int64_t blocks = (numel + dropout::kWordsPerBlock - 1) / dropout::kWordsPerBlock;
  // Enough resident blocks to fill any current GPU; the grid-stride loop covers the rest.
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>((blocks + kThreads - 1) / kThreads, 65535));
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "msa_fast_dropout_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dropout_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), numel, a.seed, static_cast<float>(p),
        dropout::keep_scale<acc_t>(p));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(msa_fast, CUDA, m) { m.impl("dropout", &dropout_cuda); }

}  // namespace msa_fast
