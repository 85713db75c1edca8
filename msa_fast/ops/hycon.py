"""HyCon's three contrastive terms (IAMCL, IEMCL, SCL) as printed in the HyCon paper (arXiv v1): ops.md §4.

Raw cosine ratios with no log and no exp (by default), refinement terms and a modality margin α.
This file holds the reference: a dense ``3K × 3K`` Gram matrix of ``[Z_l; Z_a; Z_v]`` with boolean
masks, the per-anchor sums written as masked tensor reductions. Below it: the registrations of the
fused per-row op ``msa_fast::hycon_rows`` (C++: csrc/cpu/hycon.cpp) and the public :func:`hycon_loss`,
which composes the three terms from the fused per-row sums without a host sync. The Triton twin
``msa_fast::hycon_rows_triton`` (kernels/hycon.py) computes the same per-row sums.

Row layout of the Gram matrix: row ``r = m·K + k`` is anchor (k, m), modality m ∈ (l, a, v) = (0, 1, 2).
"""

from __future__ import annotations

import importlib.util

import torch

from msa_fast.ops import _contrastive as C
from msa_fast.ops import _dispatch

OP = "hycon_loss"
SIM_TRANSFORMS = ("cos", "cos01", "exp_tau")
DEN_GUARDS = ("skip", "clamp", "none")
REDUCTIONS = ("mean", "sum")


def _check(x_l, x_a, x_v, y, alpha, use_log, sim_transform, tau, den_eps, den_guard, reduction, check_finite):
    C.check_features(OP, x_l=x_l, x_a=x_a, x_v=x_v)
    C.check_same_shape(OP, x_l=x_l, x_a=x_a, x_v=x_v)
    # y is metadata (classes), not a differentiable feature: any float dtype is accepted (§4 "Shapes").
    C.check_labels(OP, "y", y, x_l.shape[0], x_l.device, n_name="K", allow_float=True)
    if sim_transform not in SIM_TRANSFORMS:
        raise ValueError(f"msa_fast.ops.{OP}: sim_transform must be one of {SIM_TRANSFORMS}, got {sim_transform!r}")
    if use_log and sim_transform == "cos":
        raise ValueError(f"msa_fast.ops.{OP}: use_log=True needs sim_transform='cos01' or 'exp_tau': the raw "
                         f"cosine ratio of sim_transform='cos' can be <= 0, where log is undefined")
    if den_guard not in DEN_GUARDS:
        raise ValueError(f"msa_fast.ops.{OP}: den_guard must be one of {DEN_GUARDS}, got {den_guard!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"msa_fast.ops.{OP}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not tau > 0:
        raise ValueError(f"msa_fast.ops.{OP}: tau must be a positive float, got {tau!r}")
    if isinstance(den_eps, bool) or not isinstance(den_eps, (int, float)) or not den_eps >= 0:
        raise ValueError(f"msa_fast.ops.{OP}: den_eps must be a float >= 0, got {den_eps!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise ValueError(f"msa_fast.ops.{OP}: alpha must be a float, got {alpha!r}")
    C.maybe_check_finite(OP, check_finite, x_l=x_l, x_a=x_a, x_v=x_v, y=y)


def hycon_classes(y: torch.Tensor) -> torch.Tensor:
    """§4 "Shapes": float y → ``c_k = 1[y_k ≥ 0]`` (a NaN label is class 0); bool/int y → class ids."""
    if y.is_floating_point():
        return (y >= 0).to(torch.int64)
    return y.to(torch.int64)


def _ratio_term(f, pos, neg, valid, use_log, den_eps, den_guard):
    """Per-anchor ratio term ``t`` and the anchors V_R that survive the guard (§4 "Anchor sets")."""
    # R = num/den, num = Σ_pos f(s), den = num + Σ_neg f(s). Masked entries are selected out (where),
    # so a NaN only enters through the pairs of the anchor's own sets.
    num = torch.where(pos, f, 0).sum(dim=1)
    den = num + torch.where(neg, f, 0).sum(dim=1)
    if den_guard == "skip":
        # |den| < den_eps: drop the anchor from the R-mean (its Ref still counts). NaN < eps is False,
        # so a NaN denominator stays in V_R and propagates.
        valid_r = valid & ~(den.abs() < den_eps)
    else:
        valid_r = valid
        if den_guard == "clamp":
            # den ← sign(den)·max(|den|, den_eps), with sign(0) = +1.
            sign = torch.where(den < 0, -1.0, 1.0).to(den.dtype)
            den = sign * den.abs().clamp_min(den_eps)
    # Anchors outside V_R get R = 1 (a constant): their discarded terms carry no inf/NaN gradient, and
    # −log R stays finite for them.
    ratio = torch.where(valid_r, num / torch.where(valid_r, den, 1.0), 1.0)
    t = -torch.log(ratio) if use_log else -ratio      # t = −R, or −log R with use_log=True
    return t, valid_r


def hycon_loss_reference(x_l, x_a, x_v, y, alpha=0.8, *, use_log=False, sim_transform="cos", tau=0.1,
                         den_eps=1e-6, den_guard="skip", reduction="mean", drop_zero=False, return_stats=False,
                         check_finite=False):
    """The pure-PyTorch specification of ``hycon_loss`` (ops.md §4).

    Args:
        x_l, x_a, x_v: ``[K, d]`` features of the language, audio and visual modalities (same shape,
            dtype and device); each row is normalised, ``s`` is the raw cosine in [−1, 1].
        y: ``[K]``: float (classes ``1[y ≥ 0]``; any float dtype) or bool/int class ids. No gradient.
        alpha: the modality margin α of the IEMCL refinement and of SCL (α = 1: "w/o modality margin").
        use_log: ratio term ``−log R`` instead of ``−R`` (needs ``sim_transform`` 'cos01' or 'exp_tau').
        sim_transform: ``f`` inside the ratio: 'cos' ``s``, 'cos01' ``(1 + s)/2``, 'exp_tau' ``exp(s/τ)``.
        tau: τ of 'exp_tau'.
        den_eps, den_guard: the ratio guard for ``|den| < den_eps``: 'skip' the anchor's R, 'clamp' the
            denominator to ``sign(den)·den_eps`` (sign(0) = +1), or 'none' (raw division).
        reduction: 'mean' (default) or 'sum' over the same anchor sets.
        drop_zero: remove samples with ``y == 0`` from IAMCL/IEMCL as anchors and candidates (SCL keeps
            them).
        return_stats: also return ``{n_anchors, n_valid_anchors, n_skipped_iamcl, n_skipped_iemcl}``
            (0-dim int64 tensors): ``n_anchors`` = 3 × the samples eligible as anchors (3K unless
            ``drop_zero``), ``n_valid_anchors`` = |V|, ``n_skipped_*`` = |V| − |V_R| of each term.

    Returns:
        ``(iamcl, iemcl, scl)`` fp32 scalars (fp64 for fp64 input), plus the stats dict if asked. NaN in a
        feature row propagates to every term that uses one of its pairs (a NaN denominator is never
        skipped); a NaN float label only makes that sample class 0.
    """
    _check(x_l, x_a, x_v, y, alpha, use_log, sim_transform, tau, den_eps, den_guard, reduction, check_finite)
    dtype = C.compute_dtype(x_l.dtype)
    K = x_l.shape[0]
    dev = x_l.device
    alpha, tau, den_eps = float(alpha), float(tau), float(den_eps)

    # z_k^m = n(x_k^m), stacked as [Z_l; Z_a; Z_v]; s = the dense 3K × 3K raw-cosine Gram matrix.
    z = torch.cat([C.normalize_rows(x.to(dtype)) for x in (x_l, x_a, x_v)], dim=0)
    s = z @ z.T

    modality = torch.arange(3, device=dev).repeat_interleave(K)          # m of row r
    sample = torch.arange(K, device=dev).repeat(3)                         # k of row r
    cls = hycon_classes(y)[sample]
    keep = torch.ones(3 * K, dtype=torch.bool, device=dev)
    if drop_zero:
        keep = (y != 0)[sample]                                            # y == 0 out of IAMCL/IEMCL
    same_view = modality[:, None] == modality[None, :]
    same_sample = sample[:, None] == sample[None, :]
    same_class = cls[:, None] == cls[None, :]
    cand = keep[None, :] & keep[:, None]                                   # kept anchor and kept candidate

    # Pos1 = {j ≠ k : c_j = c_k}, Neg1 = {j : c_j ≠ c_k} (kept samples only), per modality relation.
    pos_intra = cand & same_view & ~same_sample & same_class               # IAMCL positives (N_k)
    neg_intra = cand & same_view & ~same_class                             # IAMCL negatives (M_k)
    pos_inter = cand & ~same_view & ~same_sample & same_class              # IEMCL positives (2N_k)
    neg_inter = cand & ~same_view & ~same_class                            # IEMCL negatives (2M_k)
    scl_pairs = ~same_view & same_sample                                   # SCL: (k, m) with (k, m′ ≠ m)

    n_k = pos_intra.sum(dim=1)                                             # N_k
    valid = keep & (n_k >= 1)                                              # V: anchors with a positive

    # Ratio transform f (ratio only); the refinements and SCL use the raw s.
    if sim_transform == "cos":
        f = s
    elif sim_transform == "cos01":
        f = (1 + s) / 2
    else:
        f = torch.exp(s / tau)

    def reduce(values, mask):
        count = int(mask.sum())
        total = torch.where(mask, values, 0).sum()
        return total if reduction == "sum" else total / max(count, 1)

    def term(pos, neg, target, ref_scale):
        t, valid_r = _ratio_term(f, pos, neg, valid, use_log, den_eps, den_guard)
        # Ref = (1/(ref_scale·N_k)) Σ_pos (s − target)²: target 1 for IAMCL (N_k pairs), α for IEMCL (2N_k).
        ref = torch.where(pos, (s - target) ** 2, 0).sum(dim=1) / (ref_scale * n_k.clamp_min(1)).to(dtype)
        # L = mean_{V_R} t + mean_V Ref; empty V_R → 0 for the ratio part (a connected 0 via the masked sum).
        return reduce(t, valid_r) + reduce(ref, valid), valid_r

    stats = {
        "n_anchors": keep.sum(),
        "n_valid_anchors": valid.sum(),
    }
    if not bool(valid.any()):
        # Empty V: IAMCL = IEMCL = 0 exactly (§0.5), every feature gets a zero gradient.
        iamcl = iemcl = C.zero_result(dtype, x_l, x_a, x_v)
        stats["n_skipped_iamcl"] = stats["n_skipped_iemcl"] = torch.zeros((), dtype=torch.int64, device=dev)
    else:
        iamcl, vr_intra = term(pos_intra, neg_intra, 1.0, 1)
        iemcl, vr_inter = term(pos_inter, neg_inter, alpha, 2)
        stats["n_skipped_iamcl"] = (valid & ~vr_intra).sum()
        stats["n_skipped_iemcl"] = (valid & ~vr_inter).sum()

    # SCL: S_k^m = ½ Σ_{m′≠m} (s(z_k^m, z_k^{m′}) − α)², averaged (or summed) over all 3K anchors.
    scl_rows = 0.5 * torch.where(scl_pairs, (s - alpha) ** 2, 0).sum(dim=1)
    scl = scl_rows.sum() if reduction == "sum" else scl_rows.mean()

    if return_stats:
        return iamcl, iemcl, scl, stats
    return iamcl, iemcl, scl


# ----------------------------------------------------------------------------------------------
# Fused per-row op ``msa_fast::hycon_rows`` (C++: csrc/cpu/hycon.cpp; its Triton twin
# ``msa_fast::hycon_rows_triton``, kernels/hycon.py, is registered when that module exists): fake tensors,
# autograd, and the public op composing the three terms from the per-row statistics.
#
# stats [3K, 7] per row r = m·K + k: (Σ_Pos1 f(s), Σ_Neg1 f(s), Σ_Pos1 (s − 1)²) over the same view,
# (Σ_Pos f(s), Σ_Neg f(s), Σ_Pos (s − α)²) over the other views, and SCL's Σ_{m′≠m} (s − α)² — unhalved,
# the ½ is applied here. classes [K] int64 with −1 for samples dropped by drop_zero.

N_STATS = 7


def _rows_fake(x, classes, alpha, transform, tau):
    return x.new_empty((x.shape[0], N_STATS), dtype=C.compute_dtype(x.dtype))


def _rows_backward_fake(grad_stats, x, classes, alpha, transform, tau):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _rows_setup_context(ctx, inputs, output):
    x, classes, ctx.alpha, ctx.transform, ctx.tau = inputs
    ctx.save_for_backward(x, classes)


def _rows_backward_with(backward_op):
    def backward(ctx, grad_stats):
        x, classes = ctx.saved_tensors
        return backward_op(grad_stats, x, classes, ctx.alpha, ctx.transform, ctx.tau), None, None, None, None

    return backward


if _dispatch.native_built():
    torch.library.register_fake("msa_fast::hycon_rows", _rows_fake)
    torch.library.register_fake("msa_fast::hycon_rows_backward", _rows_backward_fake)
    torch.library.register_autograd("msa_fast::hycon_rows",
                                    _rows_backward_with(torch.ops.msa_fast.hycon_rows_backward.default),
                                    setup_context=_rows_setup_context)

if importlib.util.find_spec("msa_fast.kernels.hycon") is not None:
    # kernels/hycon.py: hycon_rows_forward / hycon_rows_backward with the C++ op's inputs, outputs and checks.

    @torch.library.triton_op("msa_fast::hycon_rows_triton", mutates_args=())
    def _hycon_rows_triton(x: torch.Tensor, classes: torch.Tensor, alpha: float, transform: str,
                           tau: float) -> torch.Tensor:
        from msa_fast.kernels.hycon import hycon_rows_forward

        return hycon_rows_forward(x, classes, alpha, transform, tau)

    @torch.library.triton_op("msa_fast::hycon_rows_backward_triton", mutates_args=())
    def _hycon_rows_backward_triton(grad_stats: torch.Tensor, x: torch.Tensor, classes: torch.Tensor, alpha: float,
                                    transform: str, tau: float) -> torch.Tensor:
        from msa_fast.kernels.hycon import hycon_rows_backward

        return hycon_rows_backward(grad_stats, x, classes, alpha, transform, tau)

    torch.library.register_autograd("msa_fast::hycon_rows_triton",
                                    _rows_backward_with(torch.ops.msa_fast.hycon_rows_backward_triton.default),
                                    setup_context=_rows_setup_context)


def _kernel_classes(y: torch.Tensor, drop_zero: bool):
    """Class ids for the kernel (dense, ≥ 0; −1 = dropped), the kept mask and N_k, as tensor ops (no sync).

    Float and bool y give classes 0/1. Integer ids may be anything (−1 included), so they are replaced by
    their rank among the sorted ids (``searchsorted`` gives the index of the first equal id: equal ids ↔
    equal ranks, in [0, K)).
    """
    K = y.shape[0]
    cls = hycon_classes(y)
    if y.is_floating_point() or y.dtype == torch.bool:
        ids = cls                                                          # 0/1
    else:
        ids = torch.searchsorted(torch.sort(cls).values, cls)              # in [0, K)
    keep = y != 0 if drop_zero else torch.ones(K, dtype=torch.bool, device=y.device)
    # Class sizes among kept samples (dropped ones are counted in a spare slot K + 1), N_k = size − 1.
    slot = torch.where(keep, ids, K + 1)
    sizes = torch.zeros(K + 2, dtype=torch.int64, device=y.device).scatter_add_(0, slot, torch.ones_like(slot))
    n_k = torch.where(keep, sizes[ids] - 1, 0)
    return torch.where(keep, ids, -1), keep, n_k


def _ratio_from_sums(num, neg, valid, use_log, den_eps, den_guard):
    """``_ratio_term`` on precomputed sums: t = −R or −log R per anchor, and V_R (§4 "Anchor sets")."""
    den = num + neg
    if den_guard == "skip":
        valid_r = valid & ~(den.abs() < den_eps)       # a NaN denominator stays in V_R and propagates
    else:
        valid_r = valid
        if den_guard == "clamp":
            sign = torch.where(den < 0, -1.0, 1.0).to(den.dtype)
            den = sign * den.abs().clamp_min(den_eps)
    ratio = torch.where(valid_r, num / torch.where(valid_r, den, 1.0), 1.0)
    t = -torch.log(ratio) if use_log else -ratio
    return t, valid_r


def _compose(stats, keep, n_k, features, alpha, use_log, den_eps, den_guard, reduction):
    """IAMCL, IEMCL, SCL and the anchor counts from the per-row statistics, as the reference composes them."""
    dtype = stats.dtype
    keep3, n_k3 = keep.repeat(3), n_k.repeat(3)                            # row r = m·K + k
    valid = keep3 & (n_k3 >= 1)                                             # V

    def reduce(values, mask):
        total = torch.where(mask, values, 0).sum()
        return total if reduction == "sum" else total / mask.sum().clamp_min(1).to(dtype)

    def term(col, ref_scale):
        t, valid_r = _ratio_from_sums(stats[:, col], stats[:, col + 1], valid, use_log, den_eps, den_guard)
        ref = stats[:, col + 2] / (ref_scale * n_k3.clamp_min(1)).to(dtype)
        return reduce(t, valid_r) + reduce(ref, valid), valid_r

    any_valid = valid.any()
    zero = C.zero_result(dtype, *features)                                 # §0.5: empty V
    iamcl, vr_intra = term(0, 1)
    iemcl, vr_inter = term(3, 2)
    iamcl = torch.where(any_valid, iamcl, zero)
    iemcl = torch.where(any_valid, iemcl, zero)
    scl_rows = 0.5 * stats[:, 6]
    scl = scl_rows.sum() if reduction == "sum" else scl_rows.mean()
    counts = {
        "n_anchors": keep3.sum(),
        "n_valid_anchors": valid.sum(),
        "n_skipped_iamcl": (valid & ~vr_intra).sum(),
        "n_skipped_iemcl": (valid & ~vr_inter).sum(),
    }
    return iamcl, iemcl, scl, counts


def hycon_loss(x_l, x_a, x_v, y, alpha=0.8, *, use_log=False, sim_transform="cos", tau=0.1, den_eps=1e-6,
               den_guard="skip", reduction="mean", drop_zero=False, return_stats=False, check_finite=False,
               backend="auto", global_batch=False):
    """HyCon's IAMCL, IEMCL and SCL (ops.md §4), fused: per-row pair sums from one kernel, composed here.

    Same arguments, values and gradients as :func:`hycon_loss_reference` (see there), plus ``backend``
    (``'auto'``, ``'reference'``, ``'cpp'``, ``'triton'``, ``'cuda'``; fp64 runs on the reference under
    ``'auto'``, a forced ``'cpp'`` accepts it).

    Returns ``(iamcl, iemcl, scl)`` fp32 scalars (fp64 for fp64 input), plus, with ``return_stats=True``,
    the dict ``{n_anchors, n_valid_anchors, n_skipped_iamcl, n_skipped_iemcl}`` of 0-dim int64 tensors.
    No host sync on the fused path (the counts stay tensors; reading them syncs). Memory O(K·d): the
    3K × 3K similarities are computed slab by slab and recomputed in backward, never stored.
    NaN in a feature row propagates as in the reference; ``check_finite=True`` raises instead (one sync).
    ``global_batch=True``: the loss over the K rows gathered from all ranks of torch.distributed
    (gradients flow back to this rank's rows; multiply by ``ddp_loss_scale()`` under DDP); a no-op when
    torch.distributed is not initialised. See :mod:`msa_fast.ops.distributed`.
    """
    if global_batch:
        from msa_fast.ops.distributed import gather_rows
        x_l, x_a, x_v, y = gather_rows(x_l, x_a, x_v, y)
    _check(x_l, x_a, x_v, y, alpha, use_log, sim_transform, tau, den_eps, den_guard, reduction, check_finite)
    chosen = _dispatch.resolve(OP, backend, x_l, native_op="hycon_rows", triton_op="hycon_rows_triton")
    if chosen == "reference":
        return hycon_loss_reference(x_l, x_a, x_v, y, alpha, use_log=use_log, sim_transform=sim_transform, tau=tau,
                                    den_eps=den_eps, den_guard=den_guard, reduction=reduction, drop_zero=drop_zero,
                                    return_stats=return_stats)
    classes, keep, n_k = _kernel_classes(y, drop_zero)
    op = torch.ops.msa_fast.hycon_rows_triton if chosen == "triton" else torch.ops.msa_fast.hycon_rows
    stats = op(torch.cat([x_l, x_a, x_v], dim=0), classes, float(alpha), sim_transform, float(tau))
    iamcl, iemcl, scl, counts = _compose(stats, keep, n_k, (x_l, x_a, x_v), float(alpha), use_log, float(den_eps),
                                         den_guard, reduction)
    if return_stats:
        return iamcl, iemcl, scl, counts
    return iamcl, iemcl, scl
