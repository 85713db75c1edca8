"""Triton kernels of cutoff (ops.md §9), bit-identical to ``csrc/cpu/cutoff.cpp``.

The kernels move raw bit patterns (x viewed as int16/int32/int64), so every float dtype is copied exactly,
and cut entries are produced by selection: a cut element is never loaded and is stored as the all-zero
pattern (+0.0), which is what the C++ kernel's AND with an all-zeros word gives. NaN/Inf at a cut position
therefore become 0, elsewhere every bit passes through.

* ``'feature'``: grid (B, D-blocks, L-chunks). A program rebuilds the cut set of its D-block from the
  ``n = int(D·ratio)`` draws of its sample (offset ``b·D + t``, index ``(r·D) >> 32``), then streams
  ``ROWS_PER_PROG`` rows through it.
* ``'token'`` / ``'span'``: grid (B, L-blocks). A program rebuilds the cut rows of its L-block (token:
  ``n_b`` draws at offset ``b·L + t``, position ``(r·len_b) >> 32``; span: one draw at offset ``b``), then
  streams the D columns of those rows.

Draw counts are computed on the host side in float64 (``int(len·ratio)`` exactly as Python), because Triton's
float scalars are fp32. The seed stays a device tensor (no ``.item()``), so the launcher traces under make_fx.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._autotune import autotune
from .philox import index_from_bits

__all__ = ["cutoff_forward"]

_BITS_OF_SIZE = {2: torch.int16, 4: torch.int32, 8: torch.int64}

_FEATURE_CONFIGS = [
    triton.Config({"BLOCK_L": 16, "BLOCK_D": 128, "ROWS_PER_PROG": 128, "BLOCK_T": 32}, num_warps=4),
    triton.Config({"BLOCK_L": 32, "BLOCK_D": 64, "ROWS_PER_PROG": 256, "BLOCK_T": 32}, num_warps=4),
    triton.Config({"BLOCK_L": 8, "BLOCK_D": 256, "ROWS_PER_PROG": 64, "BLOCK_T": 32}, num_warps=4),
]

_STEP_CONFIGS = [
    triton.Config({"BLOCK_L": 16, "BLOCK_D": 128, "BLOCK_T": 32}, num_warps=4),
    triton.Config({"BLOCK_L": 8, "BLOCK_D": 256, "BLOCK_T": 32}, num_warps=4),
    triton.Config({"BLOCK_L": 32, "BLOCK_D": 128, "BLOCK_T": 32}, num_warps=8),
]


@autotune(_FEATURE_CONFIGS, key=["L", "D"])
@triton.jit
def _cutoff_feature_kernel(x_ptr, out_ptr, seed_ptr, L, D, n_draws, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
                           ROWS_PER_PROG: tl.constexpr, BLOCK_T: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    row_begin = tl.program_id(2).to(tl.int64) * ROWS_PER_PROG
    d_ok = d < D
    seed = tl.load(seed_ptr)

    # Cut set of this D-block: feature (r·D) >> 32 for the draws t < n_draws, with replacement.
    cut = tl.zeros([BLOCK_D], dtype=tl.int32)
    for t0 in range(0, n_draws, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T).to(tl.int64)
        r = tl.randint(seed, (b * D + t).to(tl.uint32))
        idx = index_from_bits(r, D)
        hit = (idx[:, None] == d[None, :]) & (t < n_draws)[:, None]
        cut = tl.maximum(cut, tl.max(hit.to(tl.int32), axis=0))
    keep = d_ok & (cut == 0)

    row_end = tl.minimum(row_begin + ROWS_PER_PROG, L)
    for l0 in range(row_begin, row_end, BLOCK_L):
        l = l0 + tl.arange(0, BLOCK_L).to(tl.int64)
        offs = (b * L + l)[:, None] * D + d[None, :]
        inside = (l < row_end)[:, None] & d_ok[None, :]
        v = tl.load(x_ptr + offs, mask=inside & keep[None, :], other=0)
        tl.store(out_ptr + offs, v, mask=inside)


@autotune(_STEP_CONFIGS, key=["L", "D"])
@triton.jit
def _cutoff_step_kernel(x_ptr, out_ptr, seed_ptr, len_ptr, draws_ptr, L, D, LEFT_PADDING: tl.constexpr,
                        SPAN: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    l = tl.program_id(1).to(tl.int64) * BLOCK_L + tl.arange(0, BLOCK_L)
    l_ok = l < L
    seed = tl.load(seed_ptr)
    length = tl.load(len_ptr + b)
    n = tl.load(draws_ptr + b)  # int(len·ratio), host-computed in float64
    if LEFT_PADDING:
        begin = L - length
    else:
        begin = length * 0

    if SPAN:
        # One span of n steps starting at (r·(len − n)) >> 32, or at 0 when it fills the valid steps.
        room = length - n
        r = tl.randint(seed, b.to(tl.uint32))
        start = begin + tl.where(room >= 1, index_from_bits(r, tl.maximum(room, 0)), 0)
        cut = (l >= start) & (l < start + n)
    else:
        # n draws with replacement: valid step (r·len) >> 32, offset b·L + t.
        hits = tl.zeros([BLOCK_L], dtype=tl.int32)
        for t0 in range(0, n, BLOCK_T):
            t = t0 + tl.arange(0, BLOCK_T).to(tl.int64)
            r = tl.randint(seed, (b * L + t).to(tl.uint32))
            pos = begin + index_from_bits(r, length)
            hit = (pos[:, None] == l[None, :]) & (t < n)[:, None]
            hits = tl.maximum(hits, tl.max(hit.to(tl.int32), axis=0))
        cut = hits != 0
    keep = l_ok & (cut == 0)

    row = (b * L + l) * D
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
        offs = row[:, None] + d[None, :]
        inside = l_ok[:, None] & (d < D)[None, :]
        v = tl.load(x_ptr + offs, mask=inside & keep[:, None], other=0)
        tl.store(out_ptr + offs, v, mask=inside)


def cutoff_forward(x: torch.Tensor, ratio: float, mode: str, seed: torch.Tensor, lengths: Optional[torch.Tensor],
                   padding_side: str) -> torch.Tensor:
    """Cutoff of ``x [B, L, D]`` with the Philox stream of ``seed`` (0-dim int64); contiguous output, x's dtype.

    ``lengths``: ``[B]`` int32/int64 valid lengths in ``[0, L]`` (default ``L``); ``padding_side``: ``'right'``
    or ``'left'``. Value checks (ranges of lengths and seed) belong to the caller (``msa_fast.ops.cutoff``):
    this launcher never reads tensor values on the host.
    """
    if mode not in ("feature", "token", "span"):
        raise ValueError(f"msa_fast.kernels.cutoff: mode must be 'feature', 'token' or 'span', got {mode!r}")
    if padding_side not in ("right", "left"):
        raise ValueError(f"msa_fast.kernels.cutoff: padding_side must be 'right' or 'left', got {padding_side!r}")
    if x.dim() != 3:
        raise ValueError(f"msa_fast.kernels.cutoff: x must be [B, L, D], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"msa_fast.kernels.cutoff: x must be a floating tensor, got {x.dtype}")
    B, L, D = x.shape
    ratio = float(ratio)
    bits = x.contiguous().view(_BITS_OF_SIZE[x.element_size()])
    out = torch.empty_like(bits, memory_format=torch.contiguous_format)
    if x.numel() == 0:
        return out.view(x.dtype)
    seed_t = seed.reshape(()).to(device=x.device, dtype=torch.int64)

    if mode == "feature":
        n_draws = int(D * ratio)  # Python float64 product, as the C++ draws_for

        def grid(meta):
            return (B, triton.cdiv(D, meta["BLOCK_D"]), triton.cdiv(L, meta["ROWS_PER_PROG"]))

        torch.library.wrap_triton(_cutoff_feature_kernel)[grid](bits, out, seed_t, L, D, n_draws)
    else:
        if lengths is None:
            lens = torch.full((B,), L, dtype=torch.int64, device=x.device)
        else:
            lens = lengths.to(device=x.device, dtype=torch.int64).contiguous()
        draws = (lens.to(torch.float64) * ratio).to(torch.int64)  # int(len·ratio) in float64

        def grid(meta):
            return (B, triton.cdiv(L, meta["BLOCK_L"]))

        torch.library.wrap_triton(_cutoff_step_kernel)[grid](
            bits, out, seed_t, lens, draws, L, D, LEFT_PADDING=padding_side == "left", SPAN=mode == "span")
    return out.view(x.dtype)
