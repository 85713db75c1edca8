"""Supervised contrastive loss with pytorch-metric-learning semantics: ops.md §2.

PML's ``SupConLoss`` (default ``CosineSimilarity`` distance, ``AvgNonZeroReducer``;
https://github.com/KevinMusgrave/pytorch-metric-learning, ``losses/supcon_loss.py``), which adapts
Khosla et al. 2020 Eq. 2 (``L_out``, the sum over positives outside the log), plus MMCL's Eq. 8
(``L_in``, the sum inside the log) as ``variant='in'``.

This file holds the reference (the spec, dense ``N × N`` PyTorch autograd). The fused tile kernels
(ops.md §1) and the public op ``supcon_loss`` come with the engine.
"""

from __future__ import annotations

import torch

from msa_fast.ops import _contrastive as C

OP = "supcon_loss"
VARIANTS = ("out", "in")
REDUCTIONS = ("pml", "mean_pos", "sum", "none")


def _check(z, labels, temperature, variant, reduction, check_finite) -> None:
    C.check_features(OP, z=z)
    C.check_labels(OP, "labels", labels, z.shape[0], z.device, n_name="N", allow_float=False,
                   float_hint="; supcon compares labels by equality, so discretise continuous labels first "
                              "(e.g. labels.round().long(), or torch.bucketize into class ids)")
    if variant not in VARIANTS:
        raise ValueError(f"msa_fast.ops.{OP}: variant must be one of {VARIANTS}, got {variant!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"msa_fast.ops.{OP}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"msa_fast.ops.{OP}: temperature must be a positive float, got {temperature!r}")
    C.maybe_check_finite(OP, check_finite, z=z)


def supcon_per_anchor_reference(u: torch.Tensor, labels: torch.Tensor, temperature: float, variant: str):
    """Per-anchor losses ``ℓ`` [N] and positive counts ``n_i`` [N] from (already normalised) rows ``u``.

    ops.md §2 "Math", dense: ``s_ij = u_i·u_j/τ``; ``A(i) = {j ≠ i}``; ``P(i) = {j ≠ i : label_j = label_i}``.
    """
    N = u.shape[0]
    s = (u @ u.T) / temperature                                   # s_ij = u_i·u_j / τ
    eye = torch.eye(N, dtype=torch.bool, device=u.device)
    pos = (labels[:, None] == labels[None, :]) & ~eye             # P(i)
    n_pos = pos.sum(dim=1)                                        # n_i
    has_pos = n_pos > 0
    lse_all = torch.logsumexp(s.masked_fill(eye, float("-inf")), dim=1)   # LSE_{k∈A(i)} s_ik
    if variant == "out":
        # ℓ_i = −(1/n_i) Σ_{j∈P(i)} (s_ij − LSE_{k∈A(i)} s_ik), positives kept in the denominator.
        # Written as PML writes it (log_prob = s − LSE, then the mean over P(i)), so that the fp32
        # rounding — and hence the strict-positivity count of the 'pml' reducer — matches PML.
        log_prob = s - lse_all[:, None]
        mean_log_prob_pos = torch.where(pos, log_prob, 0).sum(dim=1) / n_pos.clamp_min(1).to(s.dtype)
        per_anchor = -mean_log_prob_pos
    else:
        # MMCL Eq. 8: ℓ_i = LSE_{k∈A(i)} s_ik − LSE_{j∈P(i)} s_ij. Rows without positives get a finite
        # dummy (their own logits) so that neither the value nor the gradient of LSE over ∅ = −∞ leaks.
        pos_logits = torch.where(pos | ~has_pos[:, None], s, float("-inf"))
        per_anchor = lse_all - torch.logsumexp(pos_logits, dim=1)
    # ℓ_i = 0 for anchors without positives (multiplied, not selected, so NaN rows still propagate
    # through other anchors and the gradient of the dummy is exactly 0).
    per_anchor = per_anchor * has_pos.to(s.dtype)
    return per_anchor, n_pos


def supcon_loss_reference(z, labels, temperature=0.07, *, variant="out", reduction="pml", normalize=True,
                          check_finite=False):
    """The pure-PyTorch specification of ``supcon_loss`` (ops.md §2).

    Args:
        z: ``[N, D]`` float features (fp32/fp16/bf16 computed in fp32; fp64 stays fp64 for gradcheck).
        labels: ``[N]`` int32/int64/bool class ids, compared by equality only.
        temperature: τ > 0.
        variant: ``'out'`` (PML / Khosla L_out) or ``'in'`` (MMCL Eq. 8, sum inside the log).
        reduction: ``'pml'`` (Σℓ over the count of strictly positive ℓ_i, counted in fp32),
            ``'mean_pos'`` (Σℓ over anchors with a positive), ``'sum'`` or ``'none'`` (``[N]``).
        normalize: cosine similarities (``n(z)``); ``False`` uses raw dot products.
        check_finite: raise ``ValueError`` on NaN/Inf in ``z`` (also ``MSA_FAST_CHECK_FINITE=1``).

    Returns:
        fp32 scalar (fp64 for fp64 input), or the per-anchor vector with ``reduction='none'``.
        NaN in any row of ``z`` makes the loss NaN (every anchor's denominator sees that row).
    """
    _check(z, labels, temperature, variant, reduction, check_finite)
    out_dtype = C.compute_dtype(z.dtype)
    N = z.shape[0]

    def zero():
        # §0.5 zero: exact 0, connected graph, zero (not None) gradient for z; NaN still propagates.
        value = C.zero_result(out_dtype, z)
        return value.expand(N).clone() if reduction == "none" else value

    # Batch gate (PML): N ≤ 1, no anchor with a positive, or no anchor with a negative → exactly 0.
    if N <= 1:
        return zero()
    same = labels[:, None] == labels[None, :]
    off_diag = ~torch.eye(N, dtype=torch.bool, device=z.device)
    if not bool((same & off_diag).any()) or not bool((~same).any()):
        return zero()

    x = z.to(out_dtype)
    u = C.normalize_rows(x) if normalize else x
    per_anchor, n_pos = supcon_per_anchor_reference(u, labels, float(temperature), variant)

    if reduction == "none":
        return per_anchor
    if reduction == "sum":
        return per_anchor.sum()
    if reduction == "mean_pos":
        # Σ_i ℓ_i / #{i : n_i > 0}; the count is a constant for autograd (≥ 1 once the gate passed).
        return per_anchor.sum() / int((n_pos > 0).sum())
    # 'pml' (AvgNonZeroReducer): Σ_i ℓ_i / #{i : ℓ_i > 0}, the strictly positive per-anchor losses
    # counted in fp32 (so fp32 underflow of the negatives at tiny τ drops an anchor, as in PML).
    count = int((per_anchor.detach().to(torch.float32) > 0).sum())
    if count == 0:
        return zero()
    return per_anchor.sum() / count
