"""Build checks of the native extension ``msa_fast._C`` that need no GPU: when it was built with CUDA,
every op with a CPU kernel also has a CUDA kernel registered (compiled, linked and loaded), and the
CPU kernels are built with OpenMP."""

import pytest
import torch

import msa_fast._C  # noqa: F401  (registers the ops; a build test must fail loudly if it is missing)

# Every op of csrc/msa_fast.cpp that has a CPU kernel (csrc/cpu/) and a CUDA twin (csrc/cuda/).
OPS_WITH_CUDA_KERNELS = [
    "philox_block",
    "philox_randint",
    "cutoff",
    "hard_concrete",
    "hard_concrete_backward",
    "hard_concrete_l0",
    "hard_concrete_l0_backward",
]


def _build_info() -> dict:
    return dict(item.split("=", 1) for item in torch.ops.msa_fast.build_info().split(";"))


@pytest.mark.parametrize("op", OPS_WITH_CUDA_KERNELS)
def test_cuda_kernel_registered(op):
    if _build_info().get("cuda") != "1":
        pytest.skip(
            "msa_fast._C was built without CUDA kernels (build_info cuda=0: a CPU build of torch, "
            "no nvcc, or MSA_FAST_BUILD_CUDA=0)"
        )
    name = f"msa_fast::{op}"
    assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CPU"), f"{name} has no CPU kernel"
    assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA"), (
        f"{name} has a CPU kernel but no CUDA kernel although build_info says cuda=1"
    )


def test_openmp_enabled():
    info = _build_info()
    assert info.get("openmp") == "1", f"CPU kernels built without OpenMP: build_info = {info}"
