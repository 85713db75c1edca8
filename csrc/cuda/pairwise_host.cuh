// Host side of the CUDA contrastive kernels: device checks, the current stream, kernel launches, the
// dtype switch and the finalize launcher shared by supcon.cu, info_nce.cu, uniform.cu, hycon.cu and
// mgcl.cu. Under MSA_CUDA_EMULATION (tests only) the same glue runs on CPU tensors and launches the
// kernels through the host emulation of pairwise_tiles.cuh.
#pragma once

#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#if !defined(MSA_CUDA_EMULATION)
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <algorithm>
#include <cstdint>
#include <utility>

#include "cuda/pairwise_tiles.cuh"

namespace msa_fast {
namespace tiles {
namespace {

#if defined(MSA_CUDA_EMULATION)
constexpr const char* kDeviceName = "CPU (CUDA emulation)";
inline bool on_kernel_device(const at::Tensor& t) { return t.is_cpu(); }
// No device to select; launches run synchronously on the host.
struct Stream {
  explicit Stream(const at::Tensor&) {}
  cudaStream_t get() const { return nullptr; }
  void check() const {}
};
#else
constexpr const char* kDeviceName = "CUDA";
inline bool on_kernel_device(const at::Tensor& t) { return t.is_cuda(); }
// The tensor's device made current, and its current stream (every launch goes there).
struct Stream {
  c10::cuda::CUDAGuard guard;
  cudaStream_t stream;
  explicit Stream(const at::Tensor& t) : guard(t.device()), stream(at::cuda::getCurrentCUDAStream()) {}
  cudaStream_t get() const { return stream; }
  void check() const { C10_CUDA_KERNEL_LAUNCH_CHECK(); }
};
#endif

// Every tensor argument on the kernels' device (the dispatcher routes on the first one only).
inline void check_device(const char* op, std::initializer_list<std::pair<const char*, const at::Tensor*>> tensors) {
  for (const auto& [name, t] : tensors)
    TORCH_CHECK_VALUE(on_kernel_device(*t), op, ": ", name, " is on ", t->device(), " but the ", kDeviceName,
                      " kernel was called (all arguments must be on one device)");
}

template <typename... P, typename... A>
void launch(void (*kernel)(P...), dim3 grid, const Stream& stream, A... args) {
  if (grid.x == 0 || grid.y == 0) return;
#if defined(MSA_CUDA_EMULATION)
  msa_emu::launch(grid, dim3(kThreads), [&] { kernel(args...); });
#else
  kernel<<<grid, kThreads, 0, stream.get()>>>(args...);
#endif
  stream.check();
}

inline DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return kF32;
    case at::kHalf: return kF16;
    case at::kBFloat16: return kBF16;
    case at::kDouble: return kF64;
    default: TORCH_CHECK_TYPE(false, "msa_fast: unsupported feature dtype ", t.scalar_type());
  }
  return kF32;
}

inline const char* bytes(const at::Tensor& t) { return static_cast<const char*>(t.const_data_ptr()); }

// Calls fn(T{}) with the compute type: double for fp64 features, float otherwise (ops.md §0.2).
template <typename Fn>
void with_compute_type(const at::Tensor& x, Fn&& fn) {
  if (x.scalar_type() == at::kDouble) fn(double{});
  else fn(float{});
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Grid of a gradient launch: owner tiles × feature chunks of kDC columns.
inline dim3 grad_grid(int64_t tiles, int64_t D) {
  TORCH_CHECK(tiles <= std::numeric_limits<int32_t>::max() && ceil_div(D, kDC) <= 65535,
              "msa_fast: problem too large for one launch (", tiles, " row tiles, D = ", D, ")");
  return dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(ceil_div(D, kDC)));
}
inline dim3 forward_grid(int64_t tiles) {
  TORCH_CHECK(tiles <= std::numeric_limits<int32_t>::max(), "msa_fast: problem too large for one launch (", tiles,
              " row tiles)");
  return dim3(static_cast<unsigned>(tiles));
}

// dx (input dtype, contiguous like x) from the accumulated du and the per-row extras (finalize_kernel).
template <typename T>
at::Tensor finalize(const Stream& stream, const at::Tensor& x, bool normalize, const at::Tensor* acc1,
                    const at::Tensor* acc2, T acc_scale, const at::Tensor* self_coef = nullptr, T self_scale = T(0),
                    const at::Tensor* partner = nullptr, const at::Tensor* partner_coef = nullptr,
                    T partner_scale = T(0)) {
  at::Tensor out = at::empty(x.sizes(), x.options());
  FinalizeArgs<T> f{};
  f.x = bytes(x);
  f.partner = partner != nullptr ? bytes(*partner) : nullptr;
  f.out = static_cast<char*>(out.data_ptr());
  f.n = x.size(0);
  f.D = x.size(1);
  f.row_bytes = x.size(1) * static_cast<int64_t>(x.element_size());
  f.dt = dtype_of(x);
  f.normalize = normalize;
  f.acc1 = acc1 != nullptr ? acc1->const_data_ptr<T>() : nullptr;
  f.acc2 = acc2 != nullptr ? acc2->const_data_ptr<T>() : nullptr;
  f.acc_scale = acc_scale;
  f.self_coef = self_coef != nullptr ? self_coef->const_data_ptr<T>() : nullptr;
  f.self_scale = self_scale;
  f.partner_coef = partner_coef != nullptr ? partner_coef->const_data_ptr<T>() : nullptr;
  f.partner_scale = partner_scale;
  launch(&finalize_kernel<T>, dim3(static_cast<unsigned>(ceil_div(f.n, kFinalizeRows))), stream, f);
  return out;
}

}  // namespace
}  // namespace tiles
}  // namespace msa_fast
