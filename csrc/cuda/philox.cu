// CUDA kernels of the Philox test ops (ops.md §0.8): the same philox4x32_10 / philox_randint as the
// CPU kernels (csrc/common/philox.h), so cross-backend tests compare identical streams on the GPU.
//
// Lean includes on purpose: nvcc parses every header once per target architecture.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "common/philox.h"
#include "common/philox_args.h"

namespace msa_fast {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;  // grid-stride beyond this

__global__ void philox_block_kernel(const int64_t* __restrict__ w, int64_t* __restrict__ out) {
  const Philox4x32 r = philox4x32_10(static_cast<uint32_t>(w[0]), static_cast<uint32_t>(w[1]),
                                     static_cast<uint32_t>(w[2]), static_cast<uint32_t>(w[3]),
                                     static_cast<uint32_t>(w[4]), static_cast<uint32_t>(w[5]));
  out[0] = r.c0;
  out[1] = r.c1;
  out[2] = r.c2;
  out[3] = r.c3;
}

__global__ void philox_randint_kernel(uint64_t seed, int64_t offset, int64_t count, int64_t* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += stride)
    out[i] = philox_randint(seed, static_cast<uint32_t>(offset + i));
}

at::Tensor philox_block_cuda(const at::Tensor& words) {
  philox::check_block_words(words);
  const c10::cuda::CUDAGuard guard(words.device());
  const at::Tensor w = words.contiguous();
  at::Tensor out = at::empty({4}, words.options());
  philox_block_kernel<<<1, 1, 0, at::cuda::getCurrentCUDAStream()>>>(w.data_ptr<int64_t>(), out.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor philox_randint_cuda(const at::Tensor& seed, int64_t offset, int64_t count) {
  const uint64_t s = philox::check_randint(seed, offset, count);
  const c10::cuda::CUDAGuard guard(seed.device());
  at::Tensor out = at::empty({count}, seed.options().dtype(at::kLong));
  if (count == 0) return out;
  const int64_t blocks = std::min<int64_t>((count + kThreads - 1) / kThreads, kMaxBlocks);
  philox_randint_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      s, offset, count, out.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(msa_fast, CUDA, m) {
  m.impl("philox_block", &philox_block_cuda);
  m.impl("philox_randint", &philox_randint_cuda);
}

}  // namespace msa_fast
