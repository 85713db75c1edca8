"""The contrastive losses of :mod:`msa_fast.ops` as modules (ops.md §2–§6).

Each module holds its options (including ``backend`` and ``global_batch``) as plain attributes, set at
construction and changeable afterwards, and its ``forward`` calls the functional op with them, so
``Module(**opts)(*inputs) == op(*inputs, **opts)`` exactly. The modules have no parameters or buffers.

``global_batch=True`` contrasts over the batch gathered from every ``torch.distributed`` rank (a no-op
when no process group is initialised); under DDP multiply the loss by
:func:`msa_fast.ops.distributed.ddp_loss_scale` to get the single-process full-batch gradient. See
:mod:`msa_fast.ops.distributed`.
"""

from __future__ import annotations

import torch
from torch import nn

from msa_fast.ops.align_uniform import align_loss, uniform_loss
from msa_fast.ops.hycon import hycon_loss
from msa_fast.ops.info_nce import info_nce
from msa_fast.ops.mgcl import mgcl_contrastive_loss
from msa_fast.ops.supcon import supcon_loss

__all__ = ["SupConLoss", "InfoNCE", "HyConLoss", "MGCLContrastiveLoss", "AlignLoss", "UniformLoss"]


class _Loss(nn.Module):
    """Options in ``_OPTIONS`` are attributes passed to the functional op by keyword."""

    _OPTIONS: tuple[str, ...] = ()

    def __init__(self, **options):
        super().__init__()
        for name, value in options.items():
            setattr(self, name, value)

    def _options(self) -> dict:
        return {name: getattr(self, name) for name in self._OPTIONS}

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={getattr(self, name)!r}" for name in self._OPTIONS)


class SupConLoss(_Loss):
    """:func:`msa_fast.ops.supcon_loss` (PML semantics; ``variant='in'`` is MMCL Eq. 8).

    ``forward(z [N, D], labels [N]) -> fp32 scalar`` (``[N]`` with ``reduction='none'``).
    """

    _OPTIONS = ("temperature", "variant", "reduction", "normalize", "check_finite", "backend", "global_batch")

    def __init__(self, temperature: float = 0.07, *, variant: str = "out", reduction: str = "pml",
                 normalize: bool = True, check_finite: bool = False, backend: str = "auto",
                 global_batch: bool = False):
        super().__init__(temperature=temperature, variant=variant, reduction=reduction, normalize=normalize,
                         check_finite=check_finite, backend=backend, global_batch=global_batch)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return supcon_loss(z, labels, **self._options())


class InfoNCE(_Loss):
    """:func:`msa_fast.ops.info_nce` (MMCL UMCC / ICL, positive on the diagonal).

    ``forward(q [N, D], k [N, D]) -> fp32 scalar`` (``[N]`` with ``reduction='none'``).
    """

    _OPTIONS = ("temperature", "negatives", "normalize", "reduction", "check_finite", "backend", "global_batch")

    def __init__(self, temperature: float = 0.1, negatives: str = "queries", *, normalize: bool = True,
                 reduction: str = "mean", check_finite: bool = False, backend: str = "auto",
                 global_batch: bool = False):
        super().__init__(temperature=temperature, negatives=negatives, normalize=normalize, reduction=reduction,
                         check_finite=check_finite, backend=backend, global_batch=global_batch)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return info_nce(q, k, **self._options())


class HyConLoss(_Loss):
    """:func:`msa_fast.ops.hycon_loss` (HyCon's IAMCL, IEMCL and SCL).

    ``forward(x_l, x_a, x_v [K, d], y [K]) -> (iamcl, iemcl, scl)`` fp32 scalars (plus the stats dict
    with ``return_stats=True``); weight and sum the three terms as the model needs.
    """

    _OPTIONS = ("alpha", "use_log", "sim_transform", "tau", "den_eps", "den_guard", "reduction", "drop_zero",
                "return_stats", "check_finite", "backend", "global_batch")

    def __init__(self, alpha: float = 0.8, *, use_log: bool = False, sim_transform: str = "cos", tau: float = 0.1,
                 den_eps: float = 1e-6, den_guard: str = "skip", reduction: str = "mean", drop_zero: bool = False,
                 return_stats: bool = False, check_finite: bool = False, backend: str = "auto",
                 global_batch: bool = False):
        super().__init__(alpha=alpha, use_log=use_log, sim_transform=sim_transform, tau=tau, den_eps=den_eps,
                         den_guard=den_guard, reduction=reduction, drop_zero=drop_zero, return_stats=return_stats,
                         check_finite=check_finite, backend=backend, global_batch=global_batch)

    def forward(self, x_l: torch.Tensor, x_a: torch.Tensor, x_v: torch.Tensor, y: torch.Tensor):
        return hycon_loss(x_l, x_a, x_v, y, **self._options())


class MGCLContrastiveLoss(_Loss):
    """:func:`msa_fast.ops.mgcl_contrastive_loss` (MGCL's collaborative contrastive loss).

    ``forward(macro, micro, y [B]) -> fp32 scalar`` (``[B]`` with ``reduction='none'``), ``macro`` and
    ``micro`` being ``(T, V, A)`` tuples of ``[B, d]`` features.
    """

    _OPTIONS = ("delta", "tau", "label_scale", "pos_weight", "neg_weight", "gain", "reduction", "same_sample_c2",
                "normalize", "check_finite", "backend", "global_batch")

    def __init__(self, delta: float = 0.4, tau: float = 0.03, label_scale: float = 3.0, pos_weight: str = "mgcl", *,
                 neg_weight: str = "mgcl", gain: float = 1.5, reduction: str = "mean",
                 same_sample_c2: str = "literal3", normalize: bool = True, check_finite: bool = False,
                 backend: str = "auto", global_batch: bool = False):
        super().__init__(delta=delta, tau=tau, label_scale=label_scale, pos_weight=pos_weight, neg_weight=neg_weight,
                         gain=gain, reduction=reduction, same_sample_c2=same_sample_c2, normalize=normalize,
                         check_finite=check_finite, backend=backend, global_batch=global_batch)

    def forward(self, macro, micro, y: torch.Tensor) -> torch.Tensor:
        return mgcl_contrastive_loss(macro, micro, y, **self._options())


class AlignLoss(_Loss):
    """:func:`msa_fast.ops.align_loss`: ``mean_i ‖p_i − g_i‖^power`` (MMCL alignment).

    ``forward(p [n, D], g [n, D]) -> fp32 scalar`` (``[n]`` with ``reduction='none'``).
    """

    _OPTIONS = ("power", "normalize", "reduction", "check_finite", "backend", "global_batch")

    def __init__(self, power: float = 2, *, normalize: bool = False, reduction: str = "mean",
                 check_finite: bool = False, backend: str = "auto", global_batch: bool = False):
        super().__init__(power=power, normalize=normalize, reduction=reduction, check_finite=check_finite,
                         backend=backend, global_batch=global_batch)

    def forward(self, p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return align_loss(p, g, **self._options())


class UniformLoss(_Loss):
    """:func:`msa_fast.ops.uniform_loss` (MMCL uniformity; ``mode='wang_isola'`` for Wang & Isola's).

    ``forward(p [n, D], g [n, D]) -> fp32 scalar`` (≤ 0).
    """

    _OPTIONS = ("kappa", "mode", "normalize", "check_finite", "backend", "global_batch")

    def __init__(self, kappa: float = 2.0, *, mode: str = "cross", normalize: bool = False,
                 check_finite: bool = False, backend: str = "auto", global_batch: bool = False):
        super().__init__(kappa=kappa, mode=mode, normalize=normalize, check_finite=check_finite, backend=backend,
                         global_batch=global_batch)

    def forward(self, p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return uniform_loss(p, g, **self._options())
