"""Cutoff augmentation as a module: active in training, identity in eval (MMCL §3.2)."""

from __future__ import annotations

import torch
from torch import nn

from msa_fast.ops.cutoff import cutoff


class Cutoff(nn.Module):
    """Zero a fraction of features, steps or one span of ``[B, L, D]`` inputs while training.

    A fresh seed is drawn from torch's default generator on every call (so ``torch.manual_seed``
    reproduces a run); pass ``seed=`` to forward to fix it. In eval mode the input is returned as is.
    """

    def __init__(self, ratio: float = 0.2, mode: str = "feature", padding_side: str = "right", backend: str = "auto"):
        super().__init__()
        self.ratio, self.mode, self.padding_side, self.backend = float(ratio), mode, padding_side, backend

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None, seed=None) -> torch.Tensor:
        if not self.training or self.ratio == 0.0:
            return x
        return cutoff(x, self.ratio, self.mode, seed, lengths, padding_side=self.padding_side, backend=self.backend)

    def extra_repr(self) -> str:
        return f"ratio={self.ratio}, mode={self.mode!r}, padding_side={self.padding_side!r}"
