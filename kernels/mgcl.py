"""Triton kernels of MGCL's per-row log-sum-exps (ops.md §5 on the engine of §1): forward and backward.

The Triton twin of ``msa_fast::mgcl_rows`` (csrc/cpu/mgcl.cpp), with the same inputs and outputs. Rows: the 3B
macro features stacked (T, V, A), row ``r = v·B + i``. Row (v, i) pairs only with macro columns and with the micro
columns of its own view v (every other micro pair is excluded by design), so a program owning rows of view v
streams four column segments of B: macro views 0, 1, 2 and micro view v. Per row (v, i), column (c, j):

* macro ``c = v``, ``j ≠ i`` → C1, positive iff ``E_ij ≤ δ``, weight ``W±(E_ij)`` (``j = i``: excluded);
* macro ``c ≠ v``, ``j ≠ i`` → C2 cross-sample, as C1;
* macro ``c ≠ v``, ``j = i`` → C2 same-sample, positive with ``W⁺(0)``, iff ``v < c`` ('literal3') or always
  ('ordered6');
* micro ``c = v``, ``j = i`` → C3 positive with ``W⁺(0)``; ``j ∈ Neg(i)`` → C3 negative ``W⁻(E_ij)``; else excluded;

with ``E_ij = |ỹ_i − ỹ_j|``, ``ỹ = float32(y)/float32(label_scale)`` (IEEE division), the label arithmetic and the
weights in fp32 whatever the feature dtype (tanh: :func:`_tanh`, within a few ulp of torch's; exactly 0 at 0, so a
pair at ``E = δ`` has ``W⁺ = 0`` and still adds ``exp(0)``). ``λ = W·s/τ``; per row ``lse_pos`` = LSE over the
positives and ``lse_all`` = LSE over positives ∪ negatives. Status and weight of (i, j) do not depend on the views,
so each j tile computes them once for its four segments.

Forward: one launch, grid = (3 views × row blocks); an online LSE per set with one exp per entry (positives shifted
by their own running max, negatives by theirs), merged at the end.
Backward by recomputation, with ``p_all = exp(λ − lse_all)``, ``p_pos = exp(λ − lse_pos)``: the pair gradient
w.r.t. s is ``dS = (g_all·p_all + g_pos·p_pos)·W/τ = a_pos·p_pos·W/τ`` on positives (``a_pos = g_all·exp(lse_pos −
lse_all) + g_pos``) and ``g_all·p_all·W/τ`` on negatives. Status and weight are symmetric in (i, j) and only the
same-sample C2 rule is directed, so the macro-owned launch forms ``G = dS_rc + dS_cr`` on each macro tile from the
row's and the column's statistics (``dU_macro = Σ G·û_macro + Σ dS·û_micro``, one GEMM per tile), and a micro-owned
launch gives ``dU_micro[v, j] = Σ_i dS_(v,i),(v,j)·û_macro[v, i]``. Each program owns a (row block, feature chunk)
and writes its fp32 block once (no atomics); ``_pairwise_rows.finish_kernel`` goes back through ``n(·)``.
"""

from __future__ import annotations

import math
import struct

import torch
import triton
import triton.language as tl

from . import _pairwise_rows as P
from ._autotune import autotune

__all__ = ["mgcl_rows_forward", "mgcl_rows_backward", "WEIGHTS"]

WEIGHTS = {"mgcl": 0, "clgsi": 1, "none": 2}
_OP = "msa_fast.ops.mgcl_contrastive_loss"


# ----------------------------------------------------------------------------------------------
# Label block: status and weight of the pairs (i, j) of a tile, in fp32.


@triton.jit
def _tanh(x):
    """tanh in fp32 (Cephes tanhf): an odd polynomial below |x| = 0.625, ``1 − 2/(e^{2|x|} + 1)`` above; exactly 0
    at 0, ±1 for large |x|, NaN stays NaN. Written out because libdevice cannot run under the interpreter."""
    a = tl.abs(x)
    z = x * x
    p = ((((-5.70498872745e-3 * z + 2.06390887954e-2) * z - 5.37397155531e-2) * z + 1.33314422036e-1) * z
         - 3.33332819422e-1) * z * x + x
    big = 1.0 - 2.0 / (tl.exp(2.0 * a) + 1.0)
    return tl.where(a < 0.625, p, tl.where(x < 0, -big, big))


@triton.jit
def _pair_tile(y_ptr, i, i_ok, j0, B, scale, delta, gain, gain08, inv_tau, POS_W: tl.constexpr, NEG_W: tl.constexpr,
               BLOCK_N: tl.constexpr):
    """The samples j of the tile starting at j0 and the [i, j] tile's (in range, same sample, positive, W/τ):
    ``E = |ỹ_i − ỹ_j|`` (0 for j = i, whatever the label), positive iff j = i or ``E ≤ δ`` (NaN → negative), and
    the pair's weight ``W⁺`` / ``W⁻`` computed in fp32, then divided by τ in the compute type of inv_tau."""
    j = j0 + tl.arange(0, BLOCK_N).to(tl.int64)
    j_ok = j < B
    yi = P.div(tl.load(y_ptr + i, mask=i_ok, other=0), scale, tl.float32)
    yj = P.div(tl.load(y_ptr + j, mask=j_ok, other=0), scale, tl.float32)
    same = i[:, None] == j[None, :]
    E = tl.where(same, 0.0, tl.abs(yi[:, None] - yj[None, :]))
    pos = same | (E <= delta)
    # One tanh per pair: its argument is E − δ ('mgcl') or 2δ − E ('clgsi') on positives, E on negatives.
    if POS_W == 1:
        t = _tanh(tl.where(pos, 2.0 * delta - E, E))
    else:
        t = _tanh(tl.where(pos, E - delta, E))
    if POS_W == 0:
        wp = gain * tl.abs(t)
    elif POS_W == 1:
        wp = gain * t
    else:
        wp = tl.full(t.shape, 1, tl.float32)
    if NEG_W == 0:
        wn = gain * tl.abs(t)
    elif NEG_W == 1:
        wn = gain08 * tl.abs(t)
    else:
        wn = tl.full(t.shape, 1, tl.float32)
    return j, j_ok, i_ok[:, None] & j_ok[None, :], same, pos, tl.where(pos, wp, wn).to(inv_tau.dtype) * inv_tau


@triton.jit
def _anchors(lp_ptr, la_ptr, ap_ptr, ga_ptr, idx, ok, ROWS: tl.constexpr):
    """The anchors' (lse_pos, lse_all, a_pos, g_all) of macro rows idx, shaped as the tile's rows or columns."""
    lp = tl.load(lp_ptr + idx, mask=ok, other=0)
    la = tl.load(la_ptr + idx, mask=ok, other=0)
    ap = tl.load(ap_ptr + idx, mask=ok, other=0)
    ga = tl.load(ga_ptr + idx, mask=ok, other=0)
    if ROWS:
        return lp[:, None], la[:, None], ap[:, None], ga[:, None]
    else:
        return lp[None, :], la[None, :], ap[None, :], ga[None, :]


@triton.jit
def _split_lse_update(m_pos, l_pos, m_neg, l_neg, lam, pos, keep):
    """One online step of LSE over the kept positives and over the kept negatives (one exp per entry)."""
    kp = keep & pos
    kn = keep & ~pos
    m_pos_new = tl.maximum(m_pos, tl.max(tl.where(kp, lam, float("-inf")), axis=1))
    m_neg_new = tl.maximum(m_neg, tl.max(tl.where(kn, lam, float("-inf")), axis=1))
    sp = tl.where(m_pos_new == float("-inf"), 0.0, m_pos_new).to(m_pos.dtype)
    sn = tl.where(m_neg_new == float("-inf"), 0.0, m_neg_new).to(m_neg.dtype)
    e = tl.exp(tl.where(keep, lam - tl.where(pos, sp[:, None], sn[:, None]), float("-inf")))
    l_pos = l_pos * tl.exp(m_pos - sp) + tl.sum(tl.where(kp, e, 0.0), axis=1)
    l_neg = l_neg * tl.exp(m_neg - sn) + tl.sum(tl.where(kn, e, 0.0), axis=1)
    return m_pos_new, l_pos, m_neg_new, l_neg


@triton.jit
def _program(B, delta_bits, gain_bits, gain08_bits, scale_bits, tau_bits, CT: tl.constexpr, BLOCK_M: tl.constexpr,
             BLOCK_N: tl.constexpr):
    """The program's view v and samples i (grid = 3 views × row blocks), and the scalars: float32(δ),
    float32(gain), float32(0.8)·float32(gain) (rounded on the host), float32(label_scale), and 1/τ in the compute
    type as a [BLOCK_M, BLOCK_N] tile."""
    nblk = tl.cdiv(B, BLOCK_M)
    v = tl.program_id(0) // nblk
    i = (tl.program_id(0) - v * nblk).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    inv_tau = P.div(tl.full([BLOCK_M, BLOCK_N], 1, CT), P.param(tau_bits, CT), CT)
    return (v, i, P.param(delta_bits, tl.float32), P.param(gain_bits, tl.float32), P.param(gain08_bits, tl.float32),
            P.param(scale_bits, tl.float32), inv_tau)


# ----------------------------------------------------------------------------------------------
# Forward.


@autotune(P.FWD_CONFIGS_WIDE, key=["B", "D"])
@triton.jit(do_not_specialize=["delta_bits", "tau_bits", "scale_bits", "gain_bits", "gain08_bits"])
def _mgcl_fwd_kernel(f_ptr, y_ptr, lse_pos_ptr, lse_all_ptr, B, D, delta_bits, tau_bits, scale_bits, gain_bits,
                     gain08_bits, POS_W: tl.constexpr, NEG_W: tl.constexpr, ORDERED6: tl.constexpr,
                     NORMALIZE: tl.constexpr, BF16: tl.constexpr, FP64: tl.constexpr, IP: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """f = [macro; micro] ([6B, D], views T, V, A of each); the program owns macro rows (v, i) of one view."""
    CT: tl.constexpr = tl.float64 if FP64 else tl.float32
    v, i, delta, gain, gain08, scale, inv_tau = _program(B, delta_bits, gain_bits, gain08_bits, scale_bits, tau_bits,
                                                         CT, BLOCK_M, BLOCK_N)
    i_ok = i < B
    rows = v * B + i
    r_row = tl.full([BLOCK_M], 1, CT)
    if NORMALIZE:
        r_row = P.rinv_of(P.row_sumsq(f_ptr, rows, i_ok, D, CT, BF16, BLOCK_M, BLOCK_D), CT)

    ninf = tl.full([BLOCK_M], float("-inf"), CT)
    zero = tl.zeros([BLOCK_M], dtype=CT)
    m_pos, l_pos, m_neg, l_neg = ninf, zero, ninf, zero  # running (max, sum) of the positives and the negatives
    for j0 in range(0, B, BLOCK_N):
        j, j_ok, ok, same, pos, wt = _pair_tile(y_ptr, i, i_ok, j0, B, scale, delta, gain, gain08, inv_tau, POS_W,
                                                NEG_W, BLOCK_N)
        for c in range(4):  # column segments: macro views 0, 1, 2 (C1 at c = v, C2 elsewhere), micro view v (C3)
            diag = (v != c) if ORDERED6 else (v < c)  # the same-sample C2 pair (v, c) of sample i
            keep = tl.where(c == 3, ok & (same | ~pos), ok & (~same | diag))
            s, _ = P.sim_tile(f_ptr, f_ptr, rows, i_ok, tl.where(c == 3, 3 + v, c) * B + j, j_ok, r_row, D, NORMALIZE,
                              CT, BF16, IP, BLOCK_M, BLOCK_N, BLOCK_D)
            m_pos, l_pos, m_neg, l_neg = _split_lse_update(m_pos, l_pos, m_neg, l_neg, wt * s, pos, keep)

    # lse_pos (never over ∅: the C3 same-sample pair) and lse_all = LSE of both sets' (max, sum) merged.
    m_all = tl.maximum(m_pos, m_neg)
    m_all_safe = tl.where(m_all == float("-inf"), 0.0, m_all).to(CT)
    l_all = l_pos * tl.exp(m_pos - m_all_safe) + l_neg * tl.exp(m_neg - m_all_safe)
    tl.store(lse_pos_ptr + rows, P.lse_finish(m_pos, l_pos), mask=i_ok)
    tl.store(lse_all_ptr + rows, P.lse_finish(m_all, l_all), mask=i_ok)


# ----------------------------------------------------------------------------------------------
# Backward.


@triton.jit
def _ds(lam, wt, pos, keep, lse_pos, lse_all, a_pos, g_all):
    """dS of the kept pairs w.r.t. s for anchors with statistics (lse_pos, lse_all, a_pos, g_all); wt = W/τ."""
    p = tl.exp(tl.where(keep, lam - tl.where(pos, lse_pos, lse_all), float("-inf")))
    return tl.where(keep, tl.where(pos, a_pos, g_all) * p * wt, 0.0)


@autotune(P.BWD_CONFIGS_WIDE, key=["B", "D"])
@triton.jit(do_not_specialize=["delta_bits", "tau_bits", "scale_bits", "gain_bits", "gain08_bits"])
def _mgcl_bwd_kernel(f_ptr, y_ptr, lp_ptr, la_ptr, ap_ptr, ga_ptr, out_ptr, B, D, delta_bits, tau_bits, scale_bits,
                     gain_bits, gain08_bits, MICRO: tl.constexpr, POS_W: tl.constexpr, NEG_W: tl.constexpr,
                     ORDERED6: tl.constexpr, NORMALIZE: tl.constexpr, BF16: tl.constexpr, FP64: tl.constexpr,
                     IP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                     BLOCK_DO: tl.constexpr):
    """out[own, chunk]: the gradient w.r.t. the normalised owned rows of f = [macro; micro] (view v, samples i).

    ``MICRO = False``: owned = macro rows (v, i); ``Σ_c Σ_j (dS_(v,i),(c,j) + dS_(c,j),(v,i)) û_macro[c, j]`` over the
    macro views plus ``Σ_j dS_(v,i),(micro v,j) û_micro[v, j]``. ``MICRO = True``: owned = micro rows (v, i), the
    anchors are the macro rows (v, j): ``Σ_j dS_(v,j),(micro v,i) û_macro[v, j]``. lp/la/ap/ga: lse_pos, lse_all,
    a_pos and g_all per macro row.
    """
    CT: tl.constexpr = tl.float64 if FP64 else tl.float32
    v, i, delta, gain, gain08, scale, inv_tau = _program(B, delta_bits, gain_bits, gain08_bits, scale_bits, tau_bits,
                                                         CT, BLOCK_M, BLOCK_N)
    i_ok = i < B
    own = (3 + v) * B + i if MICRO else v * B + i
    dd = tl.program_id(1).to(tl.int64) * BLOCK_DO + tl.arange(0, BLOCK_DO)
    dd_ok = dd < D
    r_own = tl.full([BLOCK_M], 1, CT)
    if NORMALIZE:
        r_own = P.rinv_of(P.row_sumsq(f_ptr, own, i_ok, D, CT, BF16, BLOCK_M, BLOCK_D), CT)
    if not MICRO:  # the owned rows' statistics, as anchors
        lp_o, la_o, ap_o, ga_o = _anchors(lp_ptr, la_ptr, ap_ptr, ga_ptr, own, i_ok, True)

    acc = tl.zeros([BLOCK_M, BLOCK_DO], dtype=CT)
    for j0 in range(0, B, BLOCK_N):
        j, j_ok, ok, same, pos, wt = _pair_tile(y_ptr, i, i_ok, j0, B, scale, delta, gain, gain08, inv_tau, POS_W,
                                                NEG_W, BLOCK_N)
        c3 = ok & (same | ~pos)  # C3: the same-sample micro positive and the micro negatives
        if MICRO:  # anchors: the macro rows (v, j), whose C3 partner is the owned micro row (v, i)
            oth = v * B + j
            s, r_oth = P.sim_tile(f_ptr, f_ptr, own, i_ok, oth, j_ok, r_own, D, NORMALIZE, CT, BF16, IP, BLOCK_M,
                                  BLOCK_N, BLOCK_D)
            lp_c, la_c, ap_c, ga_c = _anchors(lp_ptr, la_ptr, ap_ptr, ga_ptr, oth, j_ok, False)
            G = _ds(wt * s, wt, pos, c3, lp_c, la_c, ap_c, ga_c)
            acc = P.acc_rows(acc, G, r_oth, f_ptr, oth, j_ok, dd, dd_ok, D, NORMALIZE, CT, BF16, IP)
        else:
            for c in range(4):  # column segments as in the forward: macro views 0, 1, 2, then micro view v
                oth = tl.where(c == 3, 3 + v, c) * B + j
                s, r_oth = P.sim_tile(f_ptr, f_ptr, own, i_ok, oth, j_ok, r_own, D, NORMALIZE, CT, BF16, IP, BLOCK_M,
                                      BLOCK_N, BLOCK_D)
                lam = wt * s
                diag = (v != c) if ORDERED6 else (v < c)  # (v, i) → (c, i) is a pair
                G = _ds(lam, wt, pos, tl.where(c == 3, c3, ok & (~same | diag)), lp_o, la_o, ap_o, ga_o)
                if c < 3:  # the transposed pair (c, j) → (v, i), with the column's statistics
                    diag_t = (c != v) if ORDERED6 else (c < v)
                    lp_c, la_c, ap_c, ga_c = _anchors(lp_ptr, la_ptr, ap_ptr, ga_ptr, oth, j_ok, False)
                    G += _ds(lam, wt, pos, ok & (~same | diag_t), lp_c, la_c, ap_c, ga_c)
                acc = P.acc_rows(acc, G, r_oth, f_ptr, oth, j_ok, dd, dd_ok, D, NORMALIZE, CT, BF16, IP)
    tl.store(out_ptr + own[:, None] * D + dd[None, :], acc, mask=i_ok[:, None] & dd_ok[None, :])


# ----------------------------------------------------------------------------------------------
# Launchers: torch ops and wrap_triton launches only (traceable by make_fx / FakeTensor).


def _f32(v: float) -> float:
    """A Python double rounded to fp32 (±inf past the fp32 range)."""
    try:
        return struct.unpack("<f", struct.pack("<f", v))[0]
    except OverflowError:
        return math.copysign(math.inf, v)


def _check(macro, micro, y, tau, label_scale, pos_weight, neg_weight, delta, gain) -> int:
    """The C++ op's argument checks (same exception types); returns B."""
    B = P.check_stacked(_OP, "macro", macro, "three views", "[3B, d]")
    P.check_stacked(_OP, "micro", micro, "three views", "[3B, d]")
    if macro.shape != micro.shape:
        raise ValueError(f"{_OP}: macro and micro must have the same shape, got {tuple(macro.shape)} and "
                         f"{tuple(micro.shape)}")
    if macro.dtype != micro.dtype:
        raise TypeError(f"{_OP}: macro and micro must share a dtype, got {macro.dtype} and {micro.dtype}")
    if micro.device != macro.device or y.device != macro.device:
        raise ValueError(f"{_OP}: macro ({macro.device}), micro ({micro.device}) and y ({y.device}) must be on one "
                         f"device")
    if y.is_complex():
        raise TypeError(f"{_OP}: y must be a real tensor, got {y.dtype}")
    if y.dim() != 1 or y.shape[0] != B:
        raise ValueError(f"{_OP}: y must be [B] = [{B}], got shape {tuple(y.shape)}")
    for name, value in (("pos_weight", pos_weight), ("neg_weight", neg_weight)):
        if value not in WEIGHTS:
            raise ValueError(f"{_OP}: {name} must be one of {tuple(WEIGHTS)}, got {value!r}")
    if not tau > 0:
        raise ValueError(f"{_OP}: tau must be > 0, got {tau}")
    if not label_scale > 0:
        raise ValueError(f"{_OP}: label_scale must be > 0, got {label_scale}")
    if delta != delta or gain != gain:
        raise ValueError(f"{_OP}: delta and gain must not be NaN")
    return B


def _prepare(macro, micro, y, delta, tau, label_scale, pos_weight, neg_weight, gain, ordered6, normalize):
    """``f = [macro; micro]`` ([6B, d]: one row space for every column segment), fp32 labels, the scalar bit
    patterns and the constexpr flags of both kernels."""
    B = _check(macro, micro, y, tau, label_scale, pos_weight, neg_weight, delta, gain)
    f = torch.cat([macro, micro], dim=0)
    y32 = y.to(torch.float32).contiguous()
    # float32(0.8)·float32(gain) as the reference rounds it (the product of two fp32 values is exact in a double).
    gain08 = _f32(_f32(0.8) * _f32(gain))
    scalars = (P.bits(delta), P.bits(tau), P.bits(label_scale), P.bits(gain), P.bits(gain08))
    flags = dict(POS_W=WEIGHTS[pos_weight], NEG_W=WEIGHTS[neg_weight], ORDERED6=bool(ordered6),
                 NORMALIZE=bool(normalize), BF16=macro.dtype == torch.bfloat16, FP64=macro.dtype == torch.float64,
                 IP=P.dot_precision(macro.dtype))
    return f, y32, B, macro.shape[1], scalars, flags


def mgcl_rows_forward(macro: torch.Tensor, micro: torch.Tensor, y: torch.Tensor, delta: float, tau: float,
                      label_scale: float, pos_weight: str, neg_weight: str, gain: float, ordered6: bool,
                      normalize: bool):
    """Per macro row ``(lse_pos, lse_all)``, each ``[3B]`` fp32 (fp64 for fp64 features).

    ``macro, micro [3B, d]``: the views (T, V, A) stacked; ``y [B]`` labels of any real dtype (read in fp32).
    One kernel launch.
    """
    f, y32, B, D, scalars, flags = _prepare(macro, micro, y, delta, tau, label_scale, pos_weight, neg_weight,
                                            gain, ordered6, normalize)
    ct = P.compute_dtype(macro.dtype)
    lse_pos = torch.empty(3 * B, dtype=ct, device=macro.device)
    lse_all = torch.empty(3 * B, dtype=ct, device=macro.device)

    def grid(meta):
        return (3 * triton.cdiv(B, meta["BLOCK_M"]),)

    torch.library.wrap_triton(_mgcl_fwd_kernel)[grid](P.io(f), y32, lse_pos, lse_all, B, D, *scalars, **flags)
    return lse_pos, lse_all


def mgcl_rows_backward(grad_lse_pos: torch.Tensor, grad_lse_all: torch.Tensor, macro: torch.Tensor,
                       micro: torch.Tensor, y: torch.Tensor, lse_pos: torch.Tensor, lse_all: torch.Tensor,
                       delta: float, tau: float, label_scale: float, pos_weight: str, neg_weight: str, gain: float,
                       ordered6: bool, normalize: bool):
    """``(dmacro, dmicro)`` (input dtype) of ``Σ_r grad_lse_pos_r·lse_pos_r + grad_lse_all_r·lse_all_r``, from the
    statistics of :func:`mgcl_rows_forward`. Four launches: the macro-owned and micro-owned gradient kernels (fp32
    buffers, no atomics), then the epilogue through ``n(·)`` for each."""
    f, y32, B, D, scalars, flags = _prepare(macro, micro, y, delta, tau, label_scale, pos_weight, neg_weight,
                                            gain, ordered6, normalize)
    for name, t in (("grad_lse_pos", grad_lse_pos), ("grad_lse_all", grad_lse_all), ("lse_pos", lse_pos),
                    ("lse_all", lse_all)):
        if t.numel() != 3 * B:
            raise ValueError(f"{_OP} backward: {name} must have 3B = {3 * B} entries (one per macro row), got shape "
                             f"{tuple(t.shape)}")
    ct = P.compute_dtype(macro.dtype)
    gp, ga, lp, la = (t.reshape(3 * B).to(device=macro.device, dtype=ct) for t in
                      (grad_lse_pos, grad_lse_all, lse_pos, lse_all))
    # Positives' coefficient: g_all·p_all + g_pos·p_pos = (g_all·exp(lse_pos − lse_all) + g_pos)·p_pos.
    ap = (ga * torch.exp(lp - la) + gp).contiguous()
    lp, la, ga = lp.contiguous(), la.contiguous(), ga.contiguous()
    buf = torch.empty((6 * B, D), dtype=ct, device=macro.device)  # rows as in f: the two launches write disjoint halves

    def grid(meta):
        return (3 * triton.cdiv(B, meta["BLOCK_M"]), triton.cdiv(D, meta["BLOCK_DO"]))

    for micro_owned in (False, True):
        torch.library.wrap_triton(_mgcl_bwd_kernel)[grid](P.io(f), y32, lp, la, ap, ga, buf, B, D, *scalars,
                                                          MICRO=micro_owned, **flags)
    return (P.finish(macro.contiguous(), buf[:3 * B], None, normalize),
            P.finish(micro.contiguous(), buf[3 * B:], None, normalize))
