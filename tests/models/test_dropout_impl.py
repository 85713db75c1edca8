"""dropout_impl (msa_fast/models/dropout.py): 'philox' rewrites every dropout of a model — nn.Dropout,
nn.MultiheadAttention's attention dropout, Hugging Face attention — onto msa_fast.ops.dropout, keeping
parameters, state-dict keys and eval-mode predictions exactly; 'torch' leaves the model as built."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from msa_fast.models import build
from msa_fast.models.dropout import PhiloxMultiheadAttention, apply_dropout_impl
from msa_fast.nn import Dropout
from tests.models.test_hycon import TINY, make_batch

pytest.importorskip("transformers")

DIMS = dict(d_a=74, d_v=35, d_t=None)


def _build(model, impl, **cfg):
    torch.manual_seed(0)
    tiny = dict(TINY) if model == "hycon" else dict(
        text_model="random", text_random_config=TINY["text_random_config"], d_p=16, av_dim=16, av_heads=2,
        av_ffn=32, attn_pool_dim=8, fusion_heads=2, predictor_hidden=[16, 8], aux_hidden=8,
        stage1_head_hidden=[16, 8])
    return build(model, {**tiny, "dropout_impl": impl, **cfg}, DIMS)


@pytest.mark.parametrize("model", ["hycon", "mgcl"])
def test_philox_replaces_every_dropout_and_keeps_state_and_predictions(model):
    torch_m, philox_m = _build(model, "torch"), _build(model, "philox")
    kinds = {type(m) for m in philox_m.modules()}
    assert nn.Dropout not in kinds and nn.MultiheadAttention not in kinds
    assert Dropout in kinds and PhiloxMultiheadAttention in kinds
    assert type(philox_m.text.encoder).__name__.startswith("Bert")
    assert philox_m.text.encoder.config._attn_implementation == "msa_fast_philox"
    a, b = torch_m.state_dict(), philox_m.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    batch = make_batch(3, 12, 9, 10, 74, 35)
    torch_m.eval(), philox_m.eval()
    with torch.no_grad():
        torch.testing.assert_close(philox_m.predict(batch), torch_m.predict(batch), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model", ["hycon", "mgcl"])
def test_philox_training_step_is_reproducible_and_drops(model):
    m = _build(model, "philox")
    m.train()
    batch = make_batch(4, 12, 9, 10, 74, 35)

    def step():
        torch.manual_seed(5)
        out = m(batch)
        loss = m.loss_terms(batch, out, m.stages({})[-1])["total"]
        grads = torch.autograd.grad(loss, [p for p in m.parameters() if p.requires_grad], allow_unused=True)
        return out["pred"].detach(), grads

    (p1, g1), (p2, g2) = step(), step()
    assert torch.equal(p1, p2)
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(g1, g2))
    torch.manual_seed(6)
    assert not torch.equal(m(batch)["pred"].detach(), p1)  # a new seed, new masks


@pytest.mark.parametrize("mask_kind", ["none", "bool", "float"])
@pytest.mark.parametrize("batch_first", [True, False])
def test_philox_attention_equals_multihead_attention_without_dropout(mask_kind, batch_first):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(12, 3, dropout=0.5, batch_first=batch_first)
    q, kv = torch.randn(4, 5, 12), torch.randn(4, 7, 12)
    pad = torch.zeros(4, 7, dtype=torch.bool)
    pad[1, 4:] = True
    kpm = {"none": None, "bool": pad, "float": torch.zeros(4, 7).masked_fill(pad, float("-inf"))}[mask_kind]
    args = (q, kv, kv) if batch_first else (q.transpose(0, 1), kv.transpose(0, 1), kv.transpose(0, 1))
    expected, w_expected = mha.eval()(*args, key_padding_mask=kpm)
    mha.__class__ = PhiloxMultiheadAttention
    mha.train()
    mha.dropout = 1e-12  # the explicit path, with every weight kept
    got, w_got = mha(*args, key_padding_mask=kpm)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w_got, w_expected, rtol=1e-5, atol=1e-6)


def test_philox_attention_drops_attention_weights():
    torch.manual_seed(0)
    mha = PhiloxMultiheadAttention(8, 2, dropout=0.5, batch_first=True)
    x = torch.randn(2, 6, 8)
    a = mha(x, x, x, need_weights=False)[0]
    b = mha(x, x, x, need_weights=False)[0]
    assert not torch.equal(a, b)
    mha.eval()
    assert torch.equal(mha(x, x, x)[0], mha(x, x, x)[0])


def test_philox_bert_in_eval_mode_matches_its_own_attention_with_padding(monkeypatch):
    """An encoder converted while in eval mode stays in eval mode (its new dropouts too), and the
    'msa_fast_philox' key-padding mask ([B, 1, 1, kv]) gives Hugging Face's outputs on padded batches."""
    from msa_fast.models import dropout as philox_models
    from msa_fast.text import random_text_encoder

    torch.manual_seed(0)
    enc = random_text_encoder(warn=False, **TINY["text_random_config"]).eval()
    ids = torch.randint(5, 100, (4, 11))
    mask = torch.ones(4, 11, dtype=torch.long)
    mask[1, 6:] = 0
    mask[3, 2:] = 0
    with torch.no_grad():
        expected = enc(input_ids=ids, attention_mask=mask).last_hidden_state
    shapes = []
    real = philox_models._hf_key_padding_mask

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        shapes.append(tuple(out.shape))
        return out

    philox_models.use_philox_dropout(enc)
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    monkeypatch.setitem(ALL_MASK_ATTENTION_FUNCTIONS._global_mapping, philox_models.HF_ATTENTION, spy)
    assert not any(m.training for m in enc.modules())
    with torch.no_grad():
        got = enc(input_ids=ids, attention_mask=mask).last_hidden_state
    assert shapes == [(4, 1, 1, 11)]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_unsupported_attention_options_fail_clearly():
    mha = PhiloxMultiheadAttention(8, 2, dropout=0.5, batch_first=True, add_bias_kv=True)
    x = torch.randn(2, 3, 8)
    with pytest.raises(NotImplementedError, match="dropout_impl='torch'"):
        mha(x, x, x)


def test_unknown_impl_is_rejected():
    with pytest.raises(ValueError, match="dropout_impl must be one of"):
        apply_dropout_impl(nn.Linear(2, 2), "cuda")
