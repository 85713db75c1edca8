"""Autotune policy shared by the kernels in this package.

``MSA_FAST_AUTOTUNE=0`` (read at import) or the Triton interpreter (``TRITON_INTERPRET=1``) keeps only the first
config of each list, so interpreter runs are deterministic and do not benchmark (engineering.md §4).
"""

from __future__ import annotations

import os

import triton


def _truthy(name: str, default: str) -> bool:
    return os.environ.get(name, default).strip().lower() not in ("0", "false", "off", "no", "")


INTERPRETER = _truthy("TRITON_INTERPRET", "0")
AUTOTUNE = _truthy("MSA_FAST_AUTOTUNE", "1") and not INTERPRETER


def autotune(configs: list[triton.Config], key: list[str]):
    """``triton.autotune`` over ``configs``, or over ``configs[:1]`` when autotuning is off."""
    return triton.autotune(configs=configs if AUTOTUNE else configs[:1], key=key)
