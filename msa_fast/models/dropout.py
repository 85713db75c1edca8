"""Switch a model's dropout to msa_fast's Philox dropout op (config key ``dropout_impl``).

Why: in training on CPU, drawing dropout masks is the largest single cost of these models' steps (HyCon's
MTE drops 50 % of every ``[B·heads, T, T]`` attention map): ``torch.bernoulli_`` in eager mode, one full
Philox evaluation per element in Inductor's generated code. :func:`msa_fast.ops.dropout` serves four
elements per Philox block with a vectorised C++ kernel and regenerates the mask in backward.

``use_philox_dropout(model)`` rewrites a built model in place, keeping every parameter, buffer and
state-dict key:

* each ``nn.Dropout`` becomes :class:`msa_fast.nn.Dropout` with the same ``p``;
* each ``nn.MultiheadAttention`` becomes :class:`PhiloxMultiheadAttention` (same class layout; training
  with attention dropout computes attention explicitly so the weights go through the Philox op; eval
  and ``dropout = 0`` run ``nn.MultiheadAttention.forward`` unchanged, so predictions are identical);
* each Hugging Face model (BERT-family text encoders) is switched to the attention function
  ``'msa_fast_philox'`` (Hugging Face's eager attention with the Philox op on the weights).

The distribution is the same as torch's dropout (keep with probability 1 − p, survivors scaled by
1/(1 − p)); the random stream is not, so a run with ``dropout_impl='torch'`` draws different masks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

IMPLS = ("philox", "torch")
HF_ATTENTION = "msa_fast_philox"


class PhiloxMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose attention-weight dropout is :func:`msa_fast.ops.dropout`.

    Supports what the models use: packed in-projection (equal q/k/v widths), ``batch_first``, a bool
    (True = ignore) or additive float ``key_padding_mask`` and ``attn_mask``, ``need_weights`` (head
    average). Anything else in training falls back to ``nn.MultiheadAttention`` with a clear error."""

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if not self.training or self.dropout == 0.0:
            return super().forward(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                                   attn_mask=attn_mask, average_attn_weights=average_attn_weights,
                                   is_causal=is_causal)
        if not self._qkv_same_embed_dim or self.bias_k is not None or self.add_zero_attn or is_causal:
            raise NotImplementedError("PhiloxMultiheadAttention: separate q/k/v widths, add_bias_kv, add_zero_attn "
                                      "and is_causal are not supported; build the model with dropout_impl='torch'")
        from msa_fast.ops.dropout import dropout

        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        B, Tq, d = query.shape
        Tk = key.shape[1]
        h = self.num_heads
        hd = d // h
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)
        # [B, h, T, hd] made contiguous: otherwise Inductor can hand the CPU bmm operands whose (B, h)
        # batch dims do not fold into one stride, and aten's bmm then loops over the batch
        q = F.linear(query, w_q, b_q).view(B, Tq, h, hd).transpose(1, 2).contiguous()
        k = F.linear(key, w_k, b_k).view(B, Tk, h, hd).transpose(1, 2).contiguous()
        v = F.linear(value, w_v, b_v).view(B, Tk, h, hd).transpose(1, 2).contiguous()
        scores = torch.matmul(q * (1.0 / math.sqrt(hd)), k.transpose(-2, -1))  # [B, h, Tq, Tk]
        if attn_mask is not None:
            scores = mask_scores(scores, attn_mask if attn_mask.dim() == 2 else attn_mask.view(B, h, Tq, Tk))
        if key_padding_mask is not None:
            scores = mask_scores(scores, key_padding_mask[:, None, None, :])
        weights = torch.softmax(scores, dim=-1)
        out = torch.matmul(dropout(weights, self.dropout), v).transpose(1, 2).reshape(B, Tq, d)
        out = self.out_proj(out)
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, (weights.mean(dim=1) if average_attn_weights else weights)


def mask_scores(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``scores`` with an attention mask broadcast onto them: bool (True = ignore) → ``-inf``, float → added."""
    if mask.dtype == torch.bool:
        return scores.masked_fill(mask, float("-inf"))
    return scores + mask.to(scores.dtype)


def _hf_philox_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Hugging Face's eager attention (``[B, heads, T, head_dim]`` in, ``[B, T, heads, head_dim]`` out) with
    the weights' dropout done by :func:`msa_fast.ops.dropout`."""
    from msa_fast.ops.dropout import dropout as philox_dropout

    if scaling is None:
        scaling = query.size(-1) ** -0.5
    query, key, value = query.contiguous(), key.contiguous(), value.contiguous()  # see PhiloxMultiheadAttention
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask[:, :, :, : key.shape[-2]]
    weights = torch.softmax(weights, dim=-1)
    if module.training and dropout > 0.0:
        weights = philox_dropout(weights, dropout)
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return out, weights


def _hf_key_padding_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None,
                         attention_mask=None, dtype=torch.float32, **kwargs):
    """The additive mask of ``'msa_fast_philox'``: Hugging Face's ``eager_mask``, except that a bidirectional
    encoder's padding mask stays ``[B, 1, 1, kv]`` instead of being expanded over the queries.

    Why: the expanded mask is built inside the compiled graph from index arithmetic on the query axis, and
    Inductor then laid the saved softmax output of every BERT layer out heads-innermost (strides
    ``(30000, 1, 600, 12)`` at ``[64, 12, 50, 50]``), writing it with scalar stores: the fused softmax took
    ~10 ms per layer instead of ~4. Values are identical (``eager_mask`` is ``0`` / dtype min on the same
    keys for every query)."""
    from transformers.masking_utils import bidirectional_mask_function, eager_mask

    if (mask_function is bidirectional_mask_function and q_offset == 0 and kv_offset == 0
            and isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2
            and tuple(attention_mask.shape) == (batch_size, kv_length)):
        keep = attention_mask.bool()[:, None, None, :]
        return torch.where(keep, torch.zeros((), device=keep.device, dtype=dtype), torch.finfo(dtype).min)
    return eager_mask(batch_size, q_length, kv_length, q_offset=q_offset, kv_offset=kv_offset,
                      mask_function=mask_function, attention_mask=attention_mask, dtype=dtype, **kwargs)


def _register_hf_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    if HF_ATTENTION not in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionInterface.register(HF_ATTENTION, _hf_philox_attention)
        AttentionMaskInterface.register(HF_ATTENTION, _hf_key_padding_mask)


def _is_hf_model(module: nn.Module) -> bool:
    return hasattr(module, "config") and hasattr(module.config, "_attn_implementation") and \
        hasattr(module, "set_attn_implementation")


def use_philox_dropout(model: nn.Module) -> nn.Module:
    """Rewrite ``model`` in place to draw every dropout mask with the Philox op (module docstring)."""
    from msa_fast.nn import Dropout

    for module in model.modules():
        if _is_hf_model(module) and module.config._attn_implementation != HF_ATTENTION:
            _register_hf_attention()
            module.set_attn_implementation(HF_ATTENTION)
        if type(module) is nn.MultiheadAttention:
            module.__class__ = PhiloxMultiheadAttention  # same attributes and parameters: only forward differs
        for name, child in module.named_children():
            if type(child) is nn.Dropout:
                setattr(module, name, Dropout(child.p).train(child.training))  # a model in eval stays in eval
    return model


def apply_dropout_impl(model: nn.Module, impl: str) -> nn.Module:
    """``'philox'``: :func:`use_philox_dropout`; ``'torch'``: leave torch's dropout as built."""
    if impl not in IMPLS:
        raise ValueError(f"dropout_impl must be one of {IMPLS}, got {impl!r}")
    return use_philox_dropout(model) if impl == "philox" else model
