// C++ CPU kernels of hard_concrete and hard_concrete_l0 (ops.md §7): one fused elementwise pass,
// noise regenerated from (seed, flat index) in backward instead of being stored.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "common/hard_concrete.h"
#include "common/hard_concrete_args.h"

namespace msa_fast {
namespace {

using namespace hard_concrete;
constexpr int64_t kGrain = 4096;

std::tuple<at::Tensor, at::Tensor> hard_concrete_cpu(const at::Tensor& log_alpha_in, const c10::optional<at::Tensor>& u_in,
                                                     const c10::optional<at::Tensor>& seed, double beta, double gamma,
                                                     double zeta, c10::optional<double> threshold, bool training,
                                                     double eps, c10::string_view ste, bool with_s_bar) {
  check_log_alpha(log_alpha_in);
  parse_ste(std::string(ste));
  const at::Tensor la = log_alpha_in.contiguous();
  const at::Tensor u = training ? noise_tensor(la, u_in) : at::Tensor();
  const uint64_t s = seed_value(seed, training && !u.defined());
  at::Tensor z = at::empty_like(la, at::MemoryFormat::Contiguous);
  at::Tensor s_bar = with_s_bar ? at::empty_like(la, at::MemoryFormat::Contiguous) : at::empty({0}, la.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, la.scalar_type(), "msa_fast_hard_concrete_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const Params<T> p = make_params<T>(beta, gamma, zeta, threshold, training, eps, false);
    const scalar_t* lp = la.data_ptr<scalar_t>();
    const scalar_t* up = u.defined() ? u.data_ptr<scalar_t>() : nullptr;
    scalar_t* zp = z.data_ptr<scalar_t>();
    scalar_t* sp = with_s_bar ? s_bar.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, la.numel(), kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        T sb;
        zp[i] = static_cast<scalar_t>(element_forward(T(lp[i]), up != nullptr, up ? T(up[i]) : T(0), s, i, p, &sb));
        if (sp) sp[i] = static_cast<scalar_t>(sb);
      }
    });
  });
  return {z, s_bar};
}

at::Tensor hard_concrete_backward_cpu(const at::Tensor& grad_z_in, const c10::optional<at::Tensor>& grad_s_bar_in,
                                      const at::Tensor& log_alpha_in, const c10::optional<at::Tensor>& u_in,
                                      const c10::optional<at::Tensor>& seed, double beta, double gamma, double zeta,
                                      c10::optional<double> threshold, bool training, double eps,
                                      c10::string_view ste) {
  check_log_alpha(log_alpha_in);
  const bool ste_sbar = parse_ste(std::string(ste));
  const at::Tensor la = log_alpha_in.contiguous();
  const at::Tensor gz = grad_tensor(grad_z_in, la, "grad_z");
  const bool has_gsb = grad_s_bar_in.has_value() && grad_s_bar_in->numel() > 0;
  const at::Tensor gsb = has_gsb ? grad_tensor(*grad_s_bar_in, la, "grad_s_bar") : at::Tensor();
  const at::Tensor u = training ? noise_tensor(la, u_in) : at::Tensor();
  const uint64_t s = seed_value(seed, training && !u.defined());
  at::Tensor grad = at::empty_like(la, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, la.scalar_type(), "msa_fast_hard_concrete_bwd_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const Params<T> p = make_params<T>(beta, gamma, zeta, threshold, training, eps, ste_sbar);
    const scalar_t* lp = la.data_ptr<scalar_t>();
    const scalar_t* up = u.defined() ? u.data_ptr<scalar_t>() : nullptr;
    const scalar_t* gzp = gz.data_ptr<scalar_t>();
    const scalar_t* gsp = has_gsb ? gsb.data_ptr<scalar_t>() : nullptr;
    scalar_t* gp = grad.data_ptr<scalar_t>();
    at::parallel_for(0, la.numel(), kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        gp[i] = static_cast<scalar_t>(element_backward(T(gzp[i]), gsp ? T(gsp[i]) : T(0), T(lp[i]), up != nullptr,
                                                       up ? T(up[i]) : T(0), s, i, p));
      }
    });
  });
  return grad;
}

at::Tensor hard_concrete_l0_cpu(const at::Tensor& log_alpha_in, double beta, double gamma, double zeta, double eps) {
  check_log_alpha(log_alpha_in);
  const at::Tensor la = log_alpha_in.contiguous();
  at::Tensor out = at::empty_like(la, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, la.scalar_type(), "msa_fast_hard_concrete_l0_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const Params<T> p = make_params<T>(beta, gamma, zeta, c10::nullopt, true, eps, false);
    const scalar_t* lp = la.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, la.numel(), kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) op[i] = static_cast<scalar_t>(l0_forward(T(lp[i]), p));
    });
  });
  return out;
}

at::Tensor hard_concrete_l0_backward_cpu(const at::Tensor& grad_in, const at::Tensor& log_alpha_in, double beta,
                                         double gamma, double zeta, double eps) {
  check_log_alpha(log_alpha_in);
  const at::Tensor la = log_alpha_in.contiguous();
  const at::Tensor g = grad_tensor(grad_in, la, "grad");
  at::Tensor out = at::empty_like(la, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, la.scalar_type(), "msa_fast_hard_concrete_l0_bwd_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const Params<T> p = make_params<T>(beta, gamma, zeta, c10::nullopt, true, eps, false);
    const scalar_t* lp = la.data_ptr<scalar_t>();
    const scalar_t* gp = g.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, la.numel(), kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) op[i] = static_cast<scalar_t>(l0_backward(T(gp[i]), T(lp[i]), p));
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(msa_fast, CPU, m) {
  m.impl("hard_concrete", &hard_concrete_cpu);
  m.impl("hard_concrete_backward", &hard_concrete_backward_cpu);
  m.impl("hard_concrete_l0", &hard_concrete_l0_cpu);
  m.impl("hard_concrete_l0_backward", &hard_concrete_l0_backward_cpu);
}

}  // namespace msa_fast
