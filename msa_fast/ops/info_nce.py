"""InfoNCE with the positive on the diagonal (MMCL's UMCC / ICL): ops.md §3.

This file holds the reference (dense logits and ``torch.logsumexp``). The fused tile kernels
(ops.md §1) and the public op ``info_nce`` come with the engine.
"""

from __future__ import annotations

import torch

from msa_fast.ops import _contrastive as C

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
