"""Supervised contrastive loss with pytorch-metric-learning semantics: ops.md §2.

PML's ``SupConLoss`` (default ``CosineSimilarity`` distance, ``AvgNonZeroReducer``;
https://github.com/KevinMusgrave/pytorch-metric-learning, ``losses/supcon_loss.py``), which adapts
Khosla et al. 2020 Eq. 2 (``L_out``, the sum over positives outside the log), plus MMCL's Eq. 8
(``L_in``, the sum inside the log) as ``variant='in'``.

Side by side: the reference (the spec, dense ``N × N`` PyTorch autograd), the registrations of the
fused per-row op ``msa_fast::supcon_rows`` (C++: csrc/cpu/supcon.cpp; Triton: kernels/supcon.py) and
the public :func:`supcon_loss`, which applies PML's batch gate and reducer to the fused per-row losses
without a host sync.
"""

from __future__ import annotations

import torch

import importlib.util

from msa_fast.ops import _contrastive as C
from msa_fast.ops import _dispatch

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


# ----------------------------------------------------------------------------------------------
# Fused per-row op: fake tensors, autograd, Triton twin.


def _rows_fake(z, labels, temperature, variant_in, normalize):
    n = z.shape[0]
    dtype = C.compute_dtype(z.dtype)
    return tuple(z.new_empty(n, dtype=dtype) for _ in range(4))


def _rows_backward_fake(grad_rows, z, labels, lse_all, pos_stat, n_pos, temperature, variant_in, normalize):
    return torch.empty_like(z, memory_format=torch.contiguous_format)


def _rows_setup_context(ctx, inputs, output):
    z, labels, ctx.temperature, ctx.variant_in, ctx.normalize = inputs
    _, lse_all, pos_stat, n_pos = output
    ctx.mark_non_differentiable(lse_all, pos_stat, n_pos)
    ctx.save_for_backward(z, labels, lse_all, pos_stat, n_pos)


def _rows_backward_with(backward_op):
    def backward(ctx, grad_rows, _lse, _pos, _n):
        z, labels, lse_all, pos_stat, n_pos = ctx.saved_tensors
        dz = backward_op(grad_rows, z, labels, lse_all, pos_stat, n_pos, ctx.temperature, ctx.variant_in,
                         ctx.normalize)
        return dz, None, None, None, None

    return backward


if _dispatch.native_built():
    torch.library.register_fake("msa_fast::supcon_rows", _rows_fake)
    torch.library.register_fake("msa_fast::supcon_rows_backward", _rows_backward_fake)
    torch.library.register_autograd("msa_fast::supcon_rows",
                                    _rows_backward_with(torch.ops.msa_fast.supcon_rows_backward.default),
                                    setup_context=_rows_setup_context)

if importlib.util.find_spec("msa_fast.kernels.supcon") is not None:

    @torch.library.triton_op("msa_fast::supcon_rows_triton", mutates_args=())
    def _supcon_rows_triton(z: torch.Tensor, labels: torch.Tensor, temperature: float, variant_in: bool,
                            normalize: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        from msa_fast.kernels.supcon import supcon_rows_forward

        return supcon_rows_forward(z, labels, temperature, variant_in, normalize)

    @torch.library.triton_op("msa_fast::supcon_rows_backward_triton", mutates_args=())
    def _supcon_rows_backward_triton(grad_rows: torch.Tensor, z: torch.Tensor, labels: torch.Tensor,
                                     lse_all: torch.Tensor, pos_stat: torch.Tensor, n_pos: torch.Tensor,
                                     temperature: float, variant_in: bool, normalize: bool) -> torch.Tensor:
        from msa_fast.kernels.supcon import supcon_rows_backward

        return supcon_rows_backward(grad_rows, z, labels, lse_all, pos_stat, n_pos, temperature, variant_in,
                                    normalize)

    torch.library.register_autograd("msa_fast::supcon_rows_triton",
                                    _rows_backward_with(torch.ops.msa_fast.supcon_rows_backward_triton.default),
                                    setup_context=_rows_setup_context)


# ----------------------------------------------------------------------------------------------
# Public op.


def _reduce(loss_rows: torch.Tensor, n_pos: torch.Tensor, z: torch.Tensor, reduction: str) -> torch.Tensor:
    """PML's batch gate and reducer on the per-anchor losses, as tensor ops (no host sync)."""
    N = z.shape[0]
    has_pos = n_pos > 0
    # Gate: some anchor has a positive and some anchor has a negative (not all labels equal); N = 1
    # fails the first test. Failing batches give the §0.5 zero.
    gate = has_pos.any() & (n_pos < N - 1).any()
    zero = C.zero_result(loss_rows.dtype, z)
    if reduction == "none":
        return torch.where(gate, loss_rows, zero)
    total = loss_rows.sum()
    if reduction == "sum":
        return torch.where(gate, total, zero)
    if reduction == "mean_pos":
        return torch.where(gate, total / has_pos.sum().clamp_min(1), zero)
    # 'pml': AvgNonZeroReducer — strictly positive per-anchor losses counted in fp32; the count is a
    # constant for autograd.
    count = (loss_rows.detach().to(torch.float32) > 0).sum()
    return torch.where(gate & (count > 0), total / count.clamp_min(1), zero)


def supcon_loss(z, labels, temperature=0.07, *, variant="out", reduction="pml", normalize=True, check_finite=False,
                backend="auto", global_batch=False):
    """Supervised contrastive loss (PML semantics; MMCL Eq. 8 with ``variant='in'``), fused: ops.md §2.

    Args:
        z: ``[N, D]`` features, fp32/fp16/bf16 (fp64 runs on the reference under ``auto``).
        labels: ``[N]`` int32/int64/bool class ids compared by equality (discretise continuous labels).
        temperature: τ > 0 (0.07 by default; logits reach ±1/τ).
        variant: ``'out'`` (positives averaged outside the log, PML / Khosla L_out) or ``'in'``.
        reduction: ``'pml'`` (mean over strictly positive per-anchor losses), ``'mean_pos'``, ``'sum'``
            or ``'none'`` (``[N]``).
        normalize: cosine similarity (default) or raw dot products.
        check_finite: raise ValueError on NaN/Inf in z (also ``MSA_FAST_CHECK_FINITE=1``); otherwise a
            NaN row makes the loss NaN.
        backend: ``'auto'``, ``'reference'``, ``'cpp'``, ``'triton'`` or ``'cuda'``.
        global_batch: compute the loss over the batch gathered from all ranks of torch.distributed
            (gradients flow back to this rank's rows; multiply by ``ddp_loss_scale()`` under DDP); a
            no-op when torch.distributed is not initialised. See :mod:`msa_fast.ops.distributed`.

    Returns an fp32 scalar (``[N]`` for ``'none'``). Memory: O(N·D) — the N × N similarities are
    computed slab by slab and recomputed in backward, never stored.
    """
    if global_batch:
        from msa_fast.ops.distributed import gather_rows
        z, labels = gather_rows(z, labels)
    _check(z, labels, temperature, variant, reduction, check_finite)
    chosen = _dispatch.resolve(OP, backend, z, native_op="supcon_rows", triton_op="supcon_rows_triton")
    if chosen == "reference":
        return supcon_loss_reference(z, labels, temperature, variant=variant, reduction=reduction,
                                     normalize=normalize)
    op = torch.ops.msa_fast.supcon_rows_triton if chosen == "triton" else torch.ops.msa_fast.supcon_rows
    loss_rows, _, _, n_pos = op(z, labels.to(torch.int64), float(temperature), variant == "in", bool(normalize))
    return _reduce(loss_rows, n_pos, z, reduction)
