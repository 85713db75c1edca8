"""A BERT-family encoder run on the token positions a model reads (config key ``text_impl='packed'``).

Why: MOSEI text is padded to 50 tokens and its utterances average ~22, so Hugging Face's forward spends
more than half of the text encoder's matrix products on padding. A bidirectional encoder's padded
positions never influence a valid one (the padding mask removes them as keys), so the outputs the model
reads can be computed from a smaller set of rows, exactly:

* every layer runs its linear layers, layer norms and dropouts only on the **kept** rows (packed
  ``[N, D]``): the positions that are keys (the valid ones), plus the positions the model reads and
  their residual chain through the layers;
* attention itself runs in the padded ``[B, heads, L, L]`` layout (cheap at L = 50) with the same
  additive key-padding mask as Hugging Face's eager attention, queries and keys scattered back by index;
* the last layer runs its queries, output projection and feed-forward only on the positions the model
  reads (HyCon reads two of the 50: the conv window of the last step).

Outputs at the read positions equal Hugging Face's (the same operations on the same rows; measured
bitwise-equal in eval on the packaged MiniLM); every other position of the returned ``[B, L, D]`` is
zero. A sample with no valid token gets what the encoder's attention implementation gives it: with
``'eager'`` and ``'msa_fast_philox'`` (additive dtype-min mask) every key is equally masked and its queries
attend uniformly over all L positions, so the sample is kept whole; with ``'sdpa'`` (boolean mask, torch's
safe softmax) its attention output is zero. In training the dropout masks are drawn
over the packed rows, so they differ from the padded forward's: same distribution, different stream.

Under ``torch.compile`` the kept-row count is data-dependent (``nonzero``): Dynamo must capture it as an
unbacked size, which needs ``torch._dynamo.config.capture_dynamic_output_shape_ops = True`` (the
training engine sets it around its compiled step). Without it, a compiled caller gets Hugging Face's
padded forward instead, same values, so ``fullgraph=True`` still traces.
"""

from __future__ import annotations

import torch
from torch import nn

IMPLS = ("packed", "hf")
#: Hugging Face attention implementations whose padding semantics packed_hidden reproduces, and whether a
#: sample without any valid key attends uniformly to all positions (True) or gets a zero output (False)
ATTENTIONS = {"eager": True, "msa_fast_philox": True, "sdpa": False}


def check_packable(encoder: nn.Module) -> None:
    """Raise a ValueError naming what is missing if ``encoder`` is not a BERT-layout bidirectional encoder."""
    cfg = getattr(encoder, "config", None)
    layers = getattr(getattr(encoder, "encoder", None), "layer", None)
    problems = []
    if cfg is None or not hasattr(encoder, "embeddings") or layers is None:
        problems.append("no .config / .embeddings / .encoder.layer")
    else:
        if getattr(cfg, "is_decoder", False) or getattr(cfg, "add_cross_attention", False):
            problems.append("a decoder (causal or cross attention)")
        if getattr(cfg, "position_embedding_type", "absolute") != "absolute":
            problems.append(f"position_embedding_type={cfg.position_embedding_type!r}")
        for i, layer in enumerate(layers):
            sa = getattr(getattr(layer, "attention", None), "self", None)
            needs = [sa is not None and all(hasattr(sa, a) for a in ("query", "key", "value", "dropout")),
                     hasattr(getattr(layer, "attention", None), "output"), hasattr(layer, "intermediate"),
                     hasattr(layer, "output")]
            if not all(needs):
                problems.append(f"layer {i} lacks the BERT layout (attention.self.query/key/value/dropout, "
                                "attention.output, intermediate, output)")
                break
    if problems:
        raise ValueError(f"text_impl='packed' needs a BERT-family bidirectional encoder; {type(encoder).__name__} "
                         f"has {'; '.join(problems)}. Build the model with text_impl='hf'.")


def _can_pack_here() -> bool:
    if not torch.compiler.is_compiling():
        return True
    from torch._dynamo import config

    return bool(config.capture_dynamic_output_shape_ops)


def packed_hidden(encoder: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  token_type_ids: torch.Tensor | None, reads: torch.Tensor) -> torch.Tensor:
    """``encoder(...).last_hidden_state`` at the positions ``reads`` (bool ``[B, L]``), zero elsewhere.

    ``encoder`` is a BERT-family model (:func:`check_packable`), ``attention_mask`` its 0/1 padding mask."""
    if reads.shape != input_ids.shape or reads.dtype != torch.bool:
        raise ValueError(f"reads must be a bool mask of the input_ids' shape {tuple(input_ids.shape)}, got "
                         f"{reads.dtype} {tuple(reads.shape)}")
    if not _can_pack_here():
        out = encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return out.last_hidden_state * reads[..., None].to(out.last_hidden_state.dtype)
    attention = getattr(encoder.config, "_attn_implementation", None) or "eager"
    if attention not in ATTENTIONS:
        raise ValueError(f"text_impl='packed' reproduces the attention implementations {sorted(ATTENTIONS)}; the "
                         f"encoder uses {attention!r}. Build the model with text_impl='hf'.")
    B, L = input_ids.shape
    valid = attention_mask.bool()
    has_key = valid.any(1, keepdim=True)
    keys = valid | ~has_key if ATTENTIONS[attention] else valid   # an empty sample (module docstring)
    kept = (keys | reads).reshape(-1)
    rows = kept.nonzero().squeeze(1)                      # [N] kept flat positions
    read_in_kept = reads.reshape(-1).index_select(0, rows).nonzero().squeeze(1)
    read_rows = rows.index_select(0, read_in_kept)        # [M] read flat positions (⊆ rows)

    emb = encoder.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
    D = emb.shape[-1]
    x = emb.reshape(B * L, D).index_select(0, rows)
    # Hugging Face's eager mask values: 0 on valid keys, dtype min on padding, the same for every query
    additive = torch.zeros((B, 1, 1, L), dtype=x.dtype, device=x.device).masked_fill(
        ~valid[:, None, None, :], torch.finfo(x.dtype).min)
    layers = encoder.encoder.layer
    for i, layer in enumerate(layers):
        last = i == len(layers) - 1
        sa = layer.attention.self
        x_q, q_rows = (x.index_select(0, read_in_kept), read_rows) if last else (x, rows)
        ctx = _attention(sa, sa.query(x_q), sa.key(x), sa.value(x), q_rows, rows, additive, B, L,
                         None if ATTENTIONS[attention] else has_key)
        h = layer.attention.output(ctx, x_q)              # dense → dropout → LayerNorm(· + residual)
        x = layer.output(layer.intermediate(h), h)
    return x.new_zeros(B * L, D).index_copy(0, read_rows, x).view(B, L, D)


def _attention(sa, q, k, v, q_rows, kv_rows, additive, B, L, has_key):
    """Hugging Face's eager attention in the padded layout; returns the context at ``q_rows`` ``[M, D]``.
    ``has_key`` (bool ``[B, 1]``, sdpa semantics): samples without one get zero weights."""
    D = k.shape[-1]
    heads = sa.num_attention_heads
    hd = D // heads

    def spread(t, at):  # [n, D] → [B, heads, L, hd] contiguous (a foldable bmm batch), zero rows elsewhere
        return t.new_zeros(B * L, D).index_copy(0, at, t).view(B, L, heads, hd).transpose(1, 2).contiguous()

    scaling = getattr(sa, "scaling", hd ** -0.5)
    w = torch.matmul(spread(q, q_rows), spread(k, kv_rows).transpose(2, 3)) * scaling + additive
    w = torch.softmax(w, dim=-1)
    if has_key is not None:
        w = w * has_key[:, :, None, None].to(w.dtype)
    w = sa.dropout(w)
    return torch.matmul(w, spread(v, kv_rows)).transpose(1, 2).reshape(B * L, D).index_select(0, q_rows)
