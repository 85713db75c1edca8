"""HyCon (models.md §2): shapes from the data, the fused contrastive terms, ablations, fusion options,
schedule/optimiser groups, a short training run, configs and errors, torch.export round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from msa_fast.data.loader import Batch, StoreDataset
from msa_fast.models import HyCon, DataDims, build, available_models, default_config
from msa_fast.models.hycon import apply_stage, export_predictor, hycon_refinement, predictor_args, sinusoidal_table
from msa_fast.ops import hycon_loss
from msa_fast.ops.hycon import hycon_loss_reference

pytest.importorskip("transformers")

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny models: one intra-op thread is much faster, and robust on a loaded machine (2 threads spin)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TINY_BERT = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
TINY = dict(text_model="random", text_random_config=TINY_BERT, d=12, mte_heads=3, mte_layers=1)


def make_batch(B, L_t, L_a, L_v, D_a, D_v, *, d_t=None, seed=0, unimodal=False):
    g = torch.Generator().manual_seed(seed)
    tl = torch.randint(2, L_t + 1, (B,), generator=g) if L_t > 2 else torch.full((B,), L_t)
    ids = torch.randint(1000, 2000, (B, L_t), generator=g)
    pos = torch.arange(L_t)[None]
    ids = torch.where(pos < tl[:, None], ids, 0)
    ids[:, 0] = 101
    ids[torch.arange(B), tl - 1] = 102
    mask = (pos < tl[:, None]).long()
    al = torch.randint(1, L_a + 1, (B,), generator=g)
    vl = torch.randint(1, L_v + 1, (B,), generator=g)
    am, vm = torch.arange(L_a)[None] < al[:, None], torch.arange(L_v)[None] < vl[:, None]
    audio = torch.randn(B, L_a, D_a, generator=g) * am[..., None]
    vision = torch.randn(B, L_v, D_v, generator=g) * vm[..., None]
    y = (torch.rand(B, generator=g) * 6 - 3)
    kw = {}
    if d_t is not None:
        kw["text_feat"] = torch.randn(B, L_t, d_t, generator=g)
    if unimodal:
        kw.update(y_T=torch.rand(B, generator=g) * 2 - 1, y_A=torch.rand(B, generator=g) * 2 - 1,
                  y_V=torch.rand(B, generator=g) * 2 - 1)
    return Batch(index=torch.arange(B), text_ids=ids, text_mask=mask, text_type=torch.zeros_like(ids), text_len=tl,
                 audio=audio, audio_len=al, audio_mask=am, vision=vision, vision_len=vl, vision_mask=vm, y=y,
                 id=[str(i) for i in range(B)], **kw)


def make(cfg=None, D_a=74, D_v=35, d_t=None, seed=0):
    torch.manual_seed(seed)
    return build("hycon", {**TINY, **(cfg or {})}, DataDims(d_a=D_a, d_v=D_v, d_t=d_t))


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("B,L_t,L_a,L_v,D_a,D_v,d_t", [
    (3, 50, 50, 50, 74, 47, 768),      # MOSI word-aligned (HyCon's data), cached 768-d text features
    (2, 50, 50, 50, 74, 35, 768),      # MOSEI word-aligned
    (2, 39, 40, 55, 33, 709, None),    # SIMS unaligned dims (lengths shortened)
    (3, 50, 37, 50, 5, 20, None),      # MOSI unaligned dims
    (1, 2, 1, 7, 1, 1, None),          # the §0.2 corner: D = 1, length 1, text length 2, B = 1
])
def test_forward_backward_shapes(B, L_t, L_a, L_v, D_a, D_v, d_t):
    cfg = {"text_features": d_t is not None}
    m = make(cfg, D_a, D_v, d_t).train()
    b = make_batch(B, L_t, L_a, L_v, D_a, D_v, d_t=d_t)
    out = m(b)
    assert out["pred"].shape == (B,) and out["pred"].dtype == torch.float32
    for k in ("x_l", "x_a", "x_v", "fused"):
        assert out[k].shape == (B, 12)
    terms = m.loss_terms(b, out, m.stages()[0])
    assert set(terms) == {"mae", "iamcl", "iemcl", "scl", "total"}
    assert all(torch.isfinite(v) for v in terms.values())
    terms["total"].backward()
    for name in ("conv_l.weight", "conv_a.weight", "conv_v.weight", "regressor.weight"):
        assert dict(m.named_parameters())[name].grad is not None, name
    if d_t is None:
        assert m.text.encoder.embeddings.word_embeddings.weight.grad is not None


# models.md §0.2 grid: every (D_a, D_v), audio/visual length, text length and B value appears at least once
GRID = [((1, 1), (1, 375), 2, 1), ((5, 20), (7, 50), 39, 2), ((74, 35), (50, 7), 50, 3), ((33, 709), (375, 1), 2, 2)]


@pytest.mark.parametrize("dims,lengths,L_t,B", GRID)
def test_spec_shape_grid(dims, lengths, L_t, B):
    m = make({"last_step": "valid"}, *dims)
    b = make_batch(B, L_t, *lengths, *dims)
    out = m(b)
    m.loss_terms(b, out, None)["total"].backward()
    assert out["pred"].shape == (B,) and torch.isfinite(out["pred"]).all()


def test_packaged_text_encoder_default():
    from msa_fast import text

    if text.packaged_model_dir() is None:
        pytest.skip(f"{text.PACKAGE_DIST} not installed")
    m = build("hycon", {"d": 8, "mte_heads": 2, "mte_layers": 1}, {"d_a": 5, "d_v": 20}).eval()
    assert m.text.width == text.text_hidden_size() and m.conv_l.in_channels == m.text.width
    with torch.no_grad():
        assert m(make_batch(2, 8, 4, 4, 5, 20))["pred"].shape == (2,)


def test_same_weights_run_on_any_length():
    m = make().eval()
    with torch.no_grad():
        for L in (1, 7, 50):
            assert m(make_batch(2, 5, L, L + 3, 74, 35))["pred"].shape == (2,)


def test_sinusoidal_table_rules():
    pos = torch.tensor([[0, 1, 2, 3]])
    t = sinusoidal_table(pos, 7)
    assert t.shape == (1, 4, 7)
    assert torch.all(t[0, 0] == 0) and torch.all(t[..., 6] == 0)           # padding row, odd-D zero column
    assert torch.allclose(t[0, 1, :3], torch.sin(torch.tensor([1.0, 0.01, 1e-4])), atol=1e-6)
    assert torch.all(sinusoidal_table(pos, 1) == 0)
    assert torch.allclose(sinusoidal_table(pos, 2)[0, 1], torch.tensor([np.sin(1.0), np.cos(1.0)]).float())


def test_last_step_modes():
    b = make_batch(3, 10, 9, 8, 74, 35)
    pad, val = make({"last_step": "padded"}).eval(), make({"last_step": "valid"}).eval()
    with torch.no_grad():
        op, ov = pad(b), val(b)
    assert not torch.allclose(op["x_a"], ov["x_a"])
    # 'valid' ignores everything past each sample's length: padding the batch more changes nothing
    b2 = make_batch(3, 10, 9, 8, 74, 35)
    b2.audio = torch.cat([b.audio, torch.randn(3, 5, 74)], 1)   # junk frames past the lengths are zeroed
    with torch.no_grad():
        assert torch.allclose(val.forward(b)["x_l"], val.forward(b2)["x_l"])


# --------------------------------------------------------------------------- contrastive terms


def test_contrastive_terms_equal_standalone_ops():
    m = make().eval()
    b = make_batch(8, 12, 10, 10, 74, 35, seed=3)
    with torch.no_grad():
        out = m(b)
        terms = m.loss_terms(b, out, m.stages()[0])
        ops = hycon_loss(out["x_l"], out["x_a"], out["x_v"], b.y, 0.8)
        ref = hycon_loss_reference(out["x_l"].double(), out["x_a"].double(), out["x_v"].double(), b.y, 0.8)
        mae = (out["pred"] - b.y).abs().mean()
    for k, o, r in zip(("iamcl", "iemcl", "scl"), ops, ref):
        assert torch.equal(terms[k], o), k
        assert torch.allclose(terms[k].double(), r, atol=1e-5), k
    assert torch.allclose(terms["total"], mae + ops[0] + ops[1] + ops[2])


def test_lambdas_and_options_passed_through():
    m = make({"lambda1": 0.5, "lambda2": 2.0, "lambda3": 0.0, "reduction": "sum", "drop_zero_pairs": True,
              "sim_transform": "cos01", "use_log": True}).eval()
    b = make_batch(6, 8, 8, 8, 74, 35, seed=5)
    b.y[0] = 0.0
    with torch.no_grad():
        out = m(b)
        t = m.loss_terms(b, out, None)
        ref = hycon_loss_reference(out["x_l"], out["x_a"], out["x_v"], b.y, 0.8, reduction="sum", drop_zero=True,
                                   sim_transform="cos01", use_log=True)
    for k, r in zip(("iamcl", "iemcl", "scl"), ref):
        assert torch.allclose(t[k], r, atol=1e-5)
    assert torch.allclose(t["total"], t["mae"] + 0.5 * t["iamcl"] + 2.0 * t["iemcl"], atol=1e-6)


def test_refinement_matches_reference_split():
    # the reference with the refinement removed = reference − hycon_refinement (checked with α ≠ 1)
    g = torch.Generator().manual_seed(0)
    x = [torch.randn(9, 5, generator=g, dtype=torch.float64) for _ in range(3)]
    y = torch.randn(9, generator=g, dtype=torch.float64)
    ia, ie, _ = hycon_loss_reference(*x, y, 0.7)
    ra, re = hycon_refinement(*x, y, 0.7)
    # anchors with positives: the refinement part is the mean of (s − 1)² / (s − α)² over positives
    z = [torch.nn.functional.normalize(v.float(), dim=-1) for v in x]
    cls = (y >= 0)
    want_a = []
    for m in range(3):
        for k in range(9):
            pos = [j for j in range(9) if j != k and cls[j] == cls[k]]
            if pos:
                want_a.append(np.mean([float((z[m][k] @ z[m][j] - 1) ** 2) for j in pos]))
    assert abs(float(ra) - np.mean(want_a)) < 1e-5
    assert float(ra) >= 0 and float(re) >= 0 and float(ia - ra) <= 1.0 + 1e-6


# --------------------------------------------------------------------------- ablations


def _terms(cfg, b):
    m = make(cfg).eval()
    with torch.no_grad():
        out = m(b)
        return m.loss_terms(b, out, None), out


@pytest.mark.parametrize("ablation,changed", [
    ("cl", {"total"}), ("iamcl", {"total"}), ("iemcl", {"total"}), ("scl", {"total"}),
    ("margin", {"iemcl", "scl", "total"}), ("refinement", {"iamcl", "iemcl", "total"}),
])
def test_ablation_changes_only_its_terms(ablation, changed):
    b = make_batch(8, 10, 10, 10, 74, 35, seed=7)
    base, out = _terms({}, b)
    abl, out2 = _terms({"ablate": [ablation]}, b)
    assert torch.equal(out["pred"], out2["pred"])                   # same weights, same forward
    for k in ("mae", "iamcl", "iemcl", "scl", "total"):
        same = torch.allclose(base[k], abl[k], atol=1e-6)
        assert same != (k in changed), (ablation, k, base[k], abl[k])
    off = {"cl": ("iamcl", "iemcl", "scl")}.get(ablation, (ablation,) if ablation in ("iamcl", "iemcl", "scl") else ())
    expect = abl["mae"] + sum(abl[k] for k in ("iamcl", "iemcl", "scl") if k not in off)
    assert torch.allclose(abl["total"], expect, atol=1e-6)
    if ablation == "margin":
        ops = hycon_loss(out["x_l"], out["x_a"], out["x_v"], b.y, 1.0)
        assert torch.allclose(abl["iemcl"], ops[1]) and torch.allclose(abl["scl"], ops[2])
    if ablation == "refinement":
        assert torch.allclose(abl["iamcl"] + abl["iamcl_ref"], base["iamcl"], atol=1e-6)
        assert torch.allclose(abl["iemcl"] + abl["iemcl_ref"], base["iemcl"], atol=1e-6)


def test_ablated_terms_get_no_gradient():
    b = make_batch(6, 8, 8, 8, 74, 35, seed=2)
    m = make({"ablate": ["cl"]})
    t = m.loss_terms(b, m(b), None)
    assert not t["iamcl"].requires_grad and t["total"].requires_grad


# --------------------------------------------------------------------------- fusion, schedule, configs


@pytest.mark.parametrize("fusion", ["add", "concat", "tensor", "graph"])
def test_fusion_options(fusion):
    m = make({"fusion": fusion, "regressor": "mlp"})
    b = make_batch(3, 6, 5, 5, 74, 35)
    out = m(b)
    assert out["fused"].shape == (3, 12)
    out["pred"].sum().backward()
    if fusion == "tensor":
        assert m.fusion.fc.weight.shape == (12, 13 ** 3)
    if fusion == "add":
        assert m.fusion is None and torch.allclose(out["fused"], out["x_l"] + out["x_a"] + out["x_v"])
    else:
        assert all(p.grad is not None for p in m.fusion.parameters())


def test_freeze_text_and_cached_features():
    m = make({"freeze_text": True})
    assert not any(p.requires_grad for p in m.text.encoder.parameters())
    st = m.stages()[0]
    assert "text" not in st.trainable and "conv_l" in st.trainable
    apply_stage(m, st)
    assert not any(p.requires_grad for p in m.text.encoder.parameters())
    m.train()
    assert not m.text.encoder.training                       # frozen encoder runs without dropout
    f = make({"text_features": True}, d_t=20)
    assert f.text.encoder is None and f.conv_l.in_channels == 20
    with pytest.raises(ValueError, match="d_t"):
        make({"text_features": True})


def test_param_groups():
    m = make()
    (g,) = m.param_groups({})
    assert g["lr"] == 1e-5 and len(g["params"]) == len(list(m.parameters()))
    g1, g2 = make({"optim": "two_groups"}).param_groups({})
    assert (g1["lr"], g2["lr"]) == (1e-5, 2e-5)
    assert len(g1["params"]) + len(g2["params"]) == len(list(m.parameters()))
    st = m.stages()[0]
    assert st.loss == "total" and st.epochs == 50 and st.extra == {"lr": 1e-5, "batch_size": 32}


def test_configs_per_dataset():
    assert available_models() == ["hycon", "mgcl"]
    for ds in ("mosi", "mosei", "sims"):
        c = default_config("hycon", ds)
        assert (c["d"], c["alpha"], c["lr"], c["batch_size"], c["epochs"]) == (50, 0.8, 1e-5, 32, 50)
        assert (c["mte_heads"], c["mte_layers"], c["attn_dropout"], c["fusion"]) == (5, 3, 0.5, "add")
    m = build("hycon", {"hycon.fusion": "concat", **TINY}, {"audio": 5, "vision": 20})
    assert isinstance(m, HyCon) and m.name == "hycon"
    assert m.cfg["fusion"] == "concat" and m.conv_a.in_channels == 5 and m.conv_v.in_channels == 20


def test_config_and_dim_errors():
    with pytest.raises(ValueError, match=r"unknown config key 'fusoin'.*valid keys:.*'fusion'"):
        build("hycon", {"fusoin": "add"}, {"d_a": 5, "d_v": 20})
    with pytest.raises(ValueError, match="fusion.*must be one of"):
        build("hycon", {"fusion": "sum"}, {"d_a": 5, "d_v": 20})
    with pytest.raises(ValueError, match="unknown ablation"):
        build("hycon", {"ablate": ["c3"]}, {"d_a": 5, "d_v": 20})
    with pytest.raises(ValueError, match="unknown model"):
        build("mult", {}, {"d_a": 5, "d_v": 20})
    m = make(D_a=74, D_v=35)
    with pytest.raises(ValueError, match=r"audio: expected feature dim 74 .* got 5"):
        m(make_batch(2, 5, 5, 5, 5, 35))
    with pytest.raises(ValueError, match=r"vision: expected feature dim 35 .* got 47"):
        m(make_batch(2, 5, 5, 5, 74, 47))


# --------------------------------------------------------------------------- training and export


@pytest.fixture(scope="module")
def synthetic_mosi():
    from msa_fast.data.synthetic import make_synthetic

    return make_synthetic("mosi", scale=0.05, tokenizer="builtin", aligned=True)


def test_short_training_lowers_loss(synthetic_mosi):
    ds = StoreDataset(synthetic_mosi["train"])
    dims = DataDims.from_arrays(synthetic_mosi["train"])
    torch.manual_seed(0)
    m = build("hycon", TINY, dims)
    opt = torch.optim.Adam(m.param_groups({"lr": 3e-3})[0]["params"], lr=3e-3)
    n = ds.num_samples
    fixed = ds[list(range(min(n, 32)))]

    def eval_loss():
        m.eval()
        with torch.no_grad():
            t = m.loss_terms(fixed, m(fixed), None)
        m.train()
        return {k: float(v) for k, v in t.items()}

    before = eval_loss()
    rng = np.random.default_rng(0)
    for _ in range(30):
        b = ds[sorted(rng.choice(n, 16, replace=False).tolist())]
        loss = m.loss_terms(b, m(b), m.stages()[0])["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after["total"] < before["total"] - 0.05, (before, after)


def test_export_round_trip(tmp_path, synthetic_mosi):
    ds = StoreDataset(synthetic_mosi["train"])
    m = build("hycon", {**TINY, "mte_heads": 2}, DataDims.from_arrays(synthetic_mosi["train"]))   # even heads
    b = ds[[0, 1, 2]]
    ep = export_predictor(m, b, dynamic_batch=True)
    torch.export.save(ep, tmp_path / "hycon.pt2")
    loaded = torch.export.load(tmp_path / "hycon.pt2").module()
    with torch.no_grad():
        for idx in ([0, 1, 2], [3, 4, 5, 6, 7]):
            bb = ds[idx]
            assert torch.equal(loaded(*predictor_args(bb)), m.predict(bb))


def test_export_with_cached_text_features(tmp_path):
    m = make({"text_features": True}, d_t=24).eval()
    b = make_batch(3, 6, 5, 5, 74, 35, d_t=24)
    ep = export_predictor(m, b)
    with torch.no_grad():
        assert torch.equal(ep.module()(*predictor_args(b, True)), m.predict(b))
