"""cmgf_impl='folded' (msa_fast/models/single_query_attention.py): one-query attention with the key and value
projections moved to the query side equals nn.MultiheadAttention — values, gradients of every input and
parameter, attention-weight dropout (the same Philox masks) — and MGCL trains identically with either."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from msa_fast.models.dropout import PhiloxMultiheadAttention, use_philox_dropout
from msa_fast.models.single_query_attention import single_query_attention
from tests.models.test_dropout_impl import DIMS, _build
from tests.models.test_hycon import make_batch


def _mha(d=12, h=3, dropout=0.0, dtype=torch.float64):
    torch.manual_seed(0)
    m = nn.MultiheadAttention(d, h, dropout=dropout, batch_first=True).to(dtype)
    with torch.no_grad():  # non-zero biases: the folded form drops b_k and rescales b_v
        m.in_proj_bias.normal_()
        m.out_proj.bias.normal_()
    return m


def _inputs(B=5, T=7, d=12, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, d, generator=g, dtype=dtype, requires_grad=True)
    kv = torch.randn(B, T, d, generator=g, dtype=dtype, requires_grad=True)
    keep = torch.rand(B, T, generator=g) > 0.4
    keep[:, 0] = True
    keep[1] = True      # no padding
    keep[2, 1:] = False  # one valid key
    return q, kv, keep


def _run(m, q, kv, mask, impl, seed=None):
    m.zero_grad()
    q.grad = kv.grad = None
    if seed is not None:
        torch.manual_seed(seed)
    out = single_query_attention(m, q, kv, mask, impl)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    grads = [q.grad, kv.grad] + [p.grad for p in m.parameters()]
    return out.detach(), [g.clone() for g in grads]


@pytest.mark.parametrize("mask_kind", ["bool", "additive", "none"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_folded_equals_multihead_attention(mask_kind, dtype, tol):
    m = _mha(dtype=dtype)
    q, kv, keep = _inputs(dtype=dtype)
    mask = {"bool": ~keep, "none": None,
            "additive": torch.zeros(keep.shape, dtype=dtype).masked_fill(~keep, float("-inf"))}[mask_kind]
    out_m, g_m = _run(m, q, kv, mask, "mha")
    out_f, g_f = _run(m, q, kv, mask, "folded")
    torch.testing.assert_close(out_f, out_m, rtol=tol, atol=tol)
    for a, b in zip(g_f, g_m):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_folded_gradcheck():
    m = _mha(d=6, h=2)
    q, kv, keep = _inputs(B=3, T=4, d=6)
    assert torch.autograd.gradcheck(lambda q, kv: single_query_attention(m, q, kv, ~keep), (q, kv))


def test_philox_dropout_drops_the_same_weights_as_multihead_attention():
    m = _mha(dropout=0.4)
    use_philox_dropout(m)
    assert isinstance(m, PhiloxMultiheadAttention)
    m.train()
    q, kv, keep = _inputs()
    out_m, g_m = _run(m, q, kv, ~keep, "mha", seed=7)
    out_f, g_f = _run(m, q, kv, ~keep, "folded", seed=7)
    m.eval()
    out_eval, _ = _run(m, q, kv, ~keep, "folded")
    assert not torch.allclose(out_f, out_eval)   # the weights were dropped
    torch.testing.assert_close(out_f, out_m, rtol=1e-12, atol=1e-12)
    for a, b in zip(g_f, g_m):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_torch_dropout_is_unbiased():
    """F.dropout's stream differs from nn.MultiheadAttention's: compare the means over many draws."""
    m = _mha(dropout=0.5).train()
    q, kv, keep = _inputs()
    with torch.no_grad():
        torch.manual_seed(3)
        draws = torch.stack([single_query_attention(m, q, kv, ~keep) for _ in range(4000)])
        m.eval()
        expected = single_query_attention(m, q, kv, ~keep)
    assert draws.std(0).min() > 0
    torch.testing.assert_close(draws.mean(0), expected, rtol=0, atol=0.1)


@pytest.mark.parametrize("mask_kind", ["bool", "additive"])
def test_all_masked_row_attends_to_nothing_as_in_multihead_attention(mask_kind):
    m = _mha()
    q, kv, keep = _inputs()
    keep[3] = False
    mask = ~keep if mask_kind == "bool" else torch.zeros(keep.shape, dtype=kv.dtype).masked_fill(~keep, float("-inf"))
    out_m, g_m = _run(m, q, kv, mask, "mha")
    out_f, g_f = _run(m, q, kv, mask, "folded")
    torch.testing.assert_close(out_f[3], m.out_proj.bias.detach())
    torch.testing.assert_close(out_f, out_m, rtol=1e-12, atol=1e-12)
    assert torch.count_nonzero(g_f[0][3]) == 0 and torch.count_nonzero(g_f[1][3]) == 0
    for a, b in zip(g_f, g_m):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_compiles_fullgraph():
    m = _mha(dtype=torch.float32)
    q, kv, keep = _inputs(dtype=torch.float32)
    f = torch.compile(lambda q, kv: single_query_attention(m, q, kv, ~keep), fullgraph=True, backend="inductor")
    with torch.no_grad():
        torch.testing.assert_close(f(q, kv), single_query_attention(m, q, kv, ~keep), rtol=1e-5, atol=1e-5)


def test_bad_inputs_fail_clearly():
    m = _mha()
    q, kv, keep = _inputs()
    with pytest.raises(ValueError, match="cmgf_impl must be one of"):
        single_query_attention(m, q, kv, ~keep, "flash")
    with pytest.raises(ValueError, match=r"query \[B, d\] and kv \[B, T, d\].*\(5, 1, 12\)"):
        single_query_attention(m, q[:, None], kv, ~keep)
    with pytest.raises(ValueError, match="got query"):
        single_query_attention(m, q, kv[:, :, :6], ~keep)
    odd = nn.MultiheadAttention(12, 3, batch_first=True, add_zero_attn=True).double()
    with pytest.raises(NotImplementedError, match="cmgf_impl='mha'"):
        single_query_attention(odd, q, kv, ~keep)
    with pytest.raises(ValueError, match="cmgf_impl"):
        _build("mgcl", "philox", cmgf_impl="bogus")


@pytest.mark.parametrize("impl,fusion_dropout", [("philox", 0.0), ("philox", 0.3), ("torch", 0.0)])
def test_mgcl_trains_identically_with_either_impl(impl, fusion_dropout):
    """Training mode (every dropout on), the same seed: outputs, the total loss and every gradient agree."""
    models = [_build("mgcl", impl, cmgf_impl=c, fusion_dropout=fusion_dropout).train()
              for c in ("folded", "mha")]
    models[1].load_state_dict(models[0].state_dict())
    batch = make_batch(6, 10, 8, 8, DIMS["d_a"], DIMS["d_v"], seed=4)
    stage = models[0].stages(models[0].cfg)[-1]
    results = []
    for m in models:
        torch.manual_seed(11)
        out = m(batch)
        loss = m.loss_terms(batch, out, stage)[stage.loss]
        loss.backward()
        results.append((out, loss, {n: p.grad for n, p in m.named_parameters() if p.grad is not None}))
    (out_f, loss_f, g_f), (out_m, loss_m, g_m) = results
    if impl == "torch":  # nn.MultiheadAttention draws no mask at fusion_dropout=0: the streams stay aligned
        assert fusion_dropout == 0.0
    for k in out_m:
        torch.testing.assert_close(out_f[k], out_m[k], rtol=1e-5, atol=1e-6, msg=k)
    torch.testing.assert_close(loss_f, loss_m, rtol=1e-5, atol=1e-6)
    assert set(g_f) == set(g_m) and any(n.startswith("cmgf.") for n in g_f)
    for n in g_m:
        torch.testing.assert_close(g_f[n], g_m[n], rtol=1e-4, atol=1e-5, msg=n)
