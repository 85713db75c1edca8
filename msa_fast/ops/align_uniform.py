"""MMCL's alignment and uniformity terms (after Wang & Isola, 2020): ops.md §6.

Side by side: the references (direct differences, dense ``n × n`` distances and ``torch.logsumexp``),
the registrations of the fused per-row op ``msa_fast::uniform_rows`` (C++: csrc/cpu/uniform.cpp;
Triton: kernels/uniform.py; ``d² = ‖p̂‖² + ‖ĝ‖² − 2p̂·ĝ`` clamped at 0) and the public ops.

``align_loss`` has no pairwise work: it is ``O(n·D)`` and row-wise (``‖p_i − g_i‖``), so there is no
``n × n`` matrix to avoid and nothing to fuse; its public op runs the same torch ops on every backend
(the backend is still validated, so forcing an unavailable one raises as for every op).
"""

from __future__ import annotations

import importlib.util
import math

import torch

from msa_fast.ops import _contrastive as C
from msa_fast.ops import _dispatch

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


# ----------------------------------------------------------------------------------------------
# Fused per-row uniformity op: fake tensors, autograd, Triton twin.


def _rows_fake(p, g, kappa, normalize):
    return p.new_empty(p.shape[0], dtype=C.compute_dtype(p.dtype))


def _rows_backward_fake(grad_rows, p, g, lse_rows, kappa, normalize):
    return (torch.empty_like(p, memory_format=torch.contiguous_format),
            torch.empty_like(g, memory_format=torch.contiguous_format))


def _rows_setup_context(ctx, inputs, output):
    p, g, ctx.kappa, ctx.normalize = inputs
    ctx.save_for_backward(p, g, output)


def _rows_backward_with(backward_op):
    def backward(ctx, grad_rows):
        p, g, lse_rows = ctx.saved_tensors
        # When g is p ('wang_isola'), autograd adds dg to dp.
        dp, dg = backward_op(grad_rows, p, g, lse_rows, ctx.kappa, ctx.normalize)
        return dp, dg, None, None

    return backward


if _dispatch.native_built():
    torch.library.register_fake("msa_fast::uniform_rows", _rows_fake)
    torch.library.register_fake("msa_fast::uniform_rows_backward", _rows_backward_fake)
    torch.library.register_autograd("msa_fast::uniform_rows",
                                    _rows_backward_with(torch.ops.msa_fast.uniform_rows_backward.default),
                                    setup_context=_rows_setup_context)

if importlib.util.find_spec("msa_fast.kernels.uniform") is not None:

    @torch.library.triton_op("msa_fast::uniform_rows_triton", mutates_args=())
    def _uniform_rows_triton(p: torch.Tensor, g: torch.Tensor, kappa: float, normalize: bool) -> torch.Tensor:
        from msa_fast.kernels.uniform import uniform_rows_forward

        return uniform_rows_forward(p, g, kappa, normalize)

    @torch.library.triton_op("msa_fast::uniform_rows_backward_triton", mutates_args=())
    def _uniform_rows_backward_triton(grad_rows: torch.Tensor, p: torch.Tensor, g: torch.Tensor,
                                      lse_rows: torch.Tensor, kappa: float,
                                      normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
        from msa_fast.kernels.uniform import uniform_rows_backward

        return uniform_rows_backward(grad_rows, p, g, lse_rows, kappa, normalize)

    torch.library.register_autograd("msa_fast::uniform_rows_triton",
                                    _rows_backward_with(torch.ops.msa_fast.uniform_rows_backward_triton.default),
                                    setup_context=_rows_setup_context)


# ----------------------------------------------------------------------------------------------
# Public ops.


def align_loss(p, g, power=2, *, normalize=False, reduction="mean", check_finite=False, backend="auto",
               global_batch=False):
    """``mean_i ‖p_i − g_i‖₂^power`` (MMCL alignment, Wang & Isola 2020): ops.md §6.

    Args:
        p, g: ``[n, D]`` float, same shape, dtype and device (usually already L2-normalised).
        power: > 0, a float is allowed; ``power = 2`` is a plain sum of squares (no square root).
        normalize: apply ``n(·)`` to both first.
        reduction: ``'mean'`` (default), ``'sum'`` or ``'none'`` (``[n]``).
        check_finite: raise ValueError on NaN/Inf (also ``MSA_FAST_CHECK_FINITE=1``); otherwise a NaN in
            row i makes term i NaN.
        backend: validated like every op's; all backends run the same row-wise torch ops (O(n·D), no
            pairwise work to fuse).
        global_batch: compute the loss over the batch gathered from all ranks of torch.distributed
            (gradients flow back to this rank's rows; multiply by ``ddp_loss_scale()`` under DDP); a
            no-op when torch.distributed is not initialised. See :mod:`msa_fast.ops.distributed`.

    Returns fp32 (fp64 for fp64 input). The gradient at ``p_i = g_i`` is 0 for every power.
    """
    if global_batch:
        from msa_fast.ops.distributed import gather_rows
        p, g = gather_rows(p, g)
    C.check_features(ALIGN, p=p, g=g)
    _dispatch.resolve(ALIGN, backend, p, native_op="uniform_rows")
    return align_loss_reference(p, g, power, normalize=normalize, reduction=reduction, check_finite=check_finite)


def _mean_exp_log(lse_rows: torch.Tensor, n: int) -> torch.Tensor:
    """``LSE_i lse_i − log(n(n−1))`` from ``lse_i = LSE_{j≠i} v_ij``, written so that κ = 0 gives exactly 0:
    the kernels return ``fl(log(n − 1))`` for an all-zero row, and ``log n`` is the LSE of zeros computed
    by the same op."""
    centred = lse_rows - math.log(n - 1)
    return torch.logsumexp(centred, dim=0) - torch.logsumexp(torch.zeros_like(centred), dim=0)


def uniform_loss(p, g, kappa=2.0, *, mode="cross", normalize=False, check_finite=False, backend="auto",
                 global_batch=False):
    """MMCL uniformity (after Wang & Isola 2020), fused: ops.md §6.

    * ``'cross'`` (default): ``log((1/(n(n−1))) Σ_{i≠j} exp(−κ‖p_i − g_j‖²))``.
    * ``'wang_isola'``: ``½[unif(p) + unif(g)]``, ``unif(X) = LSE_{i<j}(−κ‖x_i − x_j‖²) − log(n(n−1)/2)``
      (by symmetry equal to the ``'cross'`` formula on (X, X)).

    Args:
        p, g: ``[n, D]`` float (fp32/fp16/bf16; fp64 runs on the reference under ``auto``), same shape,
            dtype and device; ``n ≥ 2``.
        kappa: κ ≥ 0 (κ = 0 gives exactly 0).
        normalize: apply ``n(·)`` to both first.
        check_finite: raise ValueError on NaN/Inf (also ``MSA_FAST_CHECK_FINITE=1``); otherwise a NaN
            anywhere makes the result NaN.
        backend: ``'auto'``, ``'reference'``, ``'cpp'``, ``'triton'`` or ``'cuda'``.
        global_batch: compute the loss over the batch gathered from all ranks of torch.distributed
            (gradients flow back to this rank's rows; multiply by ``ddp_loss_scale()`` under DDP); a
            no-op when torch.distributed is not initialised. See :mod:`msa_fast.ops.distributed`.

    Returns an fp32 scalar (fp64 for fp64 input), ≤ 0. The fused path expands
    ``d² = ‖p̂‖² + ‖ĝ‖² − 2p̂·ĝ`` (clamped at 0) on slabs of a GEMM: memory O(n·D), no n × n matrix;
    the cancellation costs ≈ 1e-7·κ·‖x‖² per pair (ops.md §10 tolerances), and the result is clamped
    at 0 so that rounding never makes it positive.
    """
    if not _is_real(kappa) or not kappa >= 0:
        raise ValueError(f"msa_fast.ops.{UNIFORM}: kappa must be a float >= 0, got {kappa!r}")
    if mode not in MODES:
        raise ValueError(f"msa_fast.ops.{UNIFORM}: mode must be one of {MODES}, got {mode!r}")
    if global_batch:
        from msa_fast.ops.distributed import gather_rows
        p, g = gather_rows(p, g)
    C.check_features(UNIFORM, p=p, g=g)
    C.check_same_shape(UNIFORM, p=p, g=g)
    n = p.shape[0]
    if n < 2:
        raise ValueError(f"msa_fast.ops.{UNIFORM}: needs n >= 2 rows (the mean runs over pairs i != j), got p "
                         f"of shape {tuple(p.shape)} and g of shape {tuple(g.shape)}")
    C.maybe_check_finite(UNIFORM, check_finite, p=p, g=g)
    chosen = _dispatch.resolve(UNIFORM, backend, p, native_op="uniform_rows", triton_op="uniform_rows_triton")
    if chosen == "reference":
        return uniform_loss_reference(p, g, kappa, mode=mode, normalize=normalize)
    op = torch.ops.msa_fast.uniform_rows_triton if chosen == "triton" else torch.ops.msa_fast.uniform_rows
    kappa, normalize = float(kappa), bool(normalize)
    if mode == "cross":
        value = _mean_exp_log(op(p, g, kappa, normalize), n)
    else:
        value = 0.5 * (_mean_exp_log(op(p, p, kappa, normalize), n) + _mean_exp_log(op(g, g, kappa, normalize), n))
    return value.clamp(max=0.0)
