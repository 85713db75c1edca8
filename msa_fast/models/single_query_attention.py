"""One-query multi-head attention with the key and value projections folded into the query side.

MGCL's CMGF (models.md §5.2, paper Eqs. 13–16) attends from one macro vector per sample to the 2·L micro
steps of the other two modalities. ``nn.MultiheadAttention`` projects every key and value row —
``2 · (2L) · d²`` multiply-adds per sample and query (at MOSEI shapes, L = 50 and d = 384, the largest
GEMMs of a cached-feature MGCL step) — to compare them with a single query. With one query the
projections can be moved to the query side, exactly (up to rounding):

* scores: ``q_h · (W_k,h x_j + b_k,h) = (W_k,hᵀ q_h) · x_j + q_h · b_k,h``; the last term is the same
  for every key j, so softmax drops it: the scores are ``u_h · x_j`` with ``u_h = W_k,hᵀ q_h`` (d wide);
* values: ``Σ_j a_hj (W_v,h x_j + b_v,h) = W_v,h (Σ_j a_hj x_j) + b_v,h Σ_j a_hj`` (Σ_j a_hj is 1 except
  after dropout on the weights, which is kept as ``nn.MultiheadAttention`` does it).

Cost per sample and query: ``2 d² + 2 h (2L) d`` instead of ``2 (2L) d² + …`` — about 30x fewer
multiply-adds at d = 384, h = 8. The module's parameters are used as they are (same state dict), so
``cmgf_impl='mha'`` (``nn.MultiheadAttention.forward``) and ``'folded'`` are interchangeable on a trained model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from msa_fast.models.dropout import PhiloxMultiheadAttention, mask_scores

IMPLS = ("folded", "mha")


def single_query_attention(mha: nn.MultiheadAttention, query: torch.Tensor, kv: torch.Tensor,
                           key_padding_mask: torch.Tensor | None = None, impl: str = "folded") -> torch.Tensor:
    """``mha(query[:, None], kv, kv, key_padding_mask=...)[0][:, 0]`` — ``query [B, d]``, ``kv [B, T, d]``,
    ``key_padding_mask [B, T]`` (bool, True = ignore, or additive float) — computed as ``impl`` says
    (module docstring). A row whose keys are all masked gets a zero attention output (``out_proj``'s
    bias), as ``nn.MultiheadAttention`` gives, and zero gradients.

    Attention-weight dropout in training: :func:`msa_fast.ops.dropout` for a
    :class:`~msa_fast.models.dropout.PhiloxMultiheadAttention`, ``F.dropout`` otherwise."""
    if impl not in IMPLS:
        raise ValueError(f"cmgf_impl must be one of {IMPLS}, got {impl!r}")
    if query.dim() != 2 or kv.dim() != 3 or kv.shape[0] != query.shape[0] or kv.shape[2] != query.shape[1]:
        raise ValueError(f"single_query_attention: query [B, d] and kv [B, T, d] expected, got query "
                         f"{tuple(query.shape)} and kv {tuple(kv.shape)}")
    if impl == "mha":
        return mha(query[:, None], kv, kv, key_padding_mask=key_padding_mask, need_weights=False)[0][:, 0]
    if (not mha._qkv_same_embed_dim or not mha.batch_first or mha.bias_k is not None or mha.add_zero_attn
            or mha.in_proj_bias is None):
        raise NotImplementedError("cmgf_impl='folded' needs a batch_first nn.MultiheadAttention with a packed, "
                                  "biased in-projection and no add_bias_kv / add_zero_attn; use cmgf_impl='mha'")
    B, d = query.shape
    h = mha.num_heads
    hd = d // h
    w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
    b_q, _, b_v = mha.in_proj_bias.chunk(3)   # b_k only shifts every score of a head equally
    q = F.linear(query, w_q, b_q).view(B, h, hd) * (1.0 / math.sqrt(hd))
    u = torch.einsum("bhe,hed->bhd", q, w_k.view(h, hd, d))                 # [B, h, d]
    # scores [B, T, h] (keys before heads), so the backward's kv gradient is the row-major [B, T, h] @ [B, h, d].
    # Its inner size is h = 8, and aten's CPU bmm runs such products well below GEMM speed inside the
    # compiled MGCL step (~0.3 s each at B = 1,024, T = 100, d = 384); still far below the projections it replaces
    scores = torch.bmm(kv, u.transpose(1, 2))
    if key_padding_mask is not None:
        scores = mask_scores(scores, key_padding_mask[:, :, None])
    # a row with every key masked attends to nothing (zero attention output, as nn.MultiheadAttention's
    # SDPA path gives); filled before the softmax so no NaN reaches the backward
    empty = torch.isneginf(scores).all(dim=1, keepdim=True)
    weights = torch.softmax(scores.masked_fill(empty, 0.0), dim=1).masked_fill(empty, 0.0).transpose(1, 2)
    if mha.training and mha.dropout > 0.0:
        # dropped in PhiloxMultiheadAttention's [B, h, (1,) T] element order: the same seed drops the same
        # weights as cmgf_impl='mha'
        weights = _weight_dropout(mha, weights.contiguous())
    pooled = torch.bmm(weights, kv)                                          # [B, h, d]: Σ_j a_hj x_j
    heads = torch.einsum("bhd,hed->bhe", pooled, w_v.view(h, hd, d)) + weights.sum(-1, keepdim=True) * b_v.view(h, hd)
    return mha.out_proj(heads.reshape(B, d))


def _weight_dropout(mha: nn.MultiheadAttention, weights: torch.Tensor) -> torch.Tensor:
    if isinstance(mha, PhiloxMultiheadAttention):
        from msa_fast.ops.dropout import dropout

        return dropout(weights, mha.dropout)
    return F.dropout(weights, mha.dropout, training=True)
