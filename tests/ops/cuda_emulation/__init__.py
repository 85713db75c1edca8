"""Run the CUDA kernels of the contrastive losses without a GPU (tests only).

:func:`load` compiles ``emulated_ops.cpp`` — the csrc/cuda/{supcon,info_nce,uniform,hycon,mgcl}.cu files
built by the host compiler against ``cuda_emulation.h`` — with torch's JIT extension builder (cached in
torch's extension directory, rebuilt when a source changes) and registers them as the CPU kernels of the
namespace ``msa_fast_emu``, with the schemas of the ``msa_fast`` ops.

``plugin`` additionally puts them in place of the C++ CPU kernels of ``msa_fast``, so the whole op test
suite's ``cpp`` cases exercise the CUDA code::

    python -m pytest -p tests.ops.cuda_emulation.plugin tests/ops -k cpp
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parent
OPS = [
    f"{op}{suffix}"
    for op in ("supcon_rows", "info_nce_rows", "uniform_rows", "hycon_rows", "mgcl_rows")
    for suffix in ("", "_backward")
]

_LIB = None


def unavailable_reason() -> str | None:
    from msa_fast.ops import _dispatch

    if not _dispatch.native_built():
        return "msa_fast._C is not built (the emulated ops take the schemas of its ops)"
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        return "no host C++ compiler to build the CUDA emulation"
    return None


def load():
    """torch.ops.msa_fast_emu, built on first use."""
    global _LIB
    if _LIB is None:
        from torch.utils import cpp_extension

        lib = torch.library.Library("msa_fast_emu", "DEF")
        for name in OPS:
            lib.define(str(getattr(torch.ops.msa_fast, name).default._schema).replace("msa_fast::", "", 1))
        cpp_extension.load(
            name="msa_fast_cuda_emulation",
            sources=[str(HERE / "emulated_ops.cpp")],
            extra_include_paths=[str(ROOT / "csrc"), str(HERE)],
            extra_cflags=["-O1", "-g0", "-std=c++20"],
            is_python_module=False,
            verbose=False,
        )
        _LIB = lib
    return torch.ops.msa_fast_emu
