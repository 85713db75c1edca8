"""Environment switches of msa_fast.ops (ops.md §0), read in one place.

* ``MSA_FAST_BACKEND``: overrides ``backend='auto'`` for every op (``reference``, ``cpp``, ``triton``,
  ``cuda``).
* ``MSA_FAST_CHECK_FINITE=1``: every op checks its float inputs for NaN/Inf first (one sync).
* ``MSA_FAST_INPUT_PRECISION``: ``ieee`` or ``tf32`` for fp32 tile dot products; read at import
  (tests set ``ieee`` before importing msa_fast). Unset: follows
  ``torch.get_float32_matmul_precision()``.
"""

from __future__ import annotations

import os

import torch

_PRECISION_ENV = os.environ.get("MSA_FAST_INPUT_PRECISION", "").strip().lower()
if _PRECISION_ENV not in ("", "ieee", "tf32"):
    raise ValueError(f"MSA_FAST_INPUT_PRECISION must be 'ieee' or 'tf32', got {_PRECISION_ENV!r}")


def input_precision() -> str:
    """'ieee' or 'tf32': the operand precision of fp32 tile dot products (ops.md §0.3)."""
    if _PRECISION_ENV:
        return _PRECISION_ENV
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def backend_override() -> str | None:
    value = os.environ.get("MSA_FAST_BACKEND", "").strip().lower()
    return value or None


def check_finite_default() -> bool:
    return os.environ.get("MSA_FAST_CHECK_FINITE", "0").strip().lower() in ("1", "true", "yes", "on")
