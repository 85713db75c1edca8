"""text_impl='packed' (msa_fast/models/text_packing.py): the text encoder run on the positions a model reads
gives Hugging Face's outputs and gradients there, compiles to one graph for every padding pattern, and the
models built with it predict exactly as with text_impl='hf'."""

from __future__ import annotations

import pytest
import torch

from msa_fast.models import build
from msa_fast.models.hycon import TextEncoder, conv_last_step_reads
from msa_fast.models.mgcl import valid_and_first_reads
from msa_fast.models.text_packing import check_packable, packed_hidden
from tests.models.test_dropout_impl import DIMS, _build
from tests.models.test_hycon import make_batch

pytest.importorskip("transformers")

BERT = dict(hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=24)


def _encoder(dtype=torch.float64, **cfg):
    from msa_fast.text import random_text_encoder

    torch.manual_seed(0)
    return random_text_encoder(warn=False, **{**BERT, **cfg}).to(dtype)


def _inputs(B=5, L=11, seed=0):
    """Lengths L (full), 1, 0 (no valid token at all), then random ones."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.cat([torch.tensor([L, 1, 0]), torch.randint(2, L, (B - 3,), generator=g)])
    ids = torch.randint(5, 100, (B, L), generator=g)
    mask = (torch.arange(L)[None] < lengths[:, None]).long()
    tt = torch.randint(0, 2, (B, L), generator=g) * mask
    return ids, mask, tt


READS = {
    "valid_and_first": lambda valid: valid_and_first_reads(valid),
    "hycon_padded": lambda valid: conv_last_step_reads(valid, kernel=3, padding=1, mode="padded"),
    "hycon_valid": lambda valid: conv_last_step_reads(valid, kernel=3, padding=1, mode="valid"),
    "every": lambda valid: torch.ones_like(valid),
    "none": lambda valid: torch.zeros_like(valid),
}


@pytest.mark.parametrize("attention", ["sdpa", "eager", "msa_fast_philox"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("reads", sorted(READS))
def test_packed_equals_hugging_face_at_the_read_positions(reads, dtype, tol, attention):
    """Including the sample without a valid token, whose output depends on the attention implementation."""
    from msa_fast.models.dropout import use_philox_dropout

    enc = _encoder(dtype).eval()
    if attention == "msa_fast_philox":
        use_philox_dropout(enc)
    else:
        enc.set_attn_implementation(attention)
    ids, mask, tt = _inputs()
    r = READS[reads](mask.bool())
    with torch.no_grad():
        expected = enc(input_ids=ids, attention_mask=mask, token_type_ids=tt).last_hidden_state
        got = packed_hidden(enc, ids, mask, tt, r)
    torch.testing.assert_close(got[r], expected[r], rtol=tol, atol=tol)
    assert torch.count_nonzero(got[~r]) == 0


def test_packed_gradients_equal_hugging_face_without_dropout():
    enc = _encoder(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).train()
    ids, mask, tt = _inputs(B=6, L=9, seed=1)
    r = READS["hycon_valid"](mask.bool()) | READS["valid_and_first"](mask.bool())
    w = torch.randn(6, 9, BERT["hidden_size"], dtype=torch.float64)

    def grads(fn):
        enc.zero_grad()
        ((fn() * w)[r]).sum().backward()
        return {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}

    expected = grads(lambda: enc(input_ids=ids, attention_mask=mask, token_type_ids=tt).last_hidden_state)
    got = grads(lambda: packed_hidden(enc, ids, mask, tt, r))
    assert set(got) == set(expected) - {"pooler.dense.weight", "pooler.dense.bias"}
    for name in got:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-10, atol=1e-12, msg=name)


def test_packed_training_drops_and_runs_only_the_kept_rows():
    """Training with the Philox dropout: reproducible from the seed, different from eval, and the
    linear layers see only the kept rows (valid keys + read positions), not B·L."""
    from msa_fast.models.dropout import use_philox_dropout

    enc = use_philox_dropout(_encoder(torch.float32)).train()
    ids, mask, tt = _inputs(B=5, L=11)
    r = READS["hycon_padded"](mask.bool())
    rows = []
    hook = enc.encoder.layer[0].attention.self.key.register_forward_hook(lambda m, i, o: rows.append(o.shape[0]))
    torch.manual_seed(3)
    a = packed_hidden(enc, ids, mask, tt, r)
    torch.manual_seed(3)
    b = packed_hidden(enc, ids, mask, tt, r)
    hook.remove()
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with torch.no_grad():
        c = packed_hidden(enc.eval(), ids, mask, tt, r)
    assert not torch.allclose(a[r], c[r])
    valid = mask.bool()
    keys = valid | ~valid.any(1, keepdim=True)
    assert rows[0] == int((keys | r).sum()) < ids.numel()


def _compile_counter():
    from torch._dynamo.testing import CompileCounterWithBackend

    return CompileCounterWithBackend("inductor")


def test_packed_compiles_to_one_graph_for_every_padding_pattern():
    import torch._dynamo

    enc = _encoder(torch.float32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).train()
    torch._dynamo.reset()
    counter = _compile_counter()

    def fn(ids, mask, tt):
        r = valid_and_first_reads(mask.bool())
        return packed_hidden(enc, ids, mask, tt, r)

    compiled = torch.compile(fn, fullgraph=True, backend=counter)
    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
        for seed in (0, 1, 2):
            ids, mask, tt = _inputs(B=5, L=11, seed=seed)
            got = compiled(ids, mask, tt)
            got.square().sum().backward()
            torch.testing.assert_close(got, fn(ids, mask, tt), rtol=1e-5, atol=1e-5)
    assert counter.frame_count == 1


def test_compiled_without_the_capture_flag_falls_back_to_hugging_face():
    import torch._dynamo

    enc = _encoder(torch.float32).eval()
    ids, mask, tt = _inputs()
    r = READS["valid_and_first"](mask.bool())
    torch._dynamo.reset()
    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=False), torch.no_grad():
        got = torch.compile(lambda: packed_hidden(enc, ids, mask, tt, r), fullgraph=True, backend="eager")()
        expected = enc(input_ids=ids, attention_mask=mask, token_type_ids=tt).last_hidden_state
    torch.testing.assert_close(got[r], expected[r], rtol=1e-6, atol=1e-6)
    assert torch.count_nonzero(got[~r]) == 0


def test_conv_last_step_reads_are_the_conv_window_of_the_last_step():
    valid = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    pos = lambda m: [torch.nonzero(row).flatten().tolist() for row in m]  # noqa: E731
    assert pos(conv_last_step_reads(valid, kernel=3, padding=1, mode="padded")) == [[3, 4]] * 3
    assert pos(conv_last_step_reads(valid, kernel=3, padding=1, mode="valid")) == [[3, 4], [0, 1, 2], [0, 1]]
    # an even kernel with padding k // 2 has L + 1 output steps: the last one reads only position L − 1
    assert pos(conv_last_step_reads(valid, kernel=2, padding=1, mode="padded")) == [[4]] * 3
    assert pos(valid_and_first_reads(valid)) == [[0, 1, 2, 3, 4], [0, 1], [0]]


@pytest.mark.parametrize("model,cfg", [("hycon", {}), ("hycon", {"last_step": "valid", "conv_kernel": 5}),
                                       ("mgcl", {})])
def test_models_predict_and_train_exactly_as_with_the_hugging_face_forward(model, cfg):
    """Eval-mode outputs and the gradients of the total loss (all dropouts off in eval) are equal."""
    deep = {"text_random_config": BERT}
    packed = _build(model, "philox", text_impl="packed", **deep, **cfg).eval()
    hf = _build(model, "philox", text_impl="hf", **deep, **cfg).eval()
    hf.load_state_dict(packed.state_dict())
    batch = make_batch(6, 10, 8, 8, DIMS["d_a"], DIMS["d_v"], seed=4)
    stage = packed.stages(packed.cfg)[-1]
    results = []
    for m in (packed, hf):
        out = m(batch)
        terms = m.loss_terms(batch, out, stage)
        terms[stage.loss].backward()
        results.append((out, terms, {n: p.grad for n, p in m.named_parameters() if p.grad is not None}))
    (out_p, terms_p, g_p), (out_h, terms_h, g_h) = results
    for k in out_h:
        torch.testing.assert_close(out_p[k], out_h[k], rtol=1e-5, atol=1e-6, msg=k)
    torch.testing.assert_close(terms_p[stage.loss], terms_h[stage.loss], rtol=1e-5, atol=1e-6)
    assert set(g_p) == set(g_h)
    for n in g_h:
        torch.testing.assert_close(g_p[n], g_h[n], rtol=1e-4, atol=1e-5, msg=n)


def test_bad_text_impl_and_unsupported_encoders_fail_clearly():
    with pytest.raises(ValueError, match="text_impl must be one of"):
        TextEncoder("random", impl="flash")
    with pytest.raises(ValueError, match="text_impl must be one of"):
        build("hycon", {"text_model": "random", "text_impl": "bogus"}, DIMS)
    with pytest.raises(ValueError, match="BERT-family.*text_impl='hf'"):
        check_packable(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="decoder"):
        check_packable(_encoder(is_decoder=True))
    enc = _encoder()
    ids, mask, tt = _inputs()
    with pytest.raises(ValueError, match="reads must be a bool mask"):
        packed_hidden(enc, ids, mask, tt, mask)
    enc.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="uses 'flash_attention_2'"):
        packed_hidden(enc, ids, mask, tt, mask.bool())
