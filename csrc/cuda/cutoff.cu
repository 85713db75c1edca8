// CUDA kernel of cutoff (ops.md §9): the same cut sets as the CPU kernel (csrc/common/cutoff.h), bit
// for bit, and the same selection by bitwise AND (never multiplication), so NaN/Inf at a cut position
// become exactly 0 and everything else passes through unchanged. The kernels and their launch plan
// are in cutoff_kernels.cuh; this file checks arguments (csrc/common/cutoff_args.h, as the CPU kernel)
// and launches on the current stream. No mask is stored: backward reruns the op on the upstream
// gradient with the same seed.
//
// Lean includes on purpose: nvcc parses every header once per target architecture.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/ones.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <string>

#include "common/cutoff.h"
#include "common/cutoff_args.h"
#include "cuda/cutoff_kernels.cuh"

namespace msa_fast {
namespace {

using namespace cutoff;
using namespace cutoff::gpu;

template <typename bits_t, int N>
void launch(const at::Tensor& x, at::Tensor& out, Geometry g, const int64_t* lengths) {
  const Plan p = plan_launch(g, N);
  const auto stream = at::cuda::getCurrentCUDAStream();
  at::Tensor global_keep;
  if (p.global_mask) {
    global_keep = at::ones({g.B, g.mode == kFeature ? g.D : g.L}, x.options().dtype(at::kByte));
    if (p.mask_draws > 0) {
      draw_mask_kernel<<<static_cast<unsigned>(p.draw_blocks), kThreads, 0, stream>>>(
          global_keep.mutable_data_ptr<uint8_t>(), g, lengths, p.mask_draws);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }
  const auto* xp = reinterpret_cast<const Vec<bits_t, N>*>(x.const_data_ptr());
  auto* op = reinterpret_cast<Vec<bits_t, N>*>(out.mutable_data_ptr());
  const uint8_t* gk = p.global_mask ? global_keep.const_data_ptr<uint8_t>() : nullptr;
  const auto blocks = static_cast<unsigned>(p.stream_blocks);
  const auto shared = static_cast<size_t>(p.shared_bytes);
  if (g.mode == kFeature)
    cutoff_kernel<bits_t, N, true><<<blocks, kThreads, shared, stream>>>(xp, op, g, lengths, gk);
  else
    cutoff_kernel<bits_t, N, false><<<blocks, kThreads, shared, stream>>>(xp, op, g, lengths, gk);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// 16-byte vectors when every row starts 16-byte aligned, else one element per access.
template <typename bits_t>
void launch_bits(const at::Tensor& x, at::Tensor& out, const Geometry& g, const int64_t* lengths) {
  constexpr int kVec = 16 / sizeof(bits_t);
  const bool aligned = (g.D * static_cast<int64_t>(sizeof(bits_t))) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(x.const_data_ptr()) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(out.const_data_ptr()) % 16 == 0;
  if (aligned) launch<bits_t, kVec>(x, out, g, lengths);
  else launch<bits_t, 1>(x, out, g, lengths);
}

at::Tensor cutoff_cuda(const at::Tensor& x_in, double ratio, c10::string_view mode, const at::Tensor& seed,
                       const c10::optional<at::Tensor>& lengths, c10::string_view padding_side) {
  const Args a = check_args(x_in, ratio, std::string(mode), seed, lengths, std::string(padding_side));
  TORCH_CHECK_VALUE(x_in.is_cuda(), "msa_fast.ops.cutoff: x is on ", x_in.device(), " but another argument is on CUDA");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  // Lengths are validated in every mode (one small host read); no tensor means L for every sample.
  const at::Tensor len = lengths.has_value() ? checked_lengths(a, x, lengths) : at::Tensor();
  Geometry g{};
  g.B = a.B;
  g.L = a.L;
  g.D = a.D;
  g.seed = a.seed;
  g.feature_draws = a.feature_draws;
  g.ratio = ratio;
  g.mode = a.mode;
  g.left_padding = a.left_padding;
  const int64_t* lp = len.defined() ? len.const_data_ptr<int64_t>() : nullptr;
  switch (x.element_size()) {
    case 2: launch_bits<uint16_t>(x, out, g, lp); break;
    case 4: launch_bits<uint32_t>(x, out, g, lp); break;
    case 8: launch_bits<uint64_t>(x, out, g, lp); break;
    default: TORCH_CHECK(false, "msa_fast.ops.cutoff: unsupported element size ", x.element_size());
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(msa_fast, CUDA, m) { m.impl("cutoff", &cutoff_cuda); }

}  // namespace msa_fast
