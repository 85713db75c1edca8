"""InfoNCE with the positive on the diagonal (MMCL's UMCC / ICL): ops.md §3.

Side by side: the reference (the spec: dense logits and ``torch.logsumexp``), the registrations of the
fused per-row op ``msa_fast::info_nce_rows`` (C++: csrc/cpu/info_nce.cpp; Triton: kernels/info_nce.py)
and the public :func:`info_nce`, which reduces the fused per-query losses with torch ops (no host sync).
"""

from __future__ import annotations

import importlib.util

import torch

from msa_fast.ops import _contrastive as C
from msa_fast.ops import _dispatch

OP = "info_nce"
NEGATIVES = ("queries", "keys")
REDUCTIONS = ("mean", "sum", "none")


def _check(q, k, temperature, negatives, reduction, check_finite) -> None:
    C.check_features(OP, q=q, k=k)
    C.check_same_shape(OP, q=q, k=k)
    if negatives not in NEGATIVES:
        raise ValueError(f"msa_fast.ops.{OP}: negatives must be one of {NEGATIVES}, got {negatives!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"msa_fast.ops.{OP}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"msa_fast.ops.{OP}: temperature must be a positive float, got {temperature!r}")
    C.maybe_check_finite(OP, check_finite, q=q, k=k)


def info_nce_reference(q, k, temperature=0.1, negatives="queries", *, normalize=True, reduction="mean",
                       check_finite=False):
    """The pure-PyTorch specification of ``info_nce`` (ops.md §3).

    Args:
        q, k: ``[N, D]`` float, same shape, dtype and device; ``k`` may be ``q`` itself (the gradients of
            both uses add up).
        temperature: τ > 0.
        negatives: ``'queries'`` (MMCL UMCC: the other originals ``q̂_j`` are the negatives) or
            ``'keys'`` (CLIP/MoCo row-wise cross-entropy over ``k̂``).
        normalize: cosine logits (``n(·)`` on both); ``False`` uses raw dot products.
        reduction: ``'mean'``, ``'sum'`` or ``'none'`` (``[N]``).

    Returns:
        fp32 (fp64 for fp64 input). NaN in any row of q makes every ``'queries'`` term NaN (it is a
        negative of every anchor); NaN in row i of k makes term i NaN, and every term with
        ``'keys'``.
    """
    _check(q, k, temperature, negatives, reduction, check_finite)
    dtype = C.compute_dtype(q.dtype)
    qf = q.to(dtype)
    kf = qf if k is q else k.to(dtype)
    qh = C.normalize_rows(qf) if normalize else qf          # q̂ = n(q)
    kh = C.normalize_rows(kf) if normalize else kf          # k̂ = n(k)
    tau = float(temperature)
    N = q.shape[0]
    if negatives == "keys":
        # ℓ_i = LSE_j a_ij − a_ii with a_ij = q̂_i·k̂_j/τ (a_ii read off the same matrix, so N = 1 is
        # exactly 0).
        a = (qh @ kh.T) / tau
        a_diag = a.diagonal()
        lse = torch.logsumexp(a, dim=1)
    else:
        # a_ii = q̂_i·k̂_i/τ, the positive logit (a row-wise dot).
        a_diag = (qh * kh).sum(dim=1) / tau
        # ℓ_i = LSE({a_ii} ∪ {b_ij : j ≠ i}) − a_ii with b_ij = q̂_i·q̂_j/τ: the diagonal of b (the
        # anchor against itself) is replaced by the positive a_ii.
        b = (qh @ qh.T) / tau
        eye = torch.eye(N, dtype=torch.bool, device=q.device)
        lse = torch.logsumexp(torch.where(eye, a_diag[:, None], b), dim=1)
    per_row = lse - a_diag
    if reduction == "none":
        return per_row
    if reduction == "sum":
        return per_row.sum()
    return per_row.mean()


# ----------------------------------------------------------------------------------------------
# Fused per-row op: fake tensors, autograd, Triton twin.


def _rows_fake(q, k, temperature, negatives_queries, normalize):
    n = q.shape[0]
    dtype = C.compute_dtype(q.dtype)
    return q.new_empty(n, dtype=dtype), q.new_empty(n, dtype=dtype)


def _rows_backward_fake(grad_rows, q, k, lse, temperature, negatives_queries, normalize):
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format))


def _rows_setup_context(ctx, inputs, output):
    q, k, ctx.temperature, ctx.negatives_queries, ctx.normalize = inputs
    _, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, lse)


def _rows_backward_with(backward_op):
    def backward(ctx, grad_rows, _lse):
        q, k, lse = ctx.saved_tensors
        # When k is q, autograd adds dk to dq (the op sees the tensor twice).
        dq, dk = backward_op(grad_rows, q, k, lse, ctx.temperature, ctx.negatives_queries, ctx.normalize)
        return dq, dk, None, None, None

    return backward


if _dispatch.native_built():
    torch.library.register_fake("msa_fast::info_nce_rows", _rows_fake)
    torch.library.register_fake("msa_fast::info_nce_rows_backward", _rows_backward_fake)
    torch.library.register_autograd("msa_fast::info_nce_rows",
                                    _rows_backward_with(torch.ops.msa_fast.info_nce_rows_backward.default),
                                    setup_context=_rows_setup_context)

if importlib.util.find_spec("msa_fast.kernels.info_nce") is not None:

    @torch.library.triton_op("msa_fast::info_nce_rows_triton", mutates_args=())
    def _info_nce_rows_triton(q: torch.Tensor, k: torch.Tensor, temperature: float, negatives_queries: bool,
                              normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
        from msa_fast.kernels.info_nce import info_nce_rows_forward

        return info_nce_rows_forward(q, k, temperature, negatives_queries, normalize)

    @torch.library.triton_op("msa_fast::info_nce_rows_backward_triton", mutates_args=())
    def _info_nce_rows_backward_triton(grad_rows: torch.Tensor, q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor,
                                       temperature: float, negatives_queries: bool,
                                       normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
        from msa_fast.kernels.info_nce import info_nce_rows_backward

        return info_nce_rows_backward(grad_rows, q, k, lse, temperature, negatives_queries, normalize)

    torch.library.register_autograd("msa_fast::info_nce_rows_triton",
                                    _rows_backward_with(torch.ops.msa_fast.info_nce_rows_backward_triton.default),
                                    setup_context=_rows_setup_context)


# ----------------------------------------------------------------------------------------------
# Public op.


def info_nce(q, k, temperature=0.1, negatives="queries", *, normalize=True, reduction="mean", check_finite=False,
             backend="auto", global_batch=False):
    """InfoNCE with the positive on the diagonal (MMCL UMCC / ICL), fused: ops.md §3.

    Args:
        q, k: ``[N, D]`` float (fp32/fp16/bf16; fp64 runs on the reference under ``auto``), same shape,
            dtype and device; ``k`` may be ``q`` itself (the gradients of both uses add up).
        temperature: τ > 0 (0.1 by default).
        negatives: ``'queries'`` (default, MMCL: ``ℓ_i = LSE({a_ii} ∪ {b_ij : j ≠ i}) − a_ii`` with
            ``b_ij = q̂_i·q̂_j/τ``) or ``'keys'`` (CLIP/MoCo: ``ℓ_i = LSE_j a_ij − a_ii``,
            ``a_ij = q̂_i·k̂_j/τ``).
        normalize: cosine logits (default) or raw dot products.
        reduction: ``'mean'`` (default), ``'sum'`` or ``'none'`` (``[N]``).
        check_finite: raise ValueError on NaN/Inf in q or k (also ``MSA_FAST_CHECK_FINITE=1``);
            otherwise NaN in row j of q makes every ``'queries'`` term NaN, NaN in row i of k makes
            term i NaN (and every ``'keys'`` term).
        backend: ``'auto'``, ``'reference'``, ``'cpp'``, ``'triton'`` or ``'cuda'``.
        global_batch: compute the loss over the batch gathered from all ranks of torch.distributed
            (gradients flow back to this rank's rows; multiply by ``ddp_loss_scale()`` under DDP); a
            no-op when torch.distributed is not initialised. See :mod:`msa_fast.ops.distributed`.

    Returns an fp32 scalar (``[N]`` for ``'none'``). Memory O(N·D): the N × N logits are computed slab
    by slab and recomputed in backward, never stored. N = 1 gives exactly 0 with a zero gradient.
    """
    if global_batch:
        from msa_fast.ops.distributed import gather_rows
        q, k = gather_rows(q, k)                             # k is q stays k is q
    _check(q, k, temperature, negatives, reduction, check_finite)
    chosen = _dispatch.resolve(OP, backend, q, native_op="info_nce_rows", triton_op="info_nce_rows_triton")
    if chosen == "reference":
        return info_nce_reference(q, k, temperature, negatives, normalize=normalize, reduction=reduction)
    op = torch.ops.msa_fast.info_nce_rows_triton if chosen == "triton" else torch.ops.msa_fast.info_nce_rows
    loss_rows, _ = op(q, k, float(temperature), negatives == "queries", bool(normalize))
    if reduction == "none":
        return loss_rows
    if reduction == "sum":
        return loss_rows.sum()
    return loss_rows.mean()
