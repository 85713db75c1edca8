// Per-element math of the Hard Concrete gate (Louizos et al. 2018; M3SA threshold mode; ops.md §7),
// shared by csrc/cpu/hard_concrete.cpp and csrc/cuda/hard_concrete.cu. T is the compute type:
// float for fp32/fp16/bf16 inputs, double for fp64.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/philox.h"

namespace msa_fast {
namespace hard_concrete {

template <typename T>
struct Params {
  T beta, gamma, zeta, threshold, eps;
  bool has_threshold, training, ste_sbar;
};

// Type-exact transcendental calls: float math for float, double for double, on host and device.
MSA_HD float exp_(float x) { return ::expf(x); }
MSA_HD double exp_(double x) { return ::exp(x); }
MSA_HD float log_(float x) { return ::logf(x); }
MSA_HD double log_(double x) { return ::log(x); }

template <typename T>
MSA_HD T sigmoid(T x) {
  return T(1) / (T(1) + exp_(-x));
}

template <typename T>
MSA_HD T clamp(T v, T lo, T hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

// The noise of element `index`: the given u, or the Philox uniform of (seed, index), then
// clamped to [eps, 1 − eps] as the original U(eps, 1 − eps) sampling.
template <typename T>
MSA_HD T noise(bool has_u, T u, uint64_t seed, int64_t index, T eps) {
  if (!has_u) u = static_cast<T>(philox_uniform(philox_randint(seed, static_cast<uint32_t>(index))));
  return clamp(u, eps, T(1) - eps);
}

// s of the gate: σ((log u − log(1 − u) + log α)/β) in training, σ(log α) in eval.
template <typename T>
MSA_HD T gate_s(T log_alpha, T u, const Params<T>& p) {
  if (!p.training) return sigmoid(log_alpha);
  return sigmoid((log_(u) - log_(T(1) - u) + log_alpha) / p.beta);
}

// s̄ = s·(ζ − γ) + γ (the stretch).
template <typename T>
MSA_HD T stretch(T s, const Params<T>& p) {
  return s * (p.zeta - p.gamma) + p.gamma;
}

// z: clamp(s̄, 0, 1), or 1[s̄ > t] in the M3SA threshold mode.
template <typename T>
MSA_HD T gate_z(T s_bar, const Params<T>& p) {
  if (p.has_threshold) return s_bar > p.threshold ? T(1) : T(0);
  return clamp(s_bar, T(0), T(1));
}

// dL/dlog α from the upstream gradients of z and s̄. h = ds̄/dlog α = (ζ − γ)·s(1 − s)/β in training
// (no 1/β in eval, where s = σ(log α)). z passes h where 0 ≤ s̄ ≤ 1 (torch.clamp's inclusive rule),
// and everywhere for the straight-through 'sbar' estimator in threshold mode.
template <typename T>
MSA_HD T grad_log_alpha(T grad_z, T grad_s_bar, T s, const Params<T>& p) {
  T h = (p.zeta - p.gamma) * s * (T(1) - s);
  if (p.training) h /= p.beta;
  const T s_bar = stretch(s, p);
  const bool passes = (p.has_threshold && p.ste_sbar) || (s_bar >= T(0) && s_bar <= T(1));
  return (passes ? grad_z * h : T(0)) + grad_s_bar * h;
}

// Probability that a gate is non-zero, σ(log α − β·log(−γ/ζ)), clamped to [eps, 1 − eps].
template <typename T>
MSA_HD T l0_pre(T log_alpha, const Params<T>& p) {
  return sigmoid(log_alpha - p.beta * log_(-p.gamma / p.zeta));
}

template <typename T>
MSA_HD T l0_grad(T grad, T pre, const Params<T>& p) {
  return (pre >= p.eps && pre <= T(1) - p.eps) ? grad * pre * (T(1) - pre) : T(0);
}

// ---- One element of each op, as the CPU and CUDA kernels run it. ----
// `u` is the given noise of the element (ignored unless has_u), `index` its flat index (the Philox
// offset when the noise is generated). Noise is only used in training.

// s of element `index`.
template <typename T>
MSA_HD T element_s(T log_alpha, bool has_u, T u, uint64_t seed, int64_t index, const Params<T>& p) {
  const T n = p.training ? noise(has_u, u, seed, index, p.eps) : T(0);
  return gate_s(log_alpha, n, p);
}

// Forward: returns z, stores s̄.
template <typename T>
MSA_HD T element_forward(T log_alpha, bool has_u, T u, uint64_t seed, int64_t index, const Params<T>& p, T* s_bar) {
  *s_bar = stretch(element_s(log_alpha, has_u, u, seed, index, p), p);
  return gate_z(*s_bar, p);
}

// Backward: dL/dlog α, the noise regenerated exactly as in the forward.
template <typename T>
MSA_HD T element_backward(T grad_z, T grad_s_bar, T log_alpha, bool has_u, T u, uint64_t seed, int64_t index,
                          const Params<T>& p) {
  return grad_log_alpha(grad_z, grad_s_bar, element_s(log_alpha, has_u, u, seed, index, p), p);
}

// hard_concrete_l0 forward (p clamped to [eps, 1 − eps]) and backward.
template <typename T>
MSA_HD T l0_forward(T log_alpha, const Params<T>& p) {
  return clamp(l0_pre(log_alpha, p), p.eps, T(1) - p.eps);
}

template <typename T>
MSA_HD T l0_backward(T grad, T log_alpha, const Params<T>& p) {
  return l0_grad(grad, l0_pre(log_alpha, p), p);
}

}  // namespace hard_concrete
}  // namespace msa_fast
