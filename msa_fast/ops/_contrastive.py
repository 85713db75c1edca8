"""Helpers shared by the contrastive-loss references (ops.md §0, §2–§6).

Argument checks with the messages of ops.md §0.4, the compute dtype of §0.2, the row normalisation
``n(x)`` of the spec preamble (with the zero-norm rule of §1) and the connected zero of §0.5. Kept
apart from the op files so that every loss family (supcon, info_nce, hycon, mgcl, align/uniform)
validates and normalises identically; the fused backends will reuse the same checks.
"""

from __future__ import annotations

import torch

from msa_fast.ops import _config, _dispatch

NORM_EPS = 1e-12  # n(x) = x / max(‖x‖₂, 1e-12), ops.md preamble
INDEX_DTYPES = (torch.int32, torch.int64)


def qualname(op: str) -> str:
    return f"msa_fast.ops.{op}"


def describe(t: torch.Tensor) -> str:
    return f"{t.dtype} on {t.device} (shape {tuple(t.shape)})"


def check_features(op: str, ndim: int = 2, **tensors: torch.Tensor) -> torch.dtype:
    """Float inputs of one call (§0.2, §0.4): floating, ``ndim``-D, non-empty, same dtype and device.

    Returns their common dtype. Messages name the op and the argument and show the shapes.
    """
    first_name, first = None, None
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{qualname(op)}: {name} must be a tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{qualname(op)}: {name} must be a floating tensor (fp32/fp16/bf16/fp64), "
                            f"got {t.dtype} (shape {tuple(t.shape)})")
        if t.dim() != ndim:
            raise ValueError(f"{qualname(op)}: {name} must be {ndim}-D ([N, D]), got shape {tuple(t.shape)}")
        if t.numel() == 0:
            raise ValueError(f"{qualname(op)}: {name} is empty (shape {tuple(t.shape)})")
        if first is None:
            first_name, first = name, t
            continue
        if t.dtype != first.dtype:
            raise TypeError(f"{qualname(op)}: all float inputs must share a dtype, got {first_name} "
                            f"{describe(first)} and {name} {describe(t)}")
        if t.device != first.device:
            raise ValueError(f"{qualname(op)}: all inputs must be on one device, got {first_name} "
                             f"{describe(first)} and {name} {describe(t)}")
    assert first is not None
    return first.dtype


def check_same_shape(op: str, **tensors: torch.Tensor) -> None:
    items = list(tensors.items())
    name0, t0 = items[0]
    for name, t in items[1:]:
        if t.shape != t0.shape:
            raise ValueError(f"{qualname(op)}: {name0} and {name} must have the same shape, got "
                             f"{tuple(t0.shape)} and {tuple(t.shape)}")


def check_labels(op: str, name: str, labels, n: int, device: torch.device, *, n_name: str, allow_float: bool,
                 float_hint: str = "") -> None:
    """Per-row labels ``[n]`` on the features' device; float labels only where the op defines them."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{qualname(op)}: {name} must be a tensor, got {type(labels).__name__}")
    if labels.is_floating_point():
        if not allow_float:
            raise TypeError(f"{qualname(op)}: {name} must be int32/int64/bool class ids, got {labels.dtype} "
                            f"(shape {tuple(labels.shape)}){float_hint}")
    elif labels.dtype not in INDEX_DTYPES + (torch.bool,) or labels.is_complex():
        raise TypeError(f"{qualname(op)}: {name} must be int32/int64/bool"
                        f"{' or floating' if allow_float else ''}, got {labels.dtype} (shape {tuple(labels.shape)})")
    if labels.shape != (n,):
        raise ValueError(f"{qualname(op)}: {name} must be [{n_name}] = [{n}], got shape {tuple(labels.shape)}")
    if labels.device != device:
        raise ValueError(f"{qualname(op)}: {name} is on {labels.device} (shape {tuple(labels.shape)}) but the "
                         f"features are on {device}")


def maybe_check_finite(op: str, check_finite: bool, **tensors) -> None:
    """§0.4: ``check_finite=True`` or ``MSA_FAST_CHECK_FINITE=1`` → ValueError on NaN/Inf (one sync)."""
    if check_finite or _config.check_finite_default():
        _dispatch.check_finite(op, **tensors)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """§0.2/§0.3: losses accumulate in fp32 whatever the input dtype; fp64 stays fp64 (gradcheck)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """``n(x) = x / max(‖x‖₂, 1e-12)`` row-wise (= ``F.normalize``), with a zero gradient for zero rows.

    ops.md §1 (backward through the normalisation) and §2 ("an all-zero row ... its gradient is 0"):
    ``F.normalize`` alone would send ``upstream / 1e-12`` into an exactly-zero row, so such rows are
    multiplied by a constant 0 mask. The mask is ``norm != 0``, so a NaN row stays NaN (§0.4).
    """
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    u = x / norm.clamp_min(NORM_EPS)
    return u * (norm != 0).to(x.dtype).detach()


def zero_result(out_dtype: torch.dtype, *tensors: torch.Tensor) -> torch.Tensor:
    """§0.5: an exact 0 as ``0 · (sum of the float inputs)``; every input gets a zero gradient, NaN propagates.

    The sums run in the output dtype (fp32 or fp64), so fp16 inputs cannot overflow to ±inf here.
    """
    total = sum(t.to(out_dtype).sum() for t in tensors)
    return total * 0
