"""Triton kernels of the supervised contrastive loss (ops.md §2): per-anchor statistics, forward and backward.

The public op (``msa_fast.ops.supcon_loss``) gates the batch and reduces; these kernels produce per-row
statistics of ``s_ij = u_i·u_j/τ`` (``u = n(z)`` if ``normalize`` else ``z``), with ``A(i) = {j ≠ i}`` and
``P(i) = {j ≠ i : label_j = label_i}`` decided in-kernel from the labels:

* ``lse_all_i = LSE_{j∈A(i)} s_ij`` (−inf when N = 1), ``n_pos_i = |P(i)|``;
* ``pos_stat_i = Σ_{j∈P(i)} s_ij`` (``'out'``, 0 over ∅) or ``LSE_{j∈P(i)} s_ij`` (``'in'``, −inf over ∅);
* ``loss_rows_i = lse_all_i − pos_stat_i/n_pos_i`` (``'out'``) or ``lse_all_i − pos_stat_i`` (``'in'``) if
  ``n_pos_i > 0``, else exactly 0 (a select). A NaN row of z makes every ``lse_all_i`` NaN (each anchor's
  denominator sees it), hence every loss row of an anchor with a positive; anchors without one stay 0, as in the
  reference's ``'out'`` variant (its ``'in'`` variant turns them NaN through a dummy LSE; the reduced loss is NaN
  either way).

Forward: one launch, grid = row blocks; each program streams all column tiles (online LSEs, fp32).
Backward (``G_ij = g_i ∂ℓ_i/∂s_ij``, ``dU_i = (1/τ) Σ_j (G_ij + G_ji) u_j``): the same kernel launched twice,
row-owned (``Σ_j G_ij u_j``, stats of the owned rows) and column-owned (``Σ_i G_ij u_i``, stats of the
streamed rows, using ``s_ij = s_ji``), each program owning a (row block, feature chunk) and writing its fp32
block once — no atomics — then ``_pairwise_rows.finish_kernel`` adds the two and goes back through ``n(·)``.
See ``_pairwise_rows`` for the tiling, normalisation and dtype conventions.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _pairwise_rows as P
from ._autotune import autotune

__all__ = ["supcon_rows_forward", "supcon_rows_backward"]


@autotune(P.FWD_CONFIGS, key=["N", "D"])
@triton.jit(do_not_specialize=["tau_bits"])
def _supcon_fwd_kernel(z_ptr, lab_ptr, loss_ptr, lse_ptr, pos_ptr, npos_ptr, N, D, tau_bits,
                       VARIANT_IN: tl.constexpr, NORMALIZE: tl.constexpr, BF16: tl.constexpr, FP64: tl.constexpr,
                       IP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    CT: tl.constexpr = tl.float64 if FP64 else tl.float32
    inv_tau = P.div(tl.full([BLOCK_M], 1, CT), P.param(tau_bits, CT), CT)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < N
    lab_r = tl.load(lab_ptr + rows, mask=row_ok, other=0)
    if NORMALIZE:
        r_row = P.rinv_of(P.row_sumsq(z_ptr, rows, row_ok, D, CT, BF16, BLOCK_M, BLOCK_D), CT)

    m_all = tl.full([BLOCK_M], float("-inf"), CT)
    l_all = tl.zeros([BLOCK_M], dtype=CT)
    m_pos = tl.full([BLOCK_M], float("-inf"), CT)
    l_pos = tl.zeros([BLOCK_M], dtype=CT)  # 'in': running sum of the positives' LSE; 'out': Σ_pos s
    cnt = tl.zeros([BLOCK_M], dtype=CT)
    for n0 in range(0, N, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        col_ok = cols < N
        dot, ss = P.tile_dot(z_ptr, z_ptr, rows, row_ok, cols, col_ok, D, CT, BF16, IP, BLOCK_M, BLOCK_N, BLOCK_D)
        if NORMALIZE:  # s = (x_i·x_j)(r_i r_j)/τ: the same rounding in either order of (i, j)
            s = dot * (r_row[:, None] * P.rinv_of(ss, CT)[None, :]) * inv_tau[:, None]
        else:
            s = dot * inv_tau[:, None]
        lab_c = tl.load(lab_ptr + cols, mask=col_ok, other=0)
        valid = row_ok[:, None] & col_ok[None, :] & (rows[:, None] != cols[None, :])
        pos = valid & (lab_r[:, None] == lab_c[None, :])
        m_all, l_all = P.lse_update(m_all, l_all, s, valid)
        cnt += tl.sum(pos.to(CT), axis=1)
        if VARIANT_IN:
            m_pos, l_pos = P.lse_update(m_pos, l_pos, s, pos)
        else:
            l_pos += tl.sum(tl.where(pos, s, 0.0), axis=1)

    lse_all = P.lse_finish(m_all, l_all)
    if VARIANT_IN:
        pos_stat = P.lse_finish(m_pos, l_pos)
        val = lse_all - tl.where(cnt > 0, pos_stat, 0.0)
    else:
        pos_stat = l_pos
        val = lse_all - P.div(pos_stat, tl.maximum(cnt, 1.0).to(CT), CT)
    loss = tl.where(cnt > 0, val, 0.0)
    tl.store(loss_ptr + rows, loss, mask=row_ok)
    tl.store(lse_ptr + rows, lse_all, mask=row_ok)
    tl.store(pos_ptr + rows, pos_stat, mask=row_ok)
    tl.store(npos_ptr + rows, cnt, mask=row_ok)


@triton.jit
def _supcon_ds(s, valid, pos, lse, ps, inv_n, has_pos, g, VARIANT_IN: tl.constexpr):
    """G = g·(p − 1[pos]/n) ('out') or g·(p − q) ('in') on valid pairs of anchors with a positive, else 0."""
    p = tl.exp(tl.where(valid, s - lse, float("-inf")))
    if VARIANT_IN:
        q = tl.exp(tl.where(pos, s - ps, float("-inf")))
    else:
        q = tl.where(pos, inv_n, 0.0)
    return tl.where(valid & has_pos, g * (p - q), 0.0)


@autotune(P.BWD_CONFIGS, key=["N", "D"])
@triton.jit(do_not_specialize=["tau_bits"])
def _supcon_bwd_kernel(z_ptr, lab_ptr, g_ptr, lse_ptr, pos_ptr, npos_ptr, out_ptr, N, D, tau_bits,
                       COL: tl.constexpr, VARIANT_IN: tl.constexpr, NORMALIZE: tl.constexpr, BF16: tl.constexpr,
                       FP64: tl.constexpr, IP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_D: tl.constexpr, BLOCK_DO: tl.constexpr):
    """out[own, chunk] = (1/τ) Σ_other G·û_other[chunk]: G_{own,other} (row-owned) or G_{other,own} (COL)."""
    CT: tl.constexpr = tl.float64 if FP64 else tl.float32
    inv_tau = P.div(tl.full([BLOCK_M], 1, CT), P.param(tau_bits, CT), CT)
    own = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    own_ok = own < N
    dd = tl.program_id(1).to(tl.int64) * BLOCK_DO + tl.arange(0, BLOCK_DO)
    dd_ok = dd < D
    lab_o = tl.load(lab_ptr + own, mask=own_ok, other=0)
    if NORMALIZE:
        r_own = P.rinv_of(P.row_sumsq(z_ptr, own, own_ok, D, CT, BF16, BLOCK_M, BLOCK_D), CT)
    if not COL:  # the anchors are the owned rows
        cnt_o = tl.load(npos_ptr + own, mask=own_ok, other=0).to(CT)
        lse_a = tl.load(lse_ptr + own, mask=own_ok, other=0).to(CT)[:, None]
        ps_a = tl.load(pos_ptr + own, mask=own_ok, other=0).to(CT)[:, None]
        g_a = tl.load(g_ptr + own, mask=own_ok, other=0).to(CT)[:, None]
        inv_n_a = P.div(tl.full([BLOCK_M], 1, CT), tl.maximum(cnt_o, 1.0).to(CT), CT)[:, None]
        has_a = (cnt_o > 0)[:, None]

    acc = tl.zeros([BLOCK_M, BLOCK_DO], dtype=CT)
    for n0 in range(0, N, BLOCK_N):
        oth = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        oth_ok = oth < N
        dot, ss = P.tile_dot(z_ptr, z_ptr, own, own_ok, oth, oth_ok, D, CT, BF16, IP, BLOCK_M, BLOCK_N, BLOCK_D)
        if NORMALIZE:
            r_oth = P.rinv_of(ss, CT)
            s = dot * (r_own[:, None] * r_oth[None, :]) * inv_tau[:, None]
        else:
            s = dot * inv_tau[:, None]
        lab_t = tl.load(lab_ptr + oth, mask=oth_ok, other=0)
        valid = own_ok[:, None] & oth_ok[None, :] & (own[:, None] != oth[None, :])
        pos = valid & (lab_o[:, None] == lab_t[None, :])
        if COL:  # the anchors are the streamed rows (s is symmetric)
            cnt_t = tl.load(npos_ptr + oth, mask=oth_ok, other=0).to(CT)
            lse_a = tl.load(lse_ptr + oth, mask=oth_ok, other=0).to(CT)[None, :]
            ps_a = tl.load(pos_ptr + oth, mask=oth_ok, other=0).to(CT)[None, :]
            g_a = tl.load(g_ptr + oth, mask=oth_ok, other=0).to(CT)[None, :]
            inv_n_a = P.div(tl.full([BLOCK_N], 1, CT), tl.maximum(cnt_t, 1.0).to(CT), CT)[None, :]
            has_a = (cnt_t > 0)[None, :]
        w = _supcon_ds(s, valid, pos, lse_a, ps_a, inv_n_a, has_a, g_a, VARIANT_IN)
        if NORMALIZE:
            w = w * r_oth[None, :]  # G·û_other = (G·r_other)·z_other
        y = P.load(z_ptr, oth[:, None] * D + dd[None, :], oth_ok[:, None] & dd_ok[None, :], CT, BF16)
        acc = tl.dot(w.to(CT), y, acc, input_precision=IP)
    tl.store(out_ptr + own[:, None] * D + dd[None, :], acc * inv_tau[:, None],
             mask=own_ok[:, None] & dd_ok[None, :])


# ----------------------------------------------------------------------------------------------
# Launchers: torch ops and wrap_triton launches only (traceable by make_fx / FakeTensor).


def _labels(labels: torch.Tensor, z: torch.Tensor, who: str) -> torch.Tensor:
    if labels.dim() != 1 or labels.shape[0] != z.shape[0]:
        raise ValueError(f"msa_fast.kernels.{who}: labels must be [N] = [{z.shape[0]}], got shape "
                         f"{tuple(labels.shape)}")
    if labels.is_floating_point():
        raise TypeError(f"msa_fast.kernels.{who}: labels must be integer or bool class ids, got {labels.dtype}")
    return labels.to(device=z.device, dtype=torch.int64).contiguous()


def supcon_rows_forward(z: torch.Tensor, labels: torch.Tensor, temperature: float, variant_in: bool,
                        normalize: bool):
    """Per-anchor ``(loss_rows, lse_all, pos_stat, n_pos)`` of supcon, each ``[N]`` fp32 (fp64 for fp64 z).

    ``z [N, D]`` fp32/fp16/bf16/fp64, ``labels [N]`` integer/bool; see the module docstring for the math.
    One kernel launch.
    """
    P.check_rows("supcon_rows_forward", z=z)
    lab = _labels(labels, z, "supcon_rows_forward")
    z = z.contiguous()
    N, D = z.shape
    ct = P.compute_dtype(z.dtype)
    loss, lse, pos, npos = (torch.empty(N, dtype=ct, device=z.device) for _ in range(4))

    def grid(meta):
        return (triton.cdiv(N, meta["BLOCK_M"]),)

    torch.library.wrap_triton(_supcon_fwd_kernel)[grid](
        P.io(z), lab, loss, lse, pos, npos, N, D, P.bits(temperature), VARIANT_IN=bool(variant_in),
        NORMALIZE=bool(normalize), BF16=z.dtype == torch.bfloat16, FP64=z.dtype == torch.float64,
        IP=P.dot_precision(z.dtype))
    return loss, lse, pos, npos


def supcon_rows_backward(grad_rows: torch.Tensor, z: torch.Tensor, labels: torch.Tensor, lse_all: torch.Tensor,
                         pos_stat: torch.Tensor, n_pos: torch.Tensor, temperature: float, variant_in: bool,
                         normalize: bool) -> torch.Tensor:
    """``dz`` (z's dtype) of ``Σ_i grad_rows_i·loss_rows_i``, from the statistics of :func:`supcon_rows_forward`.

    Anchors without a positive contribute nothing. Three launches: row-owned and column-owned gradient
    kernels (fp32 buffers, no atomics), then the epilogue through ``n(·)``.
    """
    P.check_rows("supcon_rows_backward", z=z)
    lab = _labels(labels, z, "supcon_rows_backward")
    z = z.contiguous()
    N, D = z.shape
    ct = P.compute_dtype(z.dtype)
    g, lse, ps, npos = (t.reshape(N).to(device=z.device, dtype=ct).contiguous()
                        for t in (grad_rows, lse_all, pos_stat, n_pos))
    bufs = []
    for col in (False, True):
        buf = torch.empty((N, D), dtype=ct, device=z.device)

        def grid(meta):
            return (triton.cdiv(N, meta["BLOCK_M"]), triton.cdiv(D, meta["BLOCK_DO"]))

        torch.library.wrap_triton(_supcon_bwd_kernel)[grid](
            P.io(z), lab, g, lse, ps, npos, buf, N, D, P.bits(temperature), COL=col, VARIANT_IN=bool(variant_in),
            NORMALIZE=bool(normalize), BF16=z.dtype == torch.bfloat16, FP64=z.dtype == torch.float64,
            IP=P.dot_precision(z.dtype))
        bufs.append(buf)
    return P.finish(z, bufs[0], bufs[1], normalize)
