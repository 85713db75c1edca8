"""What this install can run: versions, backends, how the native extension was built, threads."""

from __future__ import annotations

import importlib.metadata
import platform

import torch

import msa_fast
from msa_fast.ops import _config, _dispatch


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def collect() -> dict[str, object]:
    flags = _dispatch.build_info()
    return {
        "msa_fast": msa_fast.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch CUDA build": torch.version.cuda or "no (CPU build)",
        "triton": _version("triton"),
        "numpy": _version("numpy"),
        "h5py": _version("h5py"),
        "transformers": _version("transformers"),
        "C++ CPU kernels built": _dispatch.native_built(),
        "CUDA kernels built": _dispatch.cuda_kernels_built(),
        "OpenMP": flags.get("openmp") == "1",
        "GPUs visible": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "Triton interpreter (TRITON_INTERPRET=1)": _dispatch.triton_interpreter(),
        "backends (cpu)": ", ".join(_dispatch.available_backends("cpu")),
        "backends (cuda)": ", ".join(_dispatch.available_backends("cuda")) if torch.cuda.is_available() else "no GPU",
        "fp32 dot precision": _config.input_precision(),
        "threads (torch intra-op)": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
    }


def format_info(info: dict[str, object]) -> str:
    width = max(len(k) for k in info)
    return "\n".join(f"{k:<{width}}  {'yes' if v is True else 'no' if v is False else v}" for k, v in info.items())
