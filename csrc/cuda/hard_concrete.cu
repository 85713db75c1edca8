// CUDA kernels of hard_concrete and hard_concrete_l0 (ops.md §7): grid-stride elementwise passes over
// the same per-element math as the CPU kernels (csrc/common/hard_concrete.h), in fp32 for
// fp32/fp16/bf16 (at::opmath_type) and fp64 for fp64. Noise is the given u or the Philox uniform of
// (seed, flat index), regenerated in backward instead of stored.
//
// Lean includes on purpose: nvcc parses every header once per target architecture.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <string>

#include "common/hard_concrete.h"
#include "common/hard_concrete_args.h"

namespace msa_fast {
namespace {

using namespace hard_concrete;

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;  // grid-stride beyond this

unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>(std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks));
}

void check_on_cuda(const at::Tensor& log_alpha) {
  TORCH_CHECK_VALUE(log_alpha.is_cuda(), "msa_fast.ops.hard_concrete: log_alpha is on ", log_alpha.device(),
                    " but another argument is on CUDA");
}

#define MSA_GRID_STRIDE_LOOP(i, n)                                                              \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n);        \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

// u == nullptr: noise from Philox (seed, i). s_bar == nullptr: s̄ not requested.
template <typename scalar_t, typename T>
__global__ void forward_kernel(const scalar_t* __restrict__ log_alpha, const scalar_t* __restrict__ u,
                               uint64_t seed, Params<T> p, scalar_t* __restrict__ z,
                               scalar_t* __restrict__ s_bar, int64_t n) {
  MSA_GRID_STRIDE_LOOP(i, n) {
    T sb;
    z[i] = static_cast<scalar_t>(
        element_forward(static_cast<T>(log_alpha[i]), u != nullptr, u ? static_cast<T>(u[i]) : T(0), seed, i, p, &sb));
    if (s_bar) s_bar[i] = static_cast<scalar_t>(sb);
  }
}

template <typename scalar_t, typename T>
__global__ void backward_kernel(const scalar_t* __restrict__ grad_z, const scalar_t* __restrict__ grad_s_bar,
                                const scalar_t* __restrict__ log_alpha, const scalar_t* __restrict__ u,
                                uint64_t seed, Params<T> p, scalar_t* __restrict__ grad, int64_t n) {
  MSA_GRID_STRIDE_LOOP(i, n) {
    grad[i] = static_cast<scalar_t>(element_backward(
        static_cast<T>(grad_z[i]), grad_s_bar ? static_cast<T>(grad_s_bar[i]) : T(0),
        static_cast<T>(log_alpha[i]), u != nullptr, u ? static_cast<T>(u[i]) : T(0), seed, i, p));
  }
}

template <typename scalar_t, typename T>
__global__ void l0_forward_kernel(const scalar_t* __restrict__ log_alpha, Params<T> p, scalar_t* __restrict__ out,
                                  int64_t n) {
  MSA_GRID_STRIDE_LOOP(i, n) { out[i] = static_cast<scalar_t>(l0_forward(static_cast<T>(log_alpha[i]), p)); }
}

template <typename scalar_t, typename T>
__global__ void l0_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ log_alpha,
                                   Params<T> p, scalar_t* __restrict__ out, int64_t n) {
  MSA_GRID_STRIDE_LOOP(i, n) {
    out[i] = static_cast<scalar_t>(l0_backward(static_cast<T>(grad[i]), static_cast<T>(log_alpha[i]), p));
  }
}

std::tuple<at::Tensor, at::Tensor> hard_concrete_cuda(const at::Tensor& log_alpha_in,
                                                      const c10::optional<at::Tensor>& u_in,
                                                      const c10::optional<at::Tensor>& seed, double beta,
                                                      double gamma, double zeta, c10::optional<double> threshold,
                                                      bool training, double eps, c10::string_view ste,
                                                      bool with_s_bar) {
  check_log_alpha(log_alpha_in);
  parse_ste(std::string(ste));  // only shapes the gradient; validated so both directions agree
  check_on_cuda(log_alpha_in);
  const c10::cuda::CUDAGuard guard(log_alpha_in.device());
  const at::Tensor la = log_alpha_in.contiguous();
  const at::Tensor u = training ? noise_tensor(la, u_in) : at::Tensor();
  const uint64_t s = seed_value(seed, training && !u.defined());
  at::Tensor z = at::empty_like(la, at::MemoryFormat::Contiguous);
  at::Tensor s_bar = with_s_bar ? at::empty_like(la, at::MemoryFormat::Contiguous) : at::empty({0}, la.options());
  const int64_t n = la.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, la.scalar_type(), "msa_fast_hard_concrete_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    const Params<T> p = make_params<T>(beta, gamma, zeta, threshold, training, eps, false);
    forward_kernel<scalar_t, T><<<blocks_for(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        la.data_ptr<scalar_t>(), u.defined() ? u.data_ptr<scalar_t>() : nullptr, s, p, z.data_ptr<scalar_t>(),
        with_s_bar ? s_bar.data_ptr<scalar_t>() : nullptr, n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {z, s_bar};
}

at::Tensor hard_concrete_backward_cuda(const at::Tensor& grad_z_in, const c10::optional<at::Tensor>& grad_s_bar_in,
                                       const at::Tensor& log_alpha_in, const c10::optional<at::Tensor>& u_in,
                                       const c10::optional<at::Tensor>& seed, double beta, double gamma, double zeta,
                                       c10::optional<double> threshold, bool training, double eps,
                                       c10::string_view ste) {
  check_log_alpha(log_alpha_in);
  check_on_cuda(log_alpha_in);
  const bool ste_sbar = parse_ste(std::string(ste));
  const c10::cuda::CUDAGuard guard(log_alpha_in.device());
  const at::Tensor la = log_alpha_in.contiguous();
  const at::Tensor gz = grad_tensor(grad_z_in, la, "grad_z");
  const bool has_gsb = grad_s_bar_in.has_value() && grad_s_bar_in->numel() > 0;
  const at::Tensor gsb = has_gsb ? grad_tensor(*grad_s_bar_in, la, "grad_s_bar") : at::Tensor();
  const at::Tensor u = training ? noise_tensor(la, u_in) : at::Tensor();
  const uint64_t s = seed_value(seed, training && !u.defined());
  at::Tensor grad = at::empty_like(la, at::MemoryFormat::Contiguous);
  const int64_t n = la.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, la.scalar_type(), "msa_fast_hard_concrete_bwd_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    const Params<T> p = make_params<T>(beta, gamma, zeta, threshold, training, eps, ste_sbar);
    backward_kernel<scalar_t, T><<<blocks_for(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        gz.data_ptr<scalar_t>(), has_gsb ? gsb.data_ptr<scalar_t>() : nullptr, la.data_ptr<scalar_t>(),
        u.defined() ? u.data_ptr<scalar_t>() : nullptr, s, p, grad.data_ptr<scalar_t>(), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad;
}

at::Tensor hard_concrete_l0_cuda(const at::Tensor& log_alpha_in, double beta, double gamma, double zeta, double eps) {
  check_log_alpha(log_alpha_in);
  check_on_cuda(log_alpha_in);
  const c10::cuda::CUDAGuard guard(log_alpha_in.device());
  const at::Tensor la = log_alpha_in.contiguous();
  at::Tensor out = at::empty_like(la, at::MemoryFormat::Contiguous);
  const int64_t n = la.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, la.scalar_type(), "msa_fast_hard_concrete_l0_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    const Params<T> p = make_params<T>(beta, gamma, zeta, c10::nullopt, true, eps, false);
    l0_forward_kernel<scalar_t, T><<<blocks_for(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        la.data_ptr<scalar_t>(), p, out.data_ptr<scalar_t>(), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor hard_concrete_l0_backward_cuda(const at::Tensor& grad_in, const at::Tensor& log_alpha_in, double beta,
                                          double gamma, double zeta, double eps) {
  check_log_alpha(log_alpha_in);
  check_on_cuda(log_alpha_in);
  const c10::cuda::CUDAGuard guard(log_alpha_in.device());
  const at::Tensor la = log_alpha_in.contiguous();
  const at::Tensor g = grad_tensor(grad_in, la, "grad");
  at::Tensor out = at::empty_like(la, at::MemoryFormat::Contiguous);
  const int64_t n = la.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, la.scalar_type(), "msa_fast_hard_concrete_l0_bwd_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    const Params<T> p = make_params<T>(beta, gamma, zeta, c10::nullopt, true, eps, false);
    l0_backward_kernel<scalar_t, T><<<blocks_for(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        g.data_ptr<scalar_t>(), la.data_ptr<scalar_t>(), p, out.data_ptr<scalar_t>(), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(msa_fast, CUDA, m) {
  m.impl("hard_concrete", &hard_concrete_cuda);
  m.impl("hard_concrete_backward", &hard_concrete_backward_cuda);
  m.impl("hard_concrete_l0", &hard_concrete_l0_cuda);
  m.impl("hard_concrete_l0_backward", &hard_concrete_l0_backward_cuda);
}

}  // namespace msa_fast
