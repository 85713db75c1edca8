"""Triton kernels of the cross-set uniformity term (ops.md §6): per-row log-sum-exps, forward and backward.

``lse_rows_i = LSE_{j ≠ i}(−κ d²_ij)`` with ``d²_ij = ‖p̂_i‖² + ‖ĝ_j‖² − 2 p̂_i·ĝ_j`` clamped at ≥ 0 (the fused
expansion of ops.md §6; ``p̂ = n(p)`` if ``normalize`` else ``p``, likewise ĝ). ``uniform_loss(mode='cross')`` is
``LSE_i lse_rows_i − log(n(n−1))`` and is reduced by the caller; ``'wang_isola'`` can call these with ``g = p``.

Forward: one launch, grid = row blocks of p streaming g tiles (online LSE, fp32); the squared norms come from the
prologue (own rows) and from the tiles the dot product loads (streamed rows).
Backward: with ``W_ij = ∂/∂d²_ij = −κ g_i π_ij`` (``π`` the softmax of row i; 0 where the clamp is active),
``dp̂_i = 2(p̂_i Σ_j W_ij − Σ_j W_ij ĝ_j)`` (row-owned launch) and ``dĝ_j = 2(ĝ_j Σ_i W_ij − Σ_i W_ij p̂_i)``
(column-owned launch: g rows owned, p streamed), each program owning a (row block, feature chunk) and writing its
fp32 block once (no atomics); ``_pairwise_rows.finish_kernel`` goes back through ``n(·)``. If ``g`` is ``p`` the
caller adds ``dp`` and ``dg``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _pairwise_rows as P
from ._autotune import autotune

__all__ = ["uniform_rows_forward", "uniform_rows_backward"]


@autotune(P.FWD_CONFIGS, key=["N", "D"])
@triton.jit(do_not_specialize=["kappa_bits"])
def _uniform_fwd_kernel(p_ptr, g_ptr, lse_ptr, N, D, kappa_bits, NORMALIZE: tl.constexpr, BF16: tl.constexpr,
                        FP64: tl.constexpr, IP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_D: tl.constexpr):
    CT: tl.constexpr = tl.float64 if FP64 else tl.float32
    kappa = P.param(kappa_bits, CT)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < N
    ss_p = P.row_sumsq(p_ptr, rows, row_ok, D, CT, BF16, BLOCK_M, BLOCK_D)
    if NORMALIZE:
        r_p = P.rinv_of(ss_p, CT)
        n2_p = ss_p * r_p * r_p  # ‖p̂‖²: 1, or 0 for a zero row
    else:
        n2_p = ss_p
    m = tl.full([BLOCK_M], float("-inf"), CT)
    l = tl.zeros([BLOCK_M], dtype=CT)
    for n0 in range(0, N, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        col_ok = cols < N
        dot, ss_g = P.tile_dot(p_ptr, g_ptr, rows, row_ok, cols, col_ok, D, CT, BF16, IP, BLOCK_M, BLOCK_N, BLOCK_D)
        if NORMALIZE:
            r_g = P.rinv_of(ss_g, CT)
            pg = dot * (r_p[:, None] * r_g[None, :])
            n2_g = ss_g * r_g * r_g
        else:
            pg = dot
            n2_g = ss_g
        d2 = n2_p[:, None] + n2_g[None, :] - 2 * pg
        d2 = tl.where(d2 < 0, 0.0, d2)  # clamp at 0; a select keeps NaN
        keep = row_ok[:, None] & col_ok[None, :] & (rows[:, None] != cols[None, :])
        m, l = P.lse_update(m, l, -kappa * d2, keep)
    tl.store(lse_ptr + rows, P.lse_finish(m, l), mask=row_ok)


@autotune(P.BWD_CONFIGS, key=["N", "D"])
@triton.jit(do_not_specialize=["kappa_bits"])
def _uniform_bwd_kernel(own_ptr, oth_ptr, gr_ptr, lse_ptr, out_ptr, N, D, kappa_bits, COL: tl.constexpr,
                        NORMALIZE: tl.constexpr, BF16: tl.constexpr, FP64: tl.constexpr, IP: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                        BLOCK_DO: tl.constexpr):
    """out[own, chunk] = 2(x̂_own Σ W − Σ_oth W·ŷ_oth)[chunk], W = W_{own,oth} (own = p) or W_{oth,own} (COL).

    d² is symmetric in its two rows, so the column-owned launch (own = g, oth = p) rebuilds d²_ij as
    ‖ĝ_j‖² + ‖p̂_i‖² − 2 ĝ_j·p̂_i and takes the anchor statistics (lse_i, grad_i) of the streamed rows.
    """
    CT: tl.constexpr = tl.float64 if FP64 else tl.float32
    kappa = P.param(kappa_bits, CT)
    own = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    own_ok = own < N
    dd = tl.program_id(1).to(tl.int64) * BLOCK_DO + tl.arange(0, BLOCK_DO)
    dd_ok = dd < D
    out_offs = own[:, None] * D + dd[None, :]
    out_mask = own_ok[:, None] & dd_ok[None, :]
    ss_o = P.row_sumsq(own_ptr, own, own_ok, D, CT, BF16, BLOCK_M, BLOCK_D)
    if NORMALIZE:
        r_own = P.rinv_of(ss_o, CT)
        n2_o = ss_o * r_own * r_own
    else:
        r_own = tl.full([BLOCK_M], 1, CT)
        n2_o = ss_o
    if not COL:  # the anchors are the owned rows
        lse_a = tl.load(lse_ptr + own, mask=own_ok, other=0).to(CT)[:, None]
        g_a = tl.load(gr_ptr + own, mask=own_ok, other=0).to(CT)[:, None]

    acc = tl.zeros([BLOCK_M, BLOCK_DO], dtype=CT)
    wsum = tl.zeros([BLOCK_M], dtype=CT)
    for n0 in range(0, N, BLOCK_N):
        oth = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        oth_ok = oth < N
        dot, ss_t = P.tile_dot(own_ptr, oth_ptr, own, own_ok, oth, oth_ok, D, CT, BF16, IP, BLOCK_M, BLOCK_N,
                               BLOCK_D)
        if NORMALIZE:
            r_oth = P.rinv_of(ss_t, CT)
            xy = dot * (r_own[:, None] * r_oth[None, :])
            n2_t = ss_t * r_oth * r_oth
        else:
            xy = dot
            n2_t = ss_t
        d2 = n2_o[:, None] + n2_t[None, :] - 2 * xy
        unclamped = ~(d2 < 0)  # torch.clamp's gradient passes at d² = 0 (and for NaN)
        d2 = tl.where(d2 < 0, 0.0, d2)
        valid = own_ok[:, None] & oth_ok[None, :] & (own[:, None] != oth[None, :])
        if COL:
            lse_a = tl.load(lse_ptr + oth, mask=oth_ok, other=0).to(CT)[None, :]
            g_a = tl.load(gr_ptr + oth, mask=oth_ok, other=0).to(CT)[None, :]
        pi = tl.exp(tl.where(valid, -kappa * d2 - lse_a, float("-inf")))
        w = tl.where(valid & unclamped, -kappa * g_a * pi, 0.0)
        wsum += tl.sum(w, axis=1)
        if NORMALIZE:
            w = w * r_oth[None, :]
        y = P.load(oth_ptr, oth[:, None] * D + dd[None, :], oth_ok[:, None] & dd_ok[None, :], CT, BF16)
        acc = tl.dot(w.to(CT), y, acc, input_precision=IP)

    xc = P.load(own_ptr, out_offs, out_mask, CT, BF16)
    out = 2 * ((wsum * r_own)[:, None] * xc - acc)
    tl.store(out_ptr + out_offs, out, mask=out_mask)


# ----------------------------------------------------------------------------------------------
# Launchers: torch ops and wrap_triton launches only (traceable by make_fx / FakeTensor).


def uniform_rows_forward(p: torch.Tensor, g: torch.Tensor, kappa: float, normalize: bool) -> torch.Tensor:
    """``lse_rows [n]`` fp32 (fp64 for fp64 inputs): ``LSE_{j ≠ i}(−κ d²_ij)``, −inf when n = 1. One launch."""
    P.check_rows("uniform_rows_forward", p=p, g=g)
    p = p.contiguous()
    g = g.contiguous()
    N, D = p.shape
    lse = torch.empty(N, dtype=P.compute_dtype(p.dtype), device=p.device)

    def grid(meta):
        return (triton.cdiv(N, meta["BLOCK_M"]),)

    torch.library.wrap_triton(_uniform_fwd_kernel)[grid](
        P.io(p), P.io(g), lse, N, D, P.bits(kappa), NORMALIZE=bool(normalize), BF16=p.dtype == torch.bfloat16,
        FP64=p.dtype == torch.float64, IP=P.dot_precision(p.dtype))
    return lse


def uniform_rows_backward(grad_rows: torch.Tensor, p: torch.Tensor, g: torch.Tensor, lse_rows: torch.Tensor,
                          kappa: float, normalize: bool):
    """``(dp, dg)`` (input dtype) of ``Σ_i grad_rows_i·lse_rows_i``, from the ``lse_rows`` of the forward.

    Four launches: row- and column-owned gradient kernels (fp32 buffers, no atomics), then the epilogue through
    ``n(·)`` for p and for g. If ``g`` is ``p``, the caller adds the two gradients.
    """
    P.check_rows("uniform_rows_backward", p=p, g=g)
    p = p.contiguous()
    g = g.contiguous()
    N, D = p.shape
    ct = P.compute_dtype(p.dtype)
    gr, lse = (t.reshape(N).to(device=p.device, dtype=ct).contiguous() for t in (grad_rows, lse_rows))
    common = dict(NORMALIZE=bool(normalize), BF16=p.dtype == torch.bfloat16, FP64=p.dtype == torch.float64,
                  IP=P.dot_precision(p.dtype))

    def grid(meta):
        return (triton.cdiv(N, meta["BLOCK_M"]), triton.cdiv(D, meta["BLOCK_DO"]))

    pi, gi = P.io(p), P.io(g)
    buf_p = torch.empty((N, D), dtype=ct, device=p.device)
    buf_g = torch.empty((N, D), dtype=ct, device=p.device)
    torch.library.wrap_triton(_uniform_bwd_kernel)[grid](pi, gi, gr, lse, buf_p, N, D, P.bits(kappa), COL=False,
                                                         **common)
    torch.library.wrap_triton(_uniform_bwd_kernel)[grid](gi, pi, gr, lse, buf_g, N, D, P.bits(kappa), COL=True,
                                                         **common)
    return P.finish(p, buf_p, None, normalize), P.finish(g, buf_g, None, normalize)
