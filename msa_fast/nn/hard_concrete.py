"""A learnable Hard Concrete gate (Louizos et al. 2018; M3SA's hard filter with threshold=0.5)."""

from __future__ import annotations

import torch
from torch import nn

from msa_fast.ops.hard_concrete import hard_concrete, hard_concrete_l0


class HardConcreteGate(nn.Module):
    """Owns ``log_alpha`` of a given shape; samples gates in training, deterministic gates in eval.

    ``forward(u=None, seed=None)`` returns the gate tensor z; ``l0()`` the expected number of
    non-zero gates (Louizos Eq. 12), for a sparsity penalty.
    """

    def __init__(self, shape, init_log_alpha: float = 0.0, beta: float = 2 / 3, gamma: float = -0.1, zeta: float = 1.1,
                 threshold: float | None = None, ste: str = "clamp", eps: float = 1e-6, backend: str = "auto"):
        super().__init__()
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.log_alpha = nn.Parameter(torch.full(shape, float(init_log_alpha)))
        self.beta, self.gamma, self.zeta, self.threshold = beta, gamma, zeta, threshold
        self.ste, self.eps, self.backend = ste, eps, backend

    def forward(self, u: torch.Tensor | None = None, seed=None) -> torch.Tensor:
        return hard_concrete(self.log_alpha, u, self.beta, self.gamma, self.zeta, self.threshold, self.training,
                             seed=seed, eps=self.eps, ste=self.ste, backend=self.backend)

    def l0(self, reduction: str = "sum") -> torch.Tensor:
        return hard_concrete_l0(self.log_alpha, self.beta, self.gamma, self.zeta, eps=self.eps, reduction=reduction,
                                backend=self.backend)

    def extra_repr(self) -> str:
        return (f"shape={tuple(self.log_alpha.shape)}, beta={self.beta:.4g}, gamma={self.gamma}, zeta={self.zeta}, "
                f"threshold={self.threshold}")
