"""Build checks of the native extension ``msa_fast._C`` that need no GPU: when it was built with CUDA,
every op with a CPU kernel also has a CUDA kernel registered (compiled, linked and loaded), the dispatch
layer offers the ``cuda`` backend for the ops that have one, a forced ``cuda`` backend on CPU tensors is a
clear error, and the CPU kernels are built with OpenMP. (The contrastive CUDA kernels are *run* without a
GPU in test_cuda_emulated.py.)"""

import pytest
import torch

import msa_fast._C  # noqa: F401  (registers the ops; a build test must fail loudly if it is missing)
import msa_fast.ops as ops
from msa_fast.ops import _dispatch

# The fused contrastive row ops (csrc/cpu/ and csrc/cuda/{supcon,info_nce,uniform,hycon,mgcl}.cu).
CONTRASTIVE_OPS = [
    "supcon_rows",
    "supcon_rows_backward",
    "info_nce_rows",
    "info_nce_rows_backward",
    "uniform_rows",
    "uniform_rows_backward",
    "hycon_rows",
    "hycon_rows_backward",
    "mgcl_rows",
    "mgcl_rows_backward",
]

# Every op of csrc/msa_fast.cpp that has a CPU kernel (csrc/cpu/) and a CUDA twin (csrc/cuda/).
OPS_WITH_CUDA_KERNELS = [
    "philox_block",
    "philox_randint",
    "cutoff",
    "hard_concrete",
    "hard_concrete_backward",
    "hard_concrete_l0",
    "hard_concrete_l0_backward",
    *CONTRASTIVE_OPS,
]

# native op behind each public contrastive loss (the name the dispatch layer checks for a kernel)
PUBLIC_NATIVE = {
    "supcon_loss": "supcon_rows",
    "info_nce": "info_nce_rows",
    "uniform_loss": "uniform_rows",
    "hycon_loss": "hycon_rows",
    "mgcl_contrastive_loss": "mgcl_rows",
}


def _build_info() -> dict:
    return dict(item.split("=", 1) for item in torch.ops.msa_fast.build_info().split(";"))


def _require_cuda_build():
    if _build_info().get("cuda") != "1":
        pytest.skip(
            "msa_fast._C was built without CUDA kernels (build_info cuda=0: a CPU build of torch, "
            "no nvcc, or MSA_FAST_BUILD_CUDA=0)"
        )


@pytest.mark.parametrize("op", OPS_WITH_CUDA_KERNELS)
def test_cuda_kernel_registered(op):
    _require_cuda_build()
    name = f"msa_fast::{op}"
    assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CPU"), f"{name} has no CPU kernel"
    assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA"), (
        f"{name} has a CPU kernel but no CUDA kernel although build_info says cuda=1"
    )


@pytest.mark.parametrize("public, native", sorted(PUBLIC_NATIVE.items()))
def test_dispatch_offers_cuda_for_contrastive_ops(public, native):
    """On a CUDA build the dispatch layer finds a CUDA kernel for each contrastive op, as for cutoff: a
    forced backend='cuda' on CUDA tensors runs it, and 'cuda' is listed for CUDA devices."""
    _require_cuda_build()
    cuda = torch.device("cuda")
    assert _dispatch.cuda_kernels_built()
    assert _dispatch._why_not("cuda", cuda, "cutoff") is None
    assert _dispatch._why_not("cuda", cuda, native) is None, _dispatch._why_not("cuda", cuda, native)
    assert "cuda" in ops.available_backends("cuda")


def _public_call(public, device="cpu", **kw):
    torch.manual_seed(0)
    if public == "supcon_loss":
        return ops.supcon_loss(torch.randn(8, 4, device=device), torch.randint(0, 2, (8,), device=device), **kw)
    if public == "info_nce":
        return ops.info_nce(torch.randn(8, 4, device=device), torch.randn(8, 4, device=device), **kw)
    if public == "uniform_loss":
        return ops.uniform_loss(torch.randn(8, 4, device=device), torch.randn(8, 4, device=device), **kw)
    if public == "hycon_loss":
        x = [torch.randn(6, 4, device=device) for _ in range(3)]
        return ops.hycon_loss(*x, torch.randn(6, device=device), **kw)
    feats = [torch.randn(5, 4, device=device) for _ in range(3)]
    return ops.mgcl_contrastive_loss(tuple(feats), tuple(f.clone() for f in feats), torch.randn(5, device=device), **kw)


@pytest.mark.parametrize("public", sorted(PUBLIC_NATIVE))
def test_forced_cuda_on_cpu_tensors_is_a_clear_error(public):
    with pytest.raises(RuntimeError, match=rf"msa_fast\.ops\.{public}: backend 'cuda' is not available: the cuda "
                                           r"backend runs on CUDA tensors, got a tensor on cpu"):
        _public_call(public, backend="cuda")


def test_openmp_enabled():
    info = _build_info()
    assert info.get("openmp") == "1", f"CPU kernels built without OpenMP: build_info = {info}"
