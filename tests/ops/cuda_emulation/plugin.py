"""pytest plugin: the C++ CPU kernels of the contrastive ``msa_fast`` ops are replaced by the emulated
CUDA kernels (see ``tests/ops/cuda_emulation/__init__.py``), so every ``cpp`` test of tests/ops checks the
CUDA code against the references with the spec's tolerances. Slow (each CUDA thread is a host thread):

    python -m pytest -p tests.ops.cuda_emulation.plugin tests/ops -k "cpp and not large"
"""

from __future__ import annotations

import warnings

import torch

from tests.ops import cuda_emulation

_OVERRIDE = None


def pytest_configure(config):
    global _OVERRIDE
    reason = cuda_emulation.unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"tests.ops.cuda_emulation.plugin: {reason}")
    emu = cuda_emulation.load()
    _OVERRIDE = torch.library.Library("msa_fast", "IMPL")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "overriding a previously registered kernel" is the point here
        for name in cuda_emulation.OPS:
            _OVERRIDE.impl(name, getattr(emu, name).default, "CPU")


def pytest_report_header(config):
    return "msa_fast contrastive CPU kernels replaced by the emulated CUDA kernels (csrc/cuda/*.cu)"
