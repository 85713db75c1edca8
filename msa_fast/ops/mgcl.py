"""MGCL's collaborative contrastive loss (MGCL paper Eqs. 1–12): ops.md §5.

This file holds the reference: a dense implementation that enumerates the pair sets C1, C2 and C3
literally, as index lists per anchor sample (:func:`mgcl_pair_sets`), then takes
``ℓ_i = LSE_{P_i ∪ N_i} λ − LSE_{P_i} λ`` with the weight inside the exp. It is deliberately simple
and separate from the engine's mask logic (rows = 3B macro features, columns = 6B features, status
from view ids), so the two can check each other.

Below the reference: the registrations (fake tensors, autograd, optional Triton twin) of the fused
per-row op ``msa_fast::mgcl_rows`` (C++: csrc/cpu/mgcl.cpp — per macro row ``LSE_pos`` and
``LSE_all``, masks and weights built in-kernel from labels and view/sample indices) and the public
:func:`mgcl_contrastive_loss`, which merges the three rows of each sample with logsumexp and forms
``ℓ_i`` with tensor ops, without a host sync.

Feature indices of the pair lists point into ``F = cat(T_a, V_a, A_a, T_i, V_i, A_i)`` ``[6B, d]``:
feature ``(view, sample j)`` is row ``view·B + j`` with views 0–2 the macro (T, V, A) and 3–5 the
micro (T, V, A).

**Not** the CLGSI implementation shortcut (Gram matrix times a 0/weight mask before the exp, which adds
``exp(0) = 1`` for every non-pair and counts (i, i) as a positive): only real pairs enter the sums.
"""

from __future__ import annotations

import importlib.util

import torch

from msa_fast.ops import _contrastive as C
from msa_fast.ops import _dispatch

OP = "mgcl_contrastive_loss"
WEIGHTS = ("mgcl", "clgsi", "none")
REDUCTIONS = ("mean", "sum", "none")
SAME_SAMPLE_C2 = ("literal3", "ordered6")
T, V, A = 0, 1, 2          # macro views; the micro view of X is X + 3
MICRO = 3
# C2 same-sample pairs (first element = anchor row): 'literal3' has (T,A), (T,V) on row T_a and (V,A)
# on row V_a; 'ordered6' adds the three reversed pairs.
_C2_SAME = {"literal3": ((T, A), (T, V), (V, A)),
            "ordered6": ((T, A), (T, V), (V, A), (A, T), (V, T), (A, V))}
# C2 cross-sample: every ordered (X, Y) with X ≠ Y.
_C2_CROSS = tuple((x, y) for x in (T, V, A) for y in (T, V, A) if x != y)


def _is_real(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float))


def _check(macro, micro, y, delta, tau, label_scale, pos_weight, neg_weight, gain, reduction, same_sample_c2,
           check_finite):
    for name, group in (("macro", macro), ("micro", micro)):
        if not isinstance(group, (tuple, list)) or len(group) != 3:
            raise TypeError(f"msa_fast.ops.{OP}: {name} must be a 3-tuple (T, V, A) of [B, d] tensors, got "
                            f"{type(group).__name__}{'' if not isinstance(group, (tuple, list)) else f' of length {len(group)}'}")
    feats = {f"{g}[{i}]": t for g, group in (("macro", macro), ("micro", micro)) for i, t in enumerate(group)}
    C.check_features(OP, **feats)
    C.check_same_shape(OP, **feats)
    # y: the labels are metadata read in fp32 (§5 "Label arithmetic"); any real dtype, no gradient.
    C.check_labels(OP, "y", y, macro[0].shape[0], macro[0].device, n_name="B", allow_float=True)
    for name, value in (("pos_weight", pos_weight), ("neg_weight", neg_weight)):
        if value not in WEIGHTS:
            raise ValueError(f"msa_fast.ops.{OP}: {name} must be one of {WEIGHTS}, got {value!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"msa_fast.ops.{OP}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if same_sample_c2 not in SAME_SAMPLE_C2:
        raise ValueError(f"msa_fast.ops.{OP}: same_sample_c2 must be one of {SAME_SAMPLE_C2}, got {same_sample_c2!r}")
    if not _is_real(tau) or not tau > 0:
        raise ValueError(f"msa_fast.ops.{OP}: tau must be a positive float, got {tau!r}")
    if not _is_real(label_scale) or not label_scale > 0:
        raise ValueError(f"msa_fast.ops.{OP}: label_scale must be a positive float, got {label_scale!r}")
    for name, value in (("delta", delta), ("gain", gain)):
        if not _is_real(value):
            raise ValueError(f"msa_fast.ops.{OP}: {name} must be a float, got {value!r}")
    C.maybe_check_finite(OP, check_finite, **feats, y=y)


def label_distances(y: torch.Tensor, label_scale: float) -> torch.Tensor:
    """``E_ij = |ỹ_i − ỹ_j|`` with ``ỹ = float32(y) / float32(label_scale)``, all in fp32 (§5)."""
    yt = y.to(torch.float32) / torch.tensor(label_scale, dtype=torch.float32, device=y.device)
    return (yt[:, None] - yt[None, :]).abs()


def pair_weights(E: torch.Tensor, positive: torch.Tensor, delta: float, gain: float, pos_weight: str,
                 neg_weight: str) -> torch.Tensor:
    """The pair weight W (fp32): ``W⁺(E)`` on positives, ``W⁻(E)`` on negatives (§5 "Weights").

    A weight of 0 is not a mask: the pair still adds ``exp(0) = 1`` to both sums.
    """
    d = torch.tensor(delta, dtype=torch.float32, device=E.device)
    g = torch.tensor(gain, dtype=torch.float32, device=E.device)
    if pos_weight == "mgcl":
        w_pos = g * torch.tanh(E - d).abs()                   # gain·|tanh(E − δ)|
    elif pos_weight == "clgsi":
        w_pos = g * torch.tanh(2 * d - E)                     # gain·tanh(2δ − E)
    else:
        w_pos = torch.ones_like(E)
    if neg_weight == "mgcl":
        w_neg = g * torch.tanh(E).abs()                       # gain·|tanh(E)|
    elif neg_weight == "clgsi":
        w_neg = torch.tensor(0.8, dtype=torch.float32, device=E.device) * g * torch.tanh(E).abs()
    else:
        w_neg = torch.ones_like(E)
    return torch.where(positive, w_pos, w_neg)


def mgcl_pair_sets(y: torch.Tensor, delta: float = 0.4, label_scale: float = 3.0,
                   same_sample_c2: str = "literal3") -> list[dict[str, torch.Tensor]]:
    """The pair sets ``P_i ∪ N_i`` of every anchor sample i, enumerated literally (§5 "Pair sets").

    Returns one dict per sample with equally long ``anchor`` and ``other`` (int64 rows of ``F``), ``E``
    (fp32 label distance of the pair) and ``positive`` (bool). Expected sizes: ``|P_i| = 9n_p + 6``
    (``'literal3'``) or ``9n_p + 9`` (``'ordered6'``), ``|N_i| = 12n_n``.
    """
    B = y.shape[0]
    dev = y.device
    E = label_distances(y, label_scale)
    delta32 = torch.tensor(delta, dtype=torch.float32, device=dev)
    samples = torch.arange(B, device=dev)
    out = []
    for i in range(B):
        anchors, others, dists, status = [], [], [], []

        def add(a_view, b_rows, e, pos):
            anchors.append(torch.full_like(b_rows, a_view * B + i))
            others.append(b_rows)
            dists.append(e)
            status.append(pos)

        other = samples[samples != i]                           # every j ≠ i
        e_other = E[i, other]
        pos_other = e_other <= delta32                          # positive iff E_ij ≤ float32(δ); NaN → negative
        neg = other[~pos_other]                                 # Neg(i)
        one = torch.tensor([i], device=dev)
        zero_e = torch.zeros(1, dtype=torch.float32, device=dev)
        true = torch.ones(1, dtype=torch.bool, device=dev)
        # C1, same modality (macro): (X_a^i, X_a^j), j ≠ i, status by E_ij.
        for x in (T, V, A):
            add(x, x * B + other, e_other, pos_other)
        # C2 same sample: cross-modal pairs of sample i itself, positive with E = 0.
        for x, yv in _C2_SAME[same_sample_c2]:
            add(x, yv * B + one, zero_e, true)
        # C2 cross sample: (X_a^i, Y_a^j), X ≠ Y ordered, j ≠ i, status by E_ij.
        for x, yv in _C2_CROSS:
            add(x, yv * B + other, e_other, pos_other)
        # C3, macro–micro same modality: positive (X_a^i, X_i^i) with E = 0; negatives (X_a^i, X_i^k) for
        # k ∈ Neg(i). Micro features of positive other samples are not used.
        for x in (T, V, A):
            add(x, (x + MICRO) * B + one, zero_e, true)
            add(x, (x + MICRO) * B + neg, E[i, neg], torch.zeros_like(neg, dtype=torch.bool))
        out.append({"anchor": torch.cat(anchors), "other": torch.cat(others), "E": torch.cat(dists),
                    "positive": torch.cat(status)})
    return out


def _segment_logsumexp(x: torch.Tensor, seg: torch.Tensor, n: int) -> torch.Tensor:
    """``LSE`` of ``x`` within each segment id ``0 … n−1`` (every segment non-empty here).

    The running max is detached: the LSE's gradient does not depend on it.
    """
    m = torch.full((n,), float("-inf"), dtype=x.dtype, device=x.device)
    m = m.scatter_reduce(0, seg, x.detach(), reduce="amax", include_self=True)
    total = torch.zeros(n, dtype=x.dtype, device=x.device).index_add(0, seg, torch.exp(x - m[seg]))
    return m + torch.log(total)


def mgcl_contrastive_loss_reference(macro, micro, y, delta=0.4, tau=0.03, label_scale=3.0, pos_weight="mgcl", *,
                                    neg_weight="mgcl", gain=1.5, reduction="mean", same_sample_c2="literal3",
                                    normalize=True, check_finite=False):
    """The pure-PyTorch specification of ``mgcl_contrastive_loss`` (ops.md §5).

    Args:
        macro, micro: 3-tuples ``(T, V, A)`` of ``[B, d]`` features (same shape, dtype and device).
        y: ``[B]`` labels (read in fp32, no gradient).
        delta: δ, the label-distance threshold (``E ≤ δ`` is positive) and the zero of ``W⁺`` ('mgcl').
        tau: τ of the logits ``λ = W·sim/τ``.
        label_scale: ``ỹ = y/label_scale`` (3 for MOSI/MOSEI, 1 for CH-SIMS).
        pos_weight, neg_weight: ``'mgcl'``, ``'clgsi'`` or ``'none'`` (§5 "Weights"); gain scales both.
        reduction: ``'mean'`` (default), ``'sum'`` (the paper's Eq. 12) or ``'none'`` (``[B]``).
        same_sample_c2: ``'literal3'`` (3 same-sample cross-modal pairs) or ``'ordered6'`` (both orders).
        normalize: cosine similarities; ``False`` uses raw dot products.

    Returns:
        fp32 (fp64 for fp64 input). NaN in a feature propagates to every sample one of whose pairs
        uses it; a NaN label makes E NaN, the pair negative with a NaN weight, so the loss is NaN.
    """
    _check(macro, micro, y, delta, tau, label_scale, pos_weight, neg_weight, gain, reduction, same_sample_c2,
           check_finite)
    feats = tuple(macro) + tuple(micro)
    dtype = C.compute_dtype(feats[0].dtype)
    B = y.shape[0]
    sets = mgcl_pair_sets(y, delta, label_scale, same_sample_c2)
    has_neg = [bool((~s["positive"]).any()) for s in sets]
    if not any(has_neg):
        # B = 1 or all labels within δ of each other: every N_i is empty → exactly 0 (§0.5). The labels
        # join the connected zero (detached) so a NaN label still gives NaN.
        zero = C.zero_result(dtype, *feats, y.detach().to(dtype))
        return zero.expand(B).clone() if reduction == "none" else zero

    F = torch.cat([f.to(dtype) for f in feats], dim=0)                     # [6B, d]
    Fn = C.normalize_rows(F) if normalize else F                            # sim(a, b) = n(a)·n(b)
    # The per-sample lists, concatenated with their sample id; each listed pair's similarity is read off
    # one macro × all Gram matrix (anchors are always macro rows), which keeps the reference usable at
    # benchmark sizes (no [pairs, d] gather).
    seg = torch.cat([torch.full_like(s["anchor"], i) for i, s in enumerate(sets)])
    anchor = torch.cat([s["anchor"] for s in sets])
    other = torch.cat([s["other"] for s in sets])
    positive = torch.cat([s["positive"] for s in sets])
    w = pair_weights(torch.cat([s["E"] for s in sets]), positive, delta, gain, pos_weight, neg_weight).to(dtype)
    sim = (Fn[: 3 * B] @ Fn.T)[anchor, other]
    logits = w * sim / tau                                                  # λ = W·sim/τ, W inside the exp
    lse_all = _segment_logsumexp(logits, seg, B)                            # LSE over P_i ∪ N_i
    lse_pos = _segment_logsumexp(logits[positive], seg[positive], B)        # LSE over P_i (never empty)
    # Empty N_i → ℓ_i = 0 (multiplied by 0, so the graph stays connected and NaN still propagates).
    per_sample = (lse_all - lse_pos) * torch.tensor(has_neg, dtype=dtype, device=F.device)
    if reduction == "none":
        return per_sample
    if reduction == "sum":
        return per_sample.sum()
    return per_sample.mean()


# ----------------------------------------------------------------------------------------------
# Fused per-row op (ops.md §1/§5): rows = the 3B macro features, statistics (lse_pos, lse_all) per row.
# C++: csrc/cpu/mgcl.cpp; Triton twin: kernels/mgcl.py (registered only when that module exists).


def _rows_fake(macro, micro, y, delta, tau, label_scale, pos_weight, neg_weight, gain, ordered6, normalize):
    dtype = C.compute_dtype(macro.dtype)
    n = macro.shape[0]
    return macro.new_empty(n, dtype=dtype), macro.new_empty(n, dtype=dtype)


def _rows_backward_fake(grad_lse_pos, grad_lse_all, macro, micro, y, lse_pos, lse_all, delta, tau, label_scale,
                        pos_weight, neg_weight, gain, ordered6, normalize):
    return (torch.empty_like(macro, memory_format=torch.contiguous_format),
            torch.empty_like(micro, memory_format=torch.contiguous_format))


def _rows_setup_context(ctx, inputs, output):
    macro, micro, y, *params = inputs
    ctx.params = tuple(params)
    lse_pos, lse_all = output
    ctx.save_for_backward(macro, micro, y, lse_pos, lse_all)


def _rows_backward_with(backward_op):
    def backward(ctx, grad_lse_pos, grad_lse_all):
        macro, micro, y, lse_pos, lse_all = ctx.saved_tensors
        # An output the graph did not use arrives as None or zeros; the kernel wants both.
        if grad_lse_pos is None:
            grad_lse_pos = torch.zeros_like(lse_pos)
        if grad_lse_all is None:
            grad_lse_all = torch.zeros_like(lse_all)
        dmacro, dmicro = backward_op(grad_lse_pos, grad_lse_all, macro, micro, y, lse_pos, lse_all, *ctx.params)
        return (dmacro, dmicro) + (None,) * (1 + len(ctx.params))

    return backward


if _dispatch.native_built():
    torch.library.register_fake("msa_fast::mgcl_rows", _rows_fake)
    torch.library.register_fake("msa_fast::mgcl_rows_backward", _rows_backward_fake)
    torch.library.register_autograd("msa_fast::mgcl_rows",
                                    _rows_backward_with(torch.ops.msa_fast.mgcl_rows_backward.default),
                                    setup_context=_rows_setup_context)

if importlib.util.find_spec("msa_fast.kernels.mgcl") is not None:

    @torch.library.triton_op("msa_fast::mgcl_rows_triton", mutates_args=())
    def _mgcl_rows_triton(macro: torch.Tensor, micro: torch.Tensor, y: torch.Tensor, delta: float, tau: float,
                          label_scale: float, pos_weight: str, neg_weight: str, gain: float, ordered6: bool,
                          normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
        from msa_fast.kernels.mgcl import mgcl_rows_forward

        return mgcl_rows_forward(macro, micro, y, delta, tau, label_scale, pos_weight, neg_weight, gain, ordered6,
                                 normalize)

    @torch.library.triton_op("msa_fast::mgcl_rows_backward_triton", mutates_args=())
    def _mgcl_rows_backward_triton(grad_lse_pos: torch.Tensor, grad_lse_all: torch.Tensor, macro: torch.Tensor,
                                   micro: torch.Tensor, y: torch.Tensor, lse_pos: torch.Tensor, lse_all: torch.Tensor,
                                   delta: float, tau: float, label_scale: float, pos_weight: str, neg_weight: str,
                                   gain: float, ordered6: bool, normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
        from msa_fast.kernels.mgcl import mgcl_rows_backward

        return mgcl_rows_backward(grad_lse_pos, grad_lse_all, macro, micro, y, lse_pos, lse_all, delta, tau,
                                  label_scale, pos_weight, neg_weight, gain, ordered6, normalize)

    torch.library.register_autograd("msa_fast::mgcl_rows_triton",
                                    _rows_backward_with(torch.ops.msa_fast.mgcl_rows_backward_triton.default),
                                    setup_context=_rows_setup_context)


# ----------------------------------------------------------------------------------------------
# Public op.


def _has_negatives(y: torch.Tensor, label_scale: float, delta: float) -> torch.Tensor:
    """``[B]`` bool: sample i has some j ≠ i with ``¬(E_ij ≤ δ)`` — the reference's ``N_i ≠ ∅`` — in O(B).

    fp32 subtraction is monotone in each operand, so ``max_j E_ij = max(ỹ_i − min ỹ, max ỹ − ỹ_i)``
    exactly; a NaN label makes min/max NaN, hence every sample has a (NaN, negative) pair, as in the
    reference. B = 1 has no j ≠ i.
    """
    yt = y.to(torch.float32) / torch.tensor(label_scale, dtype=torch.float32, device=y.device)
    far = torch.maximum(yt - yt.min(), yt.max() - yt)
    has_neg = ~(far <= torch.tensor(delta, dtype=torch.float32, device=y.device))
    return has_neg & (y.shape[0] > 1)


def mgcl_contrastive_loss(macro, micro, y, delta=0.4, tau=0.03, label_scale=3.0, pos_weight="mgcl", *,
                          neg_weight="mgcl", gain=1.5, reduction="mean", same_sample_c2="literal3", normalize=True,
                          check_finite=False, backend="auto", global_batch=False):
    """MGCL's collaborative contrastive loss, fused: ops.md §5 (pair sets C1/C2/C3, weights inside the exp).

    Args:
        macro, micro: 3-tuples ``(T, V, A)`` of ``[B, d]`` features, fp32/fp16/bf16 (fp64 runs on the
            reference under ``auto``; a forced ``'cpp'`` accepts it, for gradcheck).
        y: ``[B]`` labels (read in fp32: ``ỹ = y/label_scale``, ``E = |ỹ_i − ỹ_j|``; no gradient).
        delta: δ, positive iff ``E ≤ δ`` (and the zero of ``W⁺`` for ``'mgcl'``).
        tau: τ of the logits ``λ = W·sim/τ``.
        label_scale: 3 for MOSI/MOSEI, 1 for CH-SIMS.
        pos_weight, neg_weight: ``'mgcl'``, ``'clgsi'`` or ``'none'``; ``gain`` scales both. A weight of 0
            is not a mask: the pair still adds ``exp(0) = 1``.
        reduction: ``'mean'``, ``'sum'`` (the paper's Eq. 12) or ``'none'`` (``[B]``).
        same_sample_c2: ``'literal3'`` (the paper's 3 same-sample cross-modal pairs) or ``'ordered6'``.
        normalize: cosine similarities (default) or raw dot products.
        check_finite: raise ValueError on NaN/Inf in the features or labels (also
            ``MSA_FAST_CHECK_FINITE=1``); otherwise NaN propagates as in the reference.
        backend: ``'auto'``, ``'reference'``, ``'cpp'``, ``'triton'`` or ``'cuda'``.
        global_batch: compute the loss over the B samples gathered from all ranks of torch.distributed
            (gradients flow back to this rank's rows; multiply by ``ddp_loss_scale()`` under DDP); a
            no-op when torch.distributed is not initialised. See :mod:`msa_fast.ops.distributed`.

    Returns an fp32 scalar (``[B]`` for ``'none'``; fp64 for fp64 input). Memory O(B·d): the kernel
    computes per macro row ``LSE_pos`` and ``LSE_all`` slab by slab (recomputed in backward); the three
    rows of a sample are merged here with logsumexp and ``ℓ_i = LSE_all − LSE_pos`` (0 without
    negatives), all as tensor ops, without a host sync.
    """
    if global_batch and len(macro) == len(micro) == 3:   # malformed tuples are left to _check
        from msa_fast.ops.distributed import gather_rows
        *feats, y = gather_rows(*macro, *micro, y)
        macro, micro = tuple(feats[:3]), tuple(feats[3:])
    _check(macro, micro, y, delta, tau, label_scale, pos_weight, neg_weight, gain, reduction, same_sample_c2,
           check_finite)
    chosen = _dispatch.resolve(OP, backend, macro[0], native_op="mgcl_rows", triton_op="mgcl_rows_triton")
    if chosen == "reference":
        return mgcl_contrastive_loss_reference(macro, micro, y, delta, tau, label_scale, pos_weight,
                                               neg_weight=neg_weight, gain=gain, reduction=reduction,
                                               same_sample_c2=same_sample_c2, normalize=normalize)
    op = torch.ops.msa_fast.mgcl_rows_triton if chosen == "triton" else torch.ops.msa_fast.mgcl_rows
    feats = tuple(macro) + tuple(micro)
    B = y.shape[0]
    lse_pos, lse_all = op(torch.cat(tuple(macro)), torch.cat(tuple(micro)), y, float(delta), float(tau),
                          float(label_scale), pos_weight, neg_weight, float(gain), same_sample_c2 == "ordered6",
                          bool(normalize))
    # Merge the three rows (T, V, A) of each sample: LSE over P_i ∪ N_i and over P_i.
    lse_all_i = torch.logsumexp(lse_all.view(3, B), dim=0)
    lse_pos_i = torch.logsumexp(lse_pos.view(3, B), dim=0)
    has_neg = _has_negatives(y, float(label_scale), float(delta))
    # Empty N_i → ℓ_i = 0; multiplied (not selected) so that NaN still propagates, as in the reference.
    per_sample = (lse_all_i - lse_pos_i) * has_neg.to(lse_all_i.dtype)
    if reduction == "none":
        loss = per_sample
    elif reduction == "sum":
        loss = per_sample.sum()
    else:
        loss = per_sample.mean()
    # No sample has a negative (B = 1, all labels within δ) → the §0.5 zero, the labels included.
    zero = C.zero_result(lse_all.dtype, *feats, y.detach().to(lse_all.dtype))
    return torch.where(has_neg.any(), loss, zero)
