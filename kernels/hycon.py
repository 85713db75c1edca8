"""Triton kernels of HyCon's per-row pair sums (ops.md §4 on the engine of §1): forward and backward.

The Triton twin of ``msa_fast::hycon_rows`` (csrc/cpu/hycon.cpp), with the same inputs and outputs. Rows of
``x = [x_l; x_a; x_v]`` (``[3K, d]``): row ``r = m·K + k`` is anchor (k, m), ``u = n(x)``, ``s_rc = u_r·u_c``. With
``c_k`` the class of sample k (any int64 id; −1 = dropped by ``drop_zero``: neither anchor nor candidate of
IAMCL/IEMCL), ``Pos1(k) = {j ≠ k : c_j = c_k}`` and ``Neg1(k) = {j : c_j ≠ c_k}`` over kept samples, each row gets
``stats[r] [7]``:

* same view (m′ = m): ``Σ_{Pos1} f(s)``, ``Σ_{Neg1} f(s)``, ``Σ_{Pos1} (s − 1)²``;
* other views (m′ ≠ m): ``Σ_{Pos1} f(s)``, ``Σ_{Neg1} f(s)``, ``Σ_{Pos1} (s − α)²``;
* SCL: ``Σ_{m′≠m} (s_{r, m′K+k} − α)²`` (not halved; the caller applies the ½),

with ``f`` = ``'cos'`` s, ``'cos01'`` (1 + s)/2, ``'exp_tau'`` exp(s/τ). A dropped anchor has stats 0…5 = 0. Pairs
enter by selection (not by multiplying with a mask), so a NaN only reaches the sums of the anchor's own sets.

Forward: one launch, grid = row blocks of ``3K``; each program streams every column tile (seven fp32 row sums).
Backward (``g = grad_stats``): the statistics are sums of per-pair functions and every pair relation (same
view, same sample, same class, kept) is symmetric, so ``G = dS + dSᵀ`` is formed tile by tile from the row's
and the column's coefficients, ``G_rc = (g_r,q + g_c,q)·f′(s) + (g_r,q+2 + g_c,q+2)·2(s − target)`` on positives,
``(g_r,q+1 + g_c,q+1)·f′(s)`` on negatives and ``(g_r,6 + g_c,6)·2(s − α)`` on SCL pairs, and ``dU_r = Σ_c G_rc u_c``
needs a single row-owned launch (each program owns a row block and a feature chunk and writes its fp32 block
once; no atomics, no column-owned pass); ``_pairwise_rows.finish_kernel`` goes back through ``n(·)``.
See ``_pairwise_rows`` for the tiling, normalisation and dtype conventions.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _pairwise_rows as P
from ._autotune import autotune

__all__ = ["hycon_rows_forward", "hycon_rows_backward", "N_STATS", "TRANSFORMS"]

N_STATS = 7
TRANSFORMS = {"cos": 0, "cos01": 1, "exp_tau": 2}
_OP = "msa_fast.ops.hycon_loss"


@triton.jit
def _pair_sets(rows, row_ok, cols, col_ok, cls_ptr, K):
    """Masks of a [rows, cols] tile: (positive, negative, SCL pair, same view) as in the module docstring."""
    m_r = rows // K
    k_r = rows - m_r * K
    m_c = cols // K
    k_c = cols - m_c * K
    c_r = tl.load(cls_ptr + k_r, mask=row_ok, other=-1)
    c_c = tl.load(cls_ptr + k_c, mask=col_ok, other=-1)
    valid = row_ok[:, None] & col_ok[None, :]
    same_view = m_r[:, None] == m_c[None, :]
    same_sample = k_r[:, None] == k_c[None, :]
    kept = valid & (c_r >= 0)[:, None] & (c_c >= 0)[None, :]
    same_cls = c_r[:, None] == c_c[None, :]
    pos = kept & same_cls & ~same_sample
    neg = kept & ~same_cls
    scl = valid & same_sample & ~same_view
    return pos, neg, scl, same_view


@triton.jit
def _f(s, inv_tau, F: tl.constexpr):
    """The ratio transform f(s): 'cos' s, 'cos01' (1 + s)/2, 'exp_tau' exp(s/τ)."""
    if F == 0:
        return s
    elif F == 1:
        return (1.0 + s) * 0.5
    else:
        return tl.exp(s * inv_tau)


@triton.jit
def _df(s, inv_tau, F: tl.constexpr):
    """f′(s): 1, ½, exp(s/τ)/τ."""
    if F == 0:
        return tl.full(s.shape, 1, s.dtype)
    elif F == 1:
        return tl.full(s.shape, 0.5, s.dtype)
    else:
        return tl.exp(s * inv_tau) * inv_tau


@autotune(P.FWD_CONFIGS_WIDE, key=["N", "D"])
@triton.jit(do_not_specialize=["alpha_bits", "tau_bits"])
def _hycon_fwd_kernel(x_ptr, cls_ptr, out_ptr, N, K, D, alpha_bits, tau_bits, F: tl.constexpr, BF16: tl.constexpr,
                      FP64: tl.constexpr, IP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_D: tl.constexpr):
    CT: tl.constexpr = tl.float64 if FP64 else tl.float32
    alpha = P.param(alpha_bits, CT)
    inv_tau = P.div(tl.full([BLOCK_M, BLOCK_N], 1, CT), P.param(tau_bits, CT), CT)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < N
    r_row = P.rinv_of(P.row_sumsq(x_ptr, rows, row_ok, D, CT, BF16, BLOCK_M, BLOCK_D), CT)

    intra_pos = tl.zeros([BLOCK_M], dtype=CT)     # same view: Σ_pos f, Σ_neg f, Σ_pos (s − 1)²
    intra_neg = tl.zeros([BLOCK_M], dtype=CT)
    intra_ref = tl.zeros([BLOCK_M], dtype=CT)
    inter_pos = tl.zeros([BLOCK_M], dtype=CT)     # other views: Σ_pos f, Σ_neg f, Σ_pos (s − α)²
    inter_neg = tl.zeros([BLOCK_M], dtype=CT)
    inter_ref = tl.zeros([BLOCK_M], dtype=CT)
    scl = tl.zeros([BLOCK_M], dtype=CT)           # Σ_{m′≠m} (s_{r, m′K+k} − α)²
    for n0 in range(0, N, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        col_ok = cols < N
        s, _ = P.sim_tile(x_ptr, x_ptr, rows, row_ok, cols, col_ok, r_row, D, True, CT, BF16, IP, BLOCK_M, BLOCK_N,
                          BLOCK_D)
        pos, neg, scl_pair, same_view = _pair_sets(rows, row_ok, cols, col_ok, cls_ptr, K)
        fs = _f(s, inv_tau, F)
        d1 = s - 1.0
        da = s - alpha
        intra_pos += tl.sum(tl.where(pos & same_view, fs, 0.0), axis=1)
        intra_neg += tl.sum(tl.where(neg & same_view, fs, 0.0), axis=1)
        intra_ref += tl.sum(tl.where(pos & same_view, d1 * d1, 0.0), axis=1)
        inter_pos += tl.sum(tl.where(pos & ~same_view, fs, 0.0), axis=1)
        inter_neg += tl.sum(tl.where(neg & ~same_view, fs, 0.0), axis=1)
        inter_ref += tl.sum(tl.where(pos & ~same_view, da * da, 0.0), axis=1)
        scl += tl.sum(tl.where(scl_pair, da * da, 0.0), axis=1)

    out = out_ptr + rows * 7
    tl.store(out, intra_pos, mask=row_ok)
    tl.store(out + 1, intra_neg, mask=row_ok)
    tl.store(out + 2, intra_ref, mask=row_ok)
    tl.store(out + 3, inter_pos, mask=row_ok)
    tl.store(out + 4, inter_neg, mask=row_ok)
    tl.store(out + 5, inter_ref, mask=row_ok)
    tl.store(out + 6, scl, mask=row_ok)


@autotune(P.BWD_CONFIGS_WIDE, key=["N", "D"])
@triton.jit(do_not_specialize=["alpha_bits", "tau_bits"])
def _hycon_bwd_kernel(x_ptr, cls_ptr, g_ptr, out_ptr, N, K, D, alpha_bits, tau_bits, F: tl.constexpr,
                      BF16: tl.constexpr, FP64: tl.constexpr, IP: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DO: tl.constexpr):
    """out[rows, chunk] = Σ_c G_rc û_c[chunk] with G = dS + dSᵀ (module docstring)."""
    CT: tl.constexpr = tl.float64 if FP64 else tl.float32
    alpha = P.param(alpha_bits, CT)
    inv_tau = P.div(tl.full([BLOCK_M, BLOCK_N], 1, CT), P.param(tau_bits, CT), CT)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < N
    dd = tl.program_id(1).to(tl.int64) * BLOCK_DO + tl.arange(0, BLOCK_DO)
    dd_ok = dd < D
    r_row = P.rinv_of(P.row_sumsq(x_ptr, rows, row_ok, D, CT, BF16, BLOCK_M, BLOCK_D), CT)
    g_r = g_ptr + rows * 7  # the owned rows' coefficients of the seven statistics
    a0 = tl.load(g_r, mask=row_ok, other=0)[:, None]
    a1 = tl.load(g_r + 1, mask=row_ok, other=0)[:, None]
    a2 = tl.load(g_r + 2, mask=row_ok, other=0)[:, None]
    a3 = tl.load(g_r + 3, mask=row_ok, other=0)[:, None]
    a4 = tl.load(g_r + 4, mask=row_ok, other=0)[:, None]
    a5 = tl.load(g_r + 5, mask=row_ok, other=0)[:, None]
    a6 = tl.load(g_r + 6, mask=row_ok, other=0)[:, None]

    acc = tl.zeros([BLOCK_M, BLOCK_DO], dtype=CT)
    for n0 in range(0, N, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        col_ok = cols < N
        s, r_col = P.sim_tile(x_ptr, x_ptr, rows, row_ok, cols, col_ok, r_row, D, True, CT, BF16, IP, BLOCK_M,
                              BLOCK_N, BLOCK_D)
        pos, neg, scl_pair, same_view = _pair_sets(rows, row_ok, cols, col_ok, cls_ptr, K)
        # Row + column coefficients of the pair's statistics: q = 0…2 in the same view, 3…5 across views.
        g_c = g_ptr + cols * 7
        cp = tl.where(same_view, a0 + tl.load(g_c, mask=col_ok, other=0)[None, :],
                      a3 + tl.load(g_c + 3, mask=col_ok, other=0)[None, :])
        cn = tl.where(same_view, a1 + tl.load(g_c + 1, mask=col_ok, other=0)[None, :],
                      a4 + tl.load(g_c + 4, mask=col_ok, other=0)[None, :])
        cq = tl.where(same_view, a2 + tl.load(g_c + 2, mask=col_ok, other=0)[None, :],
                      a5 + tl.load(g_c + 5, mask=col_ok, other=0)[None, :])
        c6 = a6 + tl.load(g_c + 6, mask=col_ok, other=0)[None, :]
        target = tl.where(same_view, 1.0, alpha)
        df = _df(s, inv_tau, F)
        g_pos = cp * df + cq * (2.0 * (s - target))
        g_neg = cn * df
        g_scl = c6 * (2.0 * (s - alpha))
        G = tl.where(pos, g_pos, tl.where(neg, g_neg, tl.where(scl_pair, g_scl, 0.0)))
        acc = P.acc_rows(acc, G, r_col, x_ptr, cols, col_ok, dd, dd_ok, D, True, CT, BF16, IP)
    tl.store(out_ptr + rows[:, None] * D + dd[None, :], acc, mask=row_ok[:, None] & dd_ok[None, :])


# ----------------------------------------------------------------------------------------------
# Launchers: torch ops and wrap_triton launches only (traceable by make_fx / FakeTensor).


def _check(x: torch.Tensor, classes: torch.Tensor, transform: str, tau: float) -> int:
    """The C++ op's argument checks (same exception types); returns K."""
    K = P.check_stacked(_OP, "x", x, "the three modalities", "[3K, d] (= [x_l; x_a; x_v])")
    if classes.dtype != torch.int64:
        raise TypeError(f"{_OP}: classes must be int64 here, got {classes.dtype}")
    if classes.dim() != 1 or classes.shape[0] != K:
        raise ValueError(f"{_OP}: classes must be [K] = [{K}] for x of shape {tuple(x.shape)}, got shape "
                         f"{tuple(classes.shape)}")
    if classes.device != x.device:
        raise ValueError(f"{_OP}: classes is on {classes.device} but x is on {x.device}")
    if transform not in TRANSFORMS:
        raise ValueError(f"{_OP}: sim_transform must be one of {tuple(TRANSFORMS)}, got {transform!r}")
    if not tau > 0:
        raise ValueError(f"{_OP}: tau must be > 0, got {tau}")
    return K


def _launch_args(x, classes, alpha, transform, tau):
    K = _check(x, classes, transform, tau)
    x = x.contiguous()
    common = dict(F=TRANSFORMS[transform], BF16=x.dtype == torch.bfloat16, FP64=x.dtype == torch.float64,
                  IP=P.dot_precision(x.dtype))
    return x, classes.contiguous(), x.shape[0], K, x.shape[1], P.bits(alpha), P.bits(tau), common


def hycon_rows_forward(x: torch.Tensor, classes: torch.Tensor, alpha: float, transform: str,
                       tau: float) -> torch.Tensor:
    """``stats [3K, 7]`` fp32 (fp64 for fp64 x) of ``x = [x_l; x_a; x_v]`` and ``classes [K]`` int64 (−1 =
    dropped): see the module docstring. One kernel launch."""
    x, cls, N, K, D, a_bits, t_bits, common = _launch_args(x, classes, alpha, transform, tau)
    stats = torch.empty((N, N_STATS), dtype=P.compute_dtype(x.dtype), device=x.device)

    def grid(meta):
        return (triton.cdiv(N, meta["BLOCK_M"]),)

    torch.library.wrap_triton(_hycon_fwd_kernel)[grid](P.io(x), cls, stats, N, K, D, a_bits, t_bits, **common)
    return stats


def hycon_rows_backward(grad_stats: torch.Tensor, x: torch.Tensor, classes: torch.Tensor, alpha: float,
                        transform: str, tau: float) -> torch.Tensor:
    """``dx`` (x's dtype) of ``Σ_{r,q} grad_stats[r, q]·stats[r, q]``. Two launches: the row-owned gradient
    kernel (G = dS + dSᵀ, fp32 buffer, no atomics) and the epilogue through ``n(·)``."""
    x, cls, N, K, D, a_bits, t_bits, common = _launch_args(x, classes, alpha, transform, tau)
    if grad_stats.dim() != 2 or tuple(grad_stats.shape) != (N, N_STATS):
        raise ValueError(f"{_OP} backward: grad_stats must be [3K, 7] = [{N}, 7], got shape "
                         f"{tuple(grad_stats.shape)}")
    ct = P.compute_dtype(x.dtype)
    g = grad_stats.to(device=x.device, dtype=ct).contiguous()
    buf = torch.empty((N, D), dtype=ct, device=x.device)

    def grid(meta):
        return (triton.cdiv(N, meta["BLOCK_M"]), triton.cdiv(D, meta["BLOCK_DO"]))

    torch.library.wrap_triton(_hycon_bwd_kernel)[grid](P.io(x), cls, g, buf, N, K, D, a_bits, t_bits, **common)
    return P.finish(x, buf, None, True)
