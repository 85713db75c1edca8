// The CUDA kernels of csrc/cuda/ (contrastive losses) compiled for the host emulation of
// cuda_emulation.h and registered as CPU kernels of the test-only namespace msa_fast_emu, with the
// schemas of the msa_fast ops (defined from Python, tests/ops/test_cuda_emulated.py). Loaded as a plain
// shared library (torch.ops.load_library), so it has no Python module init. The glue code of
// the .cu files runs unchanged on CPU tensors; only the launches and the device checks differ.
#define MSA_CUDA_EMULATION 1

#include "cuda/hycon.cu"
#include "cuda/info_nce.cu"
#include "cuda/mgcl.cu"
#include "cuda/supcon.cu"
#include "cuda/uniform.cu"

#include <torch/library.h>

TORCH_LIBRARY_IMPL(msa_fast_emu, CPU, m) {
  m.impl("supcon_rows", &msa_fast::supcon_cuda::supcon_rows_cuda);
  m.impl("supcon_rows_backward", &msa_fast::supcon_cuda::supcon_rows_backward_cuda);
  m.impl("info_nce_rows", &msa_fast::info_nce_cuda::info_nce_rows_cuda);
  m.impl("info_nce_rows_backward", &msa_fast::info_nce_cuda::info_nce_rows_backward_cuda);
  m.impl("uniform_rows", &msa_fast::uniform_cuda::uniform_rows_cuda);
  m.impl("uniform_rows_backward", &msa_fast::uniform_cuda::uniform_rows_backward_cuda);
  m.impl("hycon_rows", &msa_fast::hycon_cuda::hycon_rows_cuda);
  m.impl("hycon_rows_backward", &msa_fast::hycon_cuda::hycon_rows_backward_cuda);
  m.impl("mgcl_rows", &msa_fast::mgcl_cuda::mgcl_rows_cuda);
  m.impl("mgcl_rows_backward", &msa_fast::mgcl_cuda::mgcl_rows_backward_cuda);
}
