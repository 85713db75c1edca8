"""Triton kernels of InfoNCE with the positive on the diagonal (ops.md §3): per-row statistics, forward and backward.

With ``q̂ = n(q)``, ``k̂ = n(k)`` (raw rows if not ``normalize``), ``a_ij = q̂_i·k̂_j/τ``, ``b_ij = q̂_i·q̂_j/τ``:

* ``negatives='keys'`` (``negatives_queries=False``): ``lse_i = LSE_j a_ij``; ``a_ii`` is read off the same tiles;
* ``negatives='queries'``: ``lse_i = LSE({a_ii} ∪ {b_ij : j ≠ i})``; ``a_ii`` is a row-wise dot product from the
  prologue (which also gives the norms), and seeds the online LSE (max ``a_ii``, sum 1);
* ``loss_rows_i = lse_i − a_ii``.

Forward: one launch, grid = row blocks, streaming k tiles ('keys') or q tiles ('queries').
Backward by recomputation, with ``g = grad_rows`` and ``π`` the softmax of row i:

* 'keys': ``G_ij = g_i (π_ij − δ_ij)``; ``dq̂_i = (1/τ) Σ_j G_ij k̂_j`` (row-owned launch over q × k) and
  ``dk̂_j = (1/τ) Σ_i G_ij q̂_i`` (column-owned launch: k rows owned, q streamed);
* 'queries': ``G_ij = g_i π_ij`` on ``b`` (j ≠ i) and ``G_ii = g_i (π_ii − 1)`` on ``a_ii``;
  ``dq̂_i = (1/τ)[Σ_j (G_ij + G_ji) q̂_j + G_ii k̂_i]`` (row-owned and column-owned launches over q × q; the
  row-owned one adds the diagonal term and writes ``dk̂_i = (1/τ) G_ii q̂_i``).

Each backward program owns a (row block, feature chunk) and writes its fp32 block once (no atomics);
``_pairwise_rows.finish_kernel`` adds the buffers and goes back through ``n(·)``. If ``k`` is ``q`` the caller adds
``dq`` and ``dk``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _pairwise_rows as P
from ._autotune import autotune

__all__ = ["info_nce_rows_forward", "info_nce_rows_backward"]


@autotune(P.FWD_CONFIGS, key=["N", "D"])
@triton.jit(do_not_specialize=["tau_bits"])
def _info_nce_fwd_kernel(q_ptr, k_ptr, y_ptr, loss_ptr, lse_ptr, N, D, tau_bits, QUERIES: tl.constexpr,
                         NORMALIZE: tl.constexpr, BF16: tl.constexpr, FP64: tl.constexpr, IP: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """y is the streamed set: k ('keys') or q ('queries')."""
    CT: tl.constexpr = tl.float64 if FP64 else tl.float32
    inv_tau = P.div(tl.full([BLOCK_M], 1, CT), P.param(tau_bits, CT), CT)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < N
    if QUERIES:
        sq, sk, sqk = P.row_pair_sums(q_ptr, k_ptr, rows, row_ok, D, CT, BF16, BLOCK_M, BLOCK_D)
        if NORMALIZE:
            r_row = P.rinv_of(sq, CT)
            a_diag = sqk * (r_row * P.rinv_of(sk, CT)) * inv_tau
        else:
            a_diag = sqk * inv_tau
        m = a_diag  # the positive seeds the online LSE: max a_ii, sum exp(0) = 1
        l = tl.full([BLOCK_M], 1, CT)
    else:
        if NORMALIZE:
            r_row = P.rinv_of(P.row_sumsq(q_ptr, rows, row_ok, D, CT, BF16, BLOCK_M, BLOCK_D), CT)
        a_diag = tl.zeros([BLOCK_M], dtype=CT)
        m = tl.full([BLOCK_M], float("-inf"), CT)
        l = tl.zeros([BLOCK_M], dtype=CT)

    for n0 in range(0, N, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        col_ok = cols < N
        dot, ss = P.tile_dot(q_ptr, y_ptr, rows, row_ok, cols, col_ok, D, CT, BF16, IP, BLOCK_M, BLOCK_N, BLOCK_D)
        if NORMALIZE:  # (x_i·y_j)(r_i r_j)/τ: the same rounding in either role
            s = dot * (r_row[:, None] * P.rinv_of(ss, CT)[None, :]) * inv_tau[:, None]
        else:
            s = dot * inv_tau[:, None]
        keep = row_ok[:, None] & col_ok[None, :]
        diag = rows[:, None] == cols[None, :]
        if QUERIES:
            keep = keep & ~diag
        else:
            a_diag += tl.sum(tl.where(keep & diag, s, 0.0), axis=1)
        m, l = P.lse_update(m, l, s, keep)

    lse = P.lse_finish(m, l)
    tl.store(lse_ptr + rows, lse, mask=row_ok)
    tl.store(loss_ptr + rows, lse - a_diag, mask=row_ok)


@autotune(P.BWD_CONFIGS, key=["N", "D"])
@triton.jit(do_not_specialize=["tau_bits"])
def _info_nce_bwd_kernel(own_ptr, oth_ptr, q_ptr, k_ptr, g_ptr, lse_ptr, out_ptr, diag_ptr, N, D, tau_bits,
                         COL: tl.constexpr, QUERIES: tl.constexpr, NORMALIZE: tl.constexpr, BF16: tl.constexpr,
                         FP64: tl.constexpr, IP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_D: tl.constexpr, BLOCK_DO: tl.constexpr):
    """out[own, chunk] = (1/τ) Σ_oth G·ŷ_oth[chunk] with G_{own,oth} (row-owned) or G_{oth,own} (COL).

    Row-owned: own = q, oth = k ('keys') or q ('queries'). Column-owned: own = k, oth = q ('keys') or
    own = oth = q ('queries'). The row-owned 'queries' launch also handles the diagonal a_ii: it adds
    G_ii k̂_i to out and writes (1/τ) G_ii q̂_i to diag (dk̂).
    """
    CT: tl.constexpr = tl.float64 if FP64 else tl.float32
    inv_tau = P.div(tl.full([BLOCK_M], 1, CT), P.param(tau_bits, CT), CT)
    own = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    own_ok = own < N
    dd = tl.program_id(1).to(tl.int64) * BLOCK_DO + tl.arange(0, BLOCK_DO)
    dd_ok = dd < D
    out_offs = own[:, None] * D + dd[None, :]
    out_mask = own_ok[:, None] & dd_ok[None, :]
    if QUERIES and not COL:
        sq, sk, sqk = P.row_pair_sums(q_ptr, k_ptr, own, own_ok, D, CT, BF16, BLOCK_M, BLOCK_D)
        if NORMALIZE:
            r_own = P.rinv_of(sq, CT)
            r_k = P.rinv_of(sk, CT)
        else:
            r_own = tl.full([BLOCK_M], 1, CT)
            r_k = tl.full([BLOCK_M], 1, CT)
    else:
        if NORMALIZE:
            r_own = P.rinv_of(P.row_sumsq(own_ptr, own, own_ok, D, CT, BF16, BLOCK_M, BLOCK_D), CT)
        else:
            r_own = tl.full([BLOCK_M], 1, CT)
    if not COL:  # the anchors are the owned rows
        lse_a = tl.load(lse_ptr + own, mask=own_ok, other=0).to(CT)[:, None]
        g_a = tl.load(g_ptr + own, mask=own_ok, other=0).to(CT)[:, None]

    acc = tl.zeros([BLOCK_M, BLOCK_DO], dtype=CT)
    for n0 in range(0, N, BLOCK_N):
        oth = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        oth_ok = oth < N
        dot, ss = P.tile_dot(own_ptr, oth_ptr, own, own_ok, oth, oth_ok, D, CT, BF16, IP, BLOCK_M, BLOCK_N,
                             BLOCK_D)
        if NORMALIZE:
            r_oth = P.rinv_of(ss, CT)
            s = dot * (r_own[:, None] * r_oth[None, :]) * inv_tau[:, None]
        else:
            s = dot * inv_tau[:, None]
        valid = own_ok[:, None] & oth_ok[None, :]
        diag = own[:, None] == oth[None, :]
        if QUERIES:
            valid = valid & ~diag
        if COL:  # the anchors are the streamed rows (a_ij recomputed as k̂_j·q̂_i, b symmetric)
            lse_a = tl.load(lse_ptr + oth, mask=oth_ok, other=0).to(CT)[None, :]
            g_a = tl.load(g_ptr + oth, mask=oth_ok, other=0).to(CT)[None, :]
        pi = tl.exp(tl.where(valid, s - lse_a, float("-inf")))
        if QUERIES:
            w = g_a * pi
        else:
            w = g_a * (pi - tl.where(diag, 1.0, 0.0))
        w = tl.where(valid, w, 0.0)
        if NORMALIZE:
            w = w * r_oth[None, :]  # G·ŷ_oth = (G·r_oth)·y_oth
        y = P.load(oth_ptr, oth[:, None] * D + dd[None, :], oth_ok[:, None] & dd_ok[None, :], CT, BF16)
        acc = tl.dot(w.to(CT), y, acc, input_precision=IP)

    if QUERIES and not COL:
        # Diagonal a_ii = q̂_i·k̂_i/τ: G_ii = g_i (π_ii − 1) with π_ii = exp(a_ii − lse_i).
        if NORMALIZE:  # bit-identical to the forward's a_ii
            a_diag = sqk * (r_own * r_k) * inv_tau
        else:
            a_diag = sqk * inv_tau
        lse_o = tl.load(lse_ptr + own, mask=own_ok, other=0).to(CT)
        g_o = tl.load(g_ptr + own, mask=own_ok, other=0).to(CT)
        g_ii = tl.where(own_ok, g_o * (tl.exp(a_diag - lse_o) - 1.0), 0.0)
        kc = P.load(k_ptr, out_offs, out_mask, CT, BF16)
        acc += (g_ii * r_k)[:, None] * kc
        qc = P.load(q_ptr, out_offs, out_mask, CT, BF16)
        tl.store(diag_ptr + out_offs, (g_ii * r_own * inv_tau)[:, None] * qc, mask=out_mask)
    tl.store(out_ptr + out_offs, acc * inv_tau[:, None], mask=out_mask)


# ----------------------------------------------------------------------------------------------
# Launchers: torch ops and wrap_triton launches only (traceable by make_fx / FakeTensor).


def info_nce_rows_forward(q: torch.Tensor, k: torch.Tensor, temperature: float, negatives_queries: bool,
                          normalize: bool):
    """Per-row ``(loss_rows, lse)`` of InfoNCE, each ``[N]`` fp32 (fp64 for fp64 inputs). One kernel launch.

    ``q, k [N, D]``, same dtype (fp32/fp16/bf16/fp64) and shape; ``k`` may be ``q``.
    """
    P.check_rows("info_nce_rows_forward", q=q, k=k)
    q = q.contiguous()
    k = k.contiguous()
    N, D = q.shape
    ct = P.compute_dtype(q.dtype)
    loss = torch.empty(N, dtype=ct, device=q.device)
    lse = torch.empty(N, dtype=ct, device=q.device)

    def grid(meta):
        return (triton.cdiv(N, meta["BLOCK_M"]),)

    torch.library.wrap_triton(_info_nce_fwd_kernel)[grid](
        P.io(q), P.io(k), P.io(q if negatives_queries else k), loss, lse, N, D, P.bits(temperature),
        QUERIES=bool(negatives_queries), NORMALIZE=bool(normalize), BF16=q.dtype == torch.bfloat16,
        FP64=q.dtype == torch.float64, IP=P.dot_precision(q.dtype))
    return loss, lse


def info_nce_rows_backward(grad_rows: torch.Tensor, q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor,
                           temperature: float, negatives_queries: bool, normalize: bool):
    """``(dq, dk)`` (input dtype) of ``Σ_i grad_rows_i·loss_rows_i``, from the ``lse`` of the forward.

    Four launches: row- and column-owned gradient kernels (fp32 buffers, no atomics), then the epilogue through
    ``n(·)`` for q and for k. If ``k`` is ``q``, the caller adds the two gradients.
    """
    P.check_rows("info_nce_rows_backward", q=q, k=k)
    q = q.contiguous()
    k = k.contiguous()
    N, D = q.shape
    ct = P.compute_dtype(q.dtype)
    g, lse_t = (t.reshape(N).to(device=q.device, dtype=ct).contiguous() for t in (grad_rows, lse))
    queries = bool(negatives_queries)
    common = dict(QUERIES=queries, NORMALIZE=bool(normalize), BF16=q.dtype == torch.bfloat16,
                  FP64=q.dtype == torch.float64, IP=P.dot_precision(q.dtype))

    def grid(meta):
        return (triton.cdiv(N, meta["BLOCK_M"]), triton.cdiv(D, meta["BLOCK_DO"]))

    qi, ki = P.io(q), P.io(k)
    buf_row = torch.empty((N, D), dtype=ct, device=q.device)
    buf_col = torch.empty((N, D), dtype=ct, device=q.device)
    buf_diag = torch.empty((N, D) if queries else (1, 1), dtype=ct, device=q.device)
    torch.library.wrap_triton(_info_nce_bwd_kernel)[grid](
        qi, ki if not queries else qi, qi, ki, g, lse_t, buf_row, buf_diag, N, D, P.bits(temperature),
        COL=False, **common)
    torch.library.wrap_triton(_info_nce_bwd_kernel)[grid](
        ki if not queries else qi, qi, qi, ki, g, lse_t, buf_col, buf_diag, N, D, P.bits(temperature),
        COL=True, **common)
    if queries:
        dq = P.finish(q, buf_row, buf_col, normalize)
        dk = P.finish(k, buf_diag, None, normalize)
    else:
        dq = P.finish(q, buf_row, None, normalize)
        dk = P.finish(k, buf_col, None, normalize)
    return dq, dk
