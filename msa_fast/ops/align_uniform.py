"""MMCL's alignment and uniformity terms (after Wang & Isola, 2020): ops.md §6.

This file holds the references: direct differences, dense ``n × n`` distances and ``torch.logsumexp``.
The fused tile kernels (ops.md §1; uniform through ``d² = ‖p‖² + ‖g‖² − 2p·g``) and the public ops
``align_loss`` and ``uniform_loss`` come with the engine.
"""

from __future__ import annotations

import torch

from msa_fast.ops import _contrastive as C

ALIGN = "align_loss"
UNIFORM = "uniform_loss"
REDUCTIONS = ("mean", "sum", "none")
MODES = ("cross", "wang_isola")


def _is_real(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float))


def _prepare(op, p, g, normalize, check_finite):
    C.check_features(op, p=p, g=g)
    C.check_same_shape(op, p=p, g=g)
    C.maybe_check_finite(op, check_finite, p=p, g=g)
    dtype = C.compute_dtype(p.dtype)
    pf = p.to(dtype)
    gf = pf if g is p else g.to(dtype)
    if normalize:
        pf = C.normalize_rows(pf)
        gf = pf if g is p else C.normalize_rows(gf)
    return pf, gf


def align_loss_reference(p, g, power=2, *, normalize=False, reduction="mean", check_finite=False):
    """The pure-PyTorch specification of ``align_loss`` (ops.md §6): ``mean_i ‖p_i − g_i‖₂^power``.

    Args:
        p, g: ``[n, D]`` float, same shape, dtype and device (usually already L2-normalised).
        power: > 0, a float is allowed; ``power = 2`` is a plain sum of squares (no square root).
        normalize: apply ``n(·)`` to both first.
        reduction: ``'mean'`` (default), ``'sum'`` or ``'none'`` (``[n]``).

    Returns:
        fp32 (fp64 for fp64 input). The gradient at ``p_i = g_i`` is 0 for every power (a subgradient,
        not NaN). A NaN in row i makes term i NaN.
    """
    if not _is_real(power) or not power > 0:
        raise ValueError(f"msa_fast.ops.{ALIGN}: power must be a float > 0, got {power!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"msa_fast.ops.{ALIGN}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    pf, gf = _prepare(ALIGN, p, g, normalize, check_finite)
    sq = ((pf - gf) ** 2).sum(dim=1)                              # ‖p_i − g_i‖², direct differences
    if power == 2:
        per_row = sq
    else:
        # ‖d‖^power = (‖d‖²)^(power/2), with the base replaced by 1 where ‖d‖² = 0 so the gradient there
        # is exactly 0 (for power ≤ 1 the true derivative does not exist; 0 is a subgradient). The
        # test is `== 0`, so a NaN distance is not replaced and propagates.
        at_zero = sq == 0
        per_row = torch.where(at_zero, 0.0, torch.where(at_zero, 1.0, sq) ** (power / 2))
    if reduction == "none":
        return per_row
    if reduction == "sum":
        return per_row.sum()
    return per_row.mean()


def _lse_offdiag(neg_d2: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``LSE_{(i,j)∈keep} a_ij − log|keep|``, the log of the mean of ``exp(a)`` over the kept pairs.

    ``log|keep|`` is taken as the LSE of zeros over the same pairs, computed the same way, so equal
    logits (κ = 0, or all rows identical) give exactly 0.
    """
    ninf = torch.tensor(float("-inf"), dtype=neg_d2.dtype, device=neg_d2.device)
    lse = torch.logsumexp(torch.where(keep, neg_d2, ninf).flatten(), dim=0)
    log_count = torch.logsumexp(torch.where(keep, torch.zeros_like(neg_d2), ninf).flatten(), dim=0)
    return lse - log_count


def _sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``‖a_i − b_j‖²`` by direct differences (dense ``n × n × D``; the reference may be dense, §0.7)."""
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(dim=-1)


def uniform_loss_reference(p, g, kappa=2.0, *, mode="cross", normalize=False, check_finite=False):
    """The pure-PyTorch specification of ``uniform_loss`` (ops.md §6).

    * ``'cross'`` (default, MMCL cross-set reading): ``log((1/(n(n−1))) Σ_{i≠j} exp(−κ‖p_i − g_j‖²))``.
    * ``'wang_isola'``: ``½[unif(p) + unif(g)]`` with ``unif(X) = LSE_{i<j}(−κ‖x_i − x_j‖²) − log(n(n−1)/2)``.

    Args:
        p, g: ``[n, D]`` float, same shape, dtype and device; ``n ≥ 2``.
        kappa: κ ≥ 0 (κ = 0 gives exactly 0).
        normalize: apply ``n(·)`` to both first.

    Returns:
        an fp32 scalar (fp64 for fp64 input), ≤ 0. A NaN anywhere in p or g makes it NaN.
    """
    if not _is_real(kappa) or not kappa >= 0:
        raise ValueError(f"msa_fast.ops.{UNIFORM}: kappa must be a float >= 0, got {kappa!r}")
    if mode not in MODES:
        raise ValueError(f"msa_fast.ops.{UNIFORM}: mode must be one of {MODES}, got {mode!r}")
    pf, gf = _prepare(UNIFORM, p, g, normalize, check_finite)
    n = p.shape[0]
    if n < 2:
        raise ValueError(f"msa_fast.ops.{UNIFORM}: needs n >= 2 rows (the mean runs over pairs i != j), got p "
                         f"of shape {tuple(p.shape)} and g of shape {tuple(g.shape)}")
    kappa = float(kappa)
    idx = torch.arange(n, device=p.device)
    if mode == "cross":
        # LSE_{i≠j}(−κ d²_ij) − log(n(n−1)), d_ij = ‖p_i − g_j‖.
        return _lse_offdiag(-kappa * _sq_dists(pf, gf), idx[:, None] != idx[None, :])
    # Wang & Isola: pairs i < j within each set.
    upper = idx[:, None] < idx[None, :]
    return 0.5 * (_lse_offdiag(-kappa * _sq_dists(pf, pf), upper) + _lse_offdiag(-kappa * _sq_dists(gf, gf), upper))
