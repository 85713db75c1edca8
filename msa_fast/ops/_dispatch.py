"""Backend selection for every op (ops.md §0.1).

Four backends sit behind one API: ``reference`` (pure PyTorch, the spec), ``cpp`` (C++ CPU kernels
of ``msa_fast._C``), ``triton`` (``msa_fast.kernels``; CUDA, or CPU under ``TRITON_INTERPRET=1``)
and ``cuda`` (CUDA C++ kernels of ``msa_fast._C``). ``auto`` picks ``cpp`` on CPU and the best GPU
kernel on CUDA, and falls back to ``reference`` only where no fast kernel exists for the input
(fp64): a backend the caller forces is never replaced silently — if it cannot run, the error says why.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from msa_fast.ops import _config

BACKENDS = ("auto", "reference", "cpp", "triton", "cuda")

try:  # loading the library runs the TORCH_LIBRARY registrations of csrc/
    from msa_fast import _C  # noqa: F401

    _NATIVE_ERROR: str | None = None
except ImportError as exc:  # a source checkout without a build: reference and Triton still work
    _NATIVE_ERROR = f"msa_fast._C could not be imported ({exc}); build it with the README's install command"


def native_built() -> bool:
    return _NATIVE_ERROR is None


def build_info() -> dict[str, str]:
    """Flags the native extension was compiled with (empty if it is not built)."""
    if not native_built():
        return {}
    return dict(item.split("=", 1) for item in torch.ops.msa_fast.build_info().split(";"))


def cuda_kernels_built() -> bool:
    """True when the CUDA C++ kernels were compiled and registered (no GPU needed to know)."""
    return native_built() and torch._C._dispatch_has_kernel_for_dispatch_key("msa_fast::cutoff", "CUDA")


def triton_interpreter() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


@torch.compiler.assume_constant_result  # registrations don't change while a graph runs; keeps fullgraph tracing
def _has_kernel(native_op: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"msa_fast::{native_op}", key)


def _why_not(backend: str, device: torch.device, native_op: str = "cutoff", triton_op: str | None = None) -> str | None:
    """None if `backend` can run `native_op` (C++/CUDA) or `triton_op` on `device`, else the reason."""
    if backend == "reference":
        return None
    if backend == "cpp":
        if not native_built():
            return _NATIVE_ERROR
        if device.type != "cpu":
            return f"the cpp backend runs on CPU tensors, got a tensor on {device}"
        if not _has_kernel(native_op, "CPU"):
            return f"msa_fast._C has no CPU kernel for msa_fast::{native_op} (rebuild the extension)"
        return None
    if backend == "cuda":
        if device.type != "cuda":
            return f"the cuda backend runs on CUDA tensors, got a tensor on {device}"
        if not cuda_kernels_built():
            return _NATIVE_ERROR or "msa_fast._C was built without its CUDA kernels (no nvcc or a CPU build of torch)"
        if not _has_kernel(native_op, "CUDA"):
            return f"msa_fast::{native_op} has no CUDA C++ kernel yet"
        return None
    if backend == "triton":
        if not triton_installed():
            return "triton is not installed"
        if triton_op is not None and not hasattr(torch.ops.msa_fast, triton_op):
            return f"msa_fast::{triton_op} has no Triton kernel yet"
        if device.type == "cpu" and not triton_interpreter():
            return "Triton kernels run on CPU tensors only under TRITON_INTERPRET=1 (set before importing triton)"
        if device.type not in ("cpu", "cuda"):
            return f"Triton kernels run on CUDA tensors, got a tensor on {device}"
        return None
    raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")


def available_backends(device: str | torch.device | None = None) -> list[str]:
    """Backends this install can run, for `device` (default: CPU, plus CUDA if a GPU is present)."""
    devices = [torch.device(device)] if device is not None else [torch.device("cpu")]
    if device is None and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    return [b for b in BACKENDS[1:] if any(_why_not(b, d) is None for d in devices)]


def resolve(op: str, backend: str, tensor: torch.Tensor, *, native_op: str, triton_op: str | None = None,
            fast_dtypes=(torch.float32, torch.float16, torch.bfloat16)) -> str:
    """The backend that runs `op` on `tensor`; raises RuntimeError if a forced one cannot run.

    `native_op` / `triton_op` name the kernels behind the op, so that a backend whose kernel for this
    particular op is missing is reported as such.
    """
    if backend not in BACKENDS:
        raise ValueError(f"msa_fast.ops.{op}: unknown backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        backend = _config.backend_override() or "auto"
        if backend not in BACKENDS:
            raise ValueError(f"MSA_FAST_BACKEND={backend!r} is not one of {BACKENDS}")
    device = tensor.device
    if backend == "auto":
        if tensor.dtype not in fast_dtypes:
            return "reference"
        candidates = ("cpp",) if device.type == "cpu" else ("triton", "cuda")
        for candidate in candidates:
            if _why_not(candidate, device, native_op, triton_op) is None:
                return candidate
        return "reference"
    reason = _why_not(backend, device, native_op, triton_op)
    if reason is not None:
        raise RuntimeError(f"msa_fast.ops.{op}: backend {backend!r} is not available: {reason}")
    return backend


def check_finite(op: str, **tensors: torch.Tensor | None) -> None:
    """Raise ValueError naming the op, the argument and the count of non-finite entries (one sync)."""
    for name, t in tensors.items():
        if t is None or not t.is_floating_point():
            continue
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise ValueError(f"msa_fast.ops.{op}: {name} has {bad} non-finite entries (shape {tuple(t.shape)})")
