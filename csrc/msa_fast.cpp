// The one place that lists every msa_fast op schema (ops.md). CPU kernels register in csrc/cpu/,
// CUDA kernels in csrc/cuda/; autograd, fake tensors and Triton launchers live in msa_fast/ops/.
#include <Python.h>
#include <torch/library.h>

#include <string>

#include "common/philox.h"

extern "C" {
// A bare module: importing msa_fast._C loads this library and runs the static registrations below,
// without pybind11, so the extension can be built against the limited (abi3) Python API.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace msa_fast {

std::string build_info() {
  std::string info = "cxx=" + std::to_string(__cplusplus);
#ifdef MSA_FAST_HAS_OPENMP
  info += ";openmp=1";
#else
  info += ";openmp=0";
#endif
#ifdef MSA_FAST_WITH_CUDA
  info += ";cuda=1";
#else
  info += ";cuda=0";
#endif
  return info;
}

TORCH_LIBRARY(msa_fast, m) {
  m.def("build_info() -> str", &build_info);

  // Philox4x32-10 (ops.md §0.8), exposed for known-answer and cross-backend tests.
  // philox_block: int64 [6] = (c0, c1, c2, c3, k0, k1) -> int64 [4] output words.
  m.def("philox_block(Tensor words) -> Tensor");
  // philox_randint: r for offsets offset .. offset + count - 1 (the tl.randint stream of `seed`).
  m.def("philox_randint(Tensor seed, int offset, int count) -> Tensor");

  // Cutoff augmentation (ops.md §9). seed is a 0-dim int64 CPU tensor so compiled graphs don't
  // specialise on it. Backward is the same op applied to the upstream gradient.
  m.def(
      "cutoff(Tensor x, float ratio, str mode, Tensor seed, Tensor? lengths, str padding_side) "
      "-> Tensor");

  // Hard Concrete gates (ops.md §7). Returns (z, s_bar); s_bar is empty unless with_s_bar.
  // `ste` ('clamp' or 'sbar') only shapes the gradient; the forward takes it so that the registered
  // autograd sees it among the inputs.
  m.def(
      "hard_concrete(Tensor log_alpha, Tensor? u, Tensor? seed, float beta, float gamma, "
      "float zeta, float? threshold, bool training, float eps, str ste, bool with_s_bar) -> (Tensor, Tensor)");
  m.def(
      "hard_concrete_backward(Tensor grad_z, Tensor? grad_s_bar, Tensor log_alpha, Tensor? u, "
      "Tensor? seed, float beta, float gamma, float zeta, float? threshold, bool training, "
      "float eps, str ste) -> Tensor");
  // Supervised contrastive loss per anchor (ops.md §2), on the fused pairwise engine (§1): per-row
  // (loss, LSE over all others, Σ or LSE over positives, positive count), fp32 [N] (fp64 for fp64 z). The public op
  // applies the PML batch gate and reduction; backward takes the upstream weight of each row.
  m.def("supcon_rows(Tensor z, Tensor labels, float temperature, bool variant_in, bool normalize) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def("supcon_rows_backward(Tensor grad_rows, Tensor z, Tensor labels, Tensor lse_all, Tensor pos_stat, "
        "Tensor n_pos, float temperature, bool variant_in, bool normalize) -> Tensor");

  m.def("hard_concrete_l0(Tensor log_alpha, float beta, float gamma, float zeta, float eps) -> Tensor");
  m.def(
      "hard_concrete_l0_backward(Tensor grad, Tensor log_alpha, float beta, float gamma, "
      "float zeta, float eps) -> Tensor");
}

}  // namespace msa_fast
