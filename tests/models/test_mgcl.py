"""MGCL (models.md §5): features and shapes from the data, the collaborative contrastive loss vs the op,
the "w/o C3" loss vs the literal pair sets, ablations, the unimodal-then-multimodal schedule (what is
frozen, what each stage computes and minimises), configs and errors, a short training run, export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from msa_fast.data.loader import StoreDataset
from msa_fast.models import MGCL, DataDims, build, default_config
from msa_fast.models.hycon import apply_stage, export_predictor, predictor_args
from msa_fast.models.mgcl import enhanced_micro, masked_mean, mgcl_loss_without_c3
from msa_fast.ops import mgcl_contrastive_loss
from msa_fast.ops.mgcl import mgcl_contrastive_loss_reference, mgcl_pair_sets, pair_weights
from tests.models.test_hycon import GRID, TINY_BERT, make_batch

pytest.importorskip("transformers")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TINY = dict(text_model="random", text_random_config=TINY_BERT, av_dim=24, av_heads=2, av_ffn=32, d_p=16,
            fusion_heads=4, predictor_hidden=[16, 8], aux_hidden=8, stage1_head_hidden=[12, 8], attn_pool_dim=8)


def make(cfg=None, D_a=74, D_v=35, d_t=None, seed=0, dataset=None):
    torch.manual_seed(seed)
    return build("mgcl", {**TINY, **(cfg or {})}, DataDims(d_a=D_a, d_v=D_v, d_t=d_t), dataset=dataset)


# --------------------------------------------------------------------------- shapes and features


@pytest.mark.parametrize("B,L_t,L_a,L_v,D_a,D_v,d_t,micro", [
    (3, 50, 50, 50, 74, 47, 768, "sequence"),      # MOSI word-aligned, cached 768-d text features
    (2, 50, 50, 50, 74, 35, None, "sequence"),     # MOSEI word-aligned
    (2, 39, 40, 55, 33, 709, None, "sequence"),    # SIMS unaligned dims (lengths shortened)
    (3, 50, 37, 45, 5, 20, None, "pooled_first"),  # MOSI unaligned dims
    (1, 2, 1, 7, 1, 1, None, "sequence"),          # the §0.2 corner
])
def test_forward_backward_shapes(B, L_t, L_a, L_v, D_a, D_v, d_t, micro):
    m = make({"text_features": d_t is not None, "micro": micro}, D_a, D_v, d_t).train()
    b = make_batch(B, L_t, L_a, L_v, D_a, D_v, d_t=d_t)
    out = m(b)
    assert out["pred"].shape == (B,) and out["aux"].shape == (B, 6)
    for k in ("T_a", "V_a", "A_a", "T_i", "V_i", "A_i"):
        assert out[k].shape == (B, 16)
    terms = m.loss_terms(b, out, m.stages()[-1])
    assert set(terms) >= {"total", "pred_mse", "con", "uni"}
    assert all(torch.isfinite(v) for v in terms.values())
    terms["total"].backward()
    for name in ("audio_enc", "vision_enc", "pool_a", "proj_macro", "proj_micro", "cmgf", "predictor", "aux"):
        assert all(p.grad is not None for p in getattr(m, name).parameters()), name


@pytest.mark.parametrize("dims,lengths,L_t,B", GRID)
def test_spec_shape_grid(dims, lengths, L_t, B):
    m = make({}, *dims)
    b = make_batch(B, L_t, *lengths, *dims)
    out = m(b)
    m.loss_terms(b, out, None)["total"].backward()
    assert out["pred"].shape == (B,) and torch.isfinite(out["pred"]).all()


def test_enhanced_micro_sequence():
    H = torch.arange(1, 13, dtype=torch.float32).view(1, 4, 3).repeat(2, 1, 1)
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    M = enhanced_micro(H, mask, 3)
    assert M.shape == (2, 4, 9)
    assert torch.equal(M[1, 2:], torch.zeros(2, 9))                     # zero past the length
    assert torch.equal(M[:, 0, 6:], torch.zeros(2, 3))                  # ΔH[:, 0] = 0
    assert torch.allclose(M[0, 1, 6:], H[0, 1] - H[0, 0])
    assert torch.allclose(M[0, 1, 3:6], H[0, :3].mean(0))               # full window
    assert torch.allclose(M[0, 0, 3:6], H[0, :2].mean(0))               # edge: valid positions only
    assert torch.allclose(M[1, 1, 3:6], H[1, :2].mean(0))               # the invalid neighbour is not counted
    assert torch.allclose(masked_mean(H, mask)[1], H[1, :2].mean(0))


def test_macro_is_cls_and_attention_pool_ignores_padding():
    m = make().eval()
    b = make_batch(3, 8, 6, 6, 74, 35)
    with torch.no_grad():
        out = m(b)
        H, _ = m.text(b)
        assert torch.allclose(out["T_a"], m.proj_macro["T"](H[:, 0]))
        b2 = make_batch(3, 8, 6, 6, 74, 35)
        b2.audio = torch.cat([b.audio, torch.randn(3, 4, 74)], 1)      # junk frames past the lengths
        assert torch.allclose(m(b2)["A_a"], out["A_a"], atol=1e-5)


# --------------------------------------------------------------------------- contrastive loss


def test_contrastive_equals_standalone_op():
    m = make().eval()
    b = make_batch(8, 10, 9, 9, 74, 35, seed=3)
    with torch.no_grad():
        out = m(b)
        t = m.loss_terms(b, out, None)
        macro, micro = (out["T_a"], out["V_a"], out["A_a"]), (out["T_i"], out["V_i"], out["A_i"])
        op = mgcl_contrastive_loss(macro, micro, b.y, 0.4, 0.03, 3.0, "mgcl")
        ref = mgcl_contrastive_loss_reference(tuple(x.double() for x in macro), tuple(x.double() for x in micro),
                                              b.y, 0.4, 0.03, 3.0, "mgcl")
    assert torch.equal(t["con"], op)
    assert torch.allclose(t["con"].double(), ref, atol=1e-4)
    assert torch.allclose(t["total"], t["pred_mse"] + 0.1 * t["con"] + 0.01 * t["uni"], atol=1e-6)
    targets = b.y[:, None].expand(-1, 6)
    assert torch.allclose(t["uni"], ((out["aux"] - targets) ** 2).sum(-1).mean())


def test_sims_label_scale_and_unimodal_targets():
    m = make(dataset="sims").eval()
    assert m.cfg["label_scale"] == 1.0
    b = make_batch(6, 8, 8, 8, 74, 35, seed=4, unimodal=True)
    b.y = b.y / 3
    with torch.no_grad():
        out = m(b)
        t = m.loss_terms(b, out, None)
        op = mgcl_contrastive_loss((out["T_a"], out["V_a"], out["A_a"]), (out["T_i"], out["V_i"], out["A_i"]),
                                   b.y, label_scale=1.0)
    assert torch.equal(t["con"], op)
    u = torch.stack([b.y, b.y, b.y, b.y_T, b.y_V, b.y_A], -1)           # macro → y, micro → y_T, y_V, y_A
    assert torch.allclose(t["uni"], ((out["aux"] - u) ** 2).sum(-1).mean())


@pytest.mark.parametrize("same_sample_c2", ["literal3", "ordered6"])
def test_without_c3_equals_literal_pair_sets(same_sample_c2):
    g = torch.Generator().manual_seed(1)
    B = 7
    macro = tuple(torch.randn(B, 5, generator=g, dtype=torch.float64) for _ in range(3))
    y = torch.tensor([-3.0, -2.9, -1.0, 0.0, 0.2, 1.5, 3.0], dtype=torch.float64)
    got = mgcl_loss_without_c3(macro, y, same_sample_c2=same_sample_c2)
    F_ = torch.nn.functional.normalize(torch.cat(macro), dim=-1)
    per = []
    for s in mgcl_pair_sets(y, 0.4, 3.0, same_sample_c2):
        keep = s["other"] < 3 * B                                        # drop C3 (micro columns)
        a, o, pos = s["anchor"][keep], s["other"][keep], s["positive"][keep]
        w = pair_weights(s["E"][keep], pos, 0.4, 1.5, "mgcl", "mgcl").double()
        lg = w * (F_[a] * F_[o]).sum(-1) / 0.03
        per.append(torch.logsumexp(lg, 0) - torch.logsumexp(lg[pos], 0) if (~pos).any() else torch.zeros(()))
    want = torch.stack(per).mean()
    assert torch.allclose(got.double(), want, atol=1e-4), (got, want)


# --------------------------------------------------------------------------- ablations


def _terms(cfg, b, seed=0):
    m = make(cfg, seed=seed).eval()
    with torch.no_grad():
        out = m(b)
        return m.loss_terms(b, out, None), out


@pytest.mark.parametrize("ablation,changed", [
    ("cl", {"total"}), ("uni", {"total"}), ("c3", {"con", "total"}), ("weight", {"con", "total"}),
])
def test_ablation_changes_only_its_terms(ablation, changed):
    b = make_batch(8, 10, 9, 9, 74, 35, seed=7)
    base, out = _terms({}, b)
    abl, out2 = _terms({"ablate": [ablation]}, b)
    assert torch.equal(out["pred"], out2["pred"])
    for k in ("pred_mse", "con", "uni", "total"):
        same = torch.equal(base[k], abl[k])
        assert same != (k in changed), (ablation, k, base[k].item(), abl[k].item())
    alpha = 0.0 if ablation == "cl" else 0.1
    beta = 0.0 if ablation == "uni" else 0.01
    assert torch.allclose(abl["total"], abl["pred_mse"] + alpha * abl["con"] + beta * abl["uni"], atol=1e-6)
    macro, micro = (out["T_a"], out["V_a"], out["A_a"]), (out["T_i"], out["V_i"], out["A_i"])
    if ablation == "weight":
        assert torch.equal(abl["con"], mgcl_contrastive_loss(macro, micro, b.y, pos_weight="none", neg_weight="none"))
    if ablation == "c3":
        assert torch.allclose(abl["con"], mgcl_loss_without_c3(macro, b.y))


def test_without_fusion_concatenates():
    m = make({"ablate": ["fusion"]})
    assert len(m.cmgf) == 0 and m.predictor[0].in_features == 6 * 16
    b = make_batch(3, 6, 5, 5, 74, 35)
    out = m(b)
    m.loss_terms(b, out, None)["total"].backward()
    assert m.predictor[0].weight.grad is not None
    assert make().predictor[0].in_features == 3 * 16


def test_ablated_terms_get_no_gradient():
    b = make_batch(6, 8, 8, 8, 74, 35)
    m = make({"ablate": ["cl", "uni"]})
    t = m.loss_terms(b, m(b), None)
    assert not t["con"].requires_grad and not t["uni"].requires_grad and t["total"].requires_grad


# --------------------------------------------------------------------------- two-stage schedule


def _grads(m):
    return {n.split(".")[0] for n, p in m.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_schedule_freezes_and_unfreezes():
    m = make(dataset="mosi")
    st = m.stages()
    assert [s.name for s in st] == ["unimodal_text", "unimodal_audio", "unimodal_vision", "multimodal"]
    assert [s.loss for s in st] == ["uni_text", "uni_audio", "uni_vision", "total"]
    assert [(s.extra["lr"], s.epochs, s.extra["batch_size"]) for s in st] == \
        [(1e-5, 150, 64), (1e-4, 200, 128), (1e-4, 200, 128), (1e-4, 50, 64)]
    assert st[0].trainable == ["text", "head_T"] and st[1].trainable == ["audio_enc", "head_A"]
    assert "text" in st[3].trainable and not {"head_T", "head_A", "head_V"} & set(st[3].trainable)
    b = make_batch(4, 8, 7, 7, 74, 35, unimodal=True)
    for s, owner in zip(st[:3], (("text", "head_T"), ("audio_enc", "head_A"), ("vision_enc", "head_V"))):
        apply_stage(m, s)
        assert {n.split(".")[0] for n, p in m.named_parameters() if p.requires_grad} == set(owner)
        m.zero_grad(set_to_none=True)
        out = m(b)
        key = {"T": "pred_T", "A": "pred_A", "V": "pred_V"}[owner[1][-1]]
        assert set(out) == {"pred", key} and torch.equal(out["pred"], out[key])   # only this branch runs
        t = m.loss_terms(b, out, s)
        assert set(t) == {s.loss, "mae"}
        label = {"T": b.y_T, "A": b.y_A, "V": b.y_V}[owner[1][-1]]
        assert torch.allclose(t[s.loss], ((out[key] - label) ** 2).mean())       # own unimodal label
        t[s.loss].backward()
        assert _grads(m) == set(owner)
        assert all(p.grad is None for n, p in m.named_parameters() if n.split(".")[0] not in owner)
    apply_stage(m, st[3])
    m.zero_grad(set_to_none=True)
    out = m(b)
    assert "T_a" in out
    m.loss_terms(b, out, st[3])["total"].backward()
    assert _grads(m) == set(m.MULTIMODAL)
    assert not any(p.requires_grad for n, p in m.named_parameters() if n.startswith("head_"))


def test_schedule_options():
    m = make({"freeze_bert": True}, dataset="mosei")
    st = m.stages()
    assert m.cfg["av_layers"] == 3 and len(m.audio_enc.layers) == 3
    assert (st[-1].epochs, st[-1].extra["batch_size"]) == (25, 8) and "text" not in st[-1].trainable
    apply_stage(m, st[-1])
    assert not any(p.requires_grad for p in m.text.parameters())
    assert [s.name for s in make({"pretrain_unimodal": False}).stages()] == ["multimodal"]
    assert [s.name for s in make({"text_features": True}, d_t=12).stages()][0] == "unimodal_audio"
    b = make_batch(4, 8, 7, 7, 74, 35, unimodal=True)
    y_only = make({"stage1_target": "y"})
    apply_stage(y_only, y_only.stages()[1])
    out = y_only(b)
    t = y_only.loss_terms(b, out, y_only.stages()[1])
    assert torch.allclose(t["uni_audio"], ((out["pred_A"] - b.y) ** 2).mean())


def test_configs_per_dataset():
    assert isinstance(make(), MGCL)
    mosi, mosei, sims = (default_config("mgcl", d) for d in ("mosi", "mosei", "sims"))
    assert (mosi["av_layers"], mosei["av_layers"], sims["av_layers"]) == (1, 3, 1)
    assert (mosi["label_scale"], mosei["label_scale"], sims["label_scale"]) == (3.0, 3.0, 1.0)
    for c in (mosi, mosei, sims):
        assert (c["delta"], c["gain"], c["tau"], c["alpha"], c["beta"], c["d_p"]) == (0.4, 1.5, 0.03, 0.1, 0.01, 384)
        assert (c["pos_weight"], c["reduction"], c["same_sample_c2"], c["micro"]) == \
            ("mgcl", "mean", "literal3", "sequence")
    with pytest.raises(ValueError, match=r"unknown config key 'tua'.*valid keys:.*'tau'"):
        build("mgcl", {"tua": 0.1}, {"d_a": 5, "d_v": 20})
    m = make(D_a=5, D_v=20)
    with pytest.raises(ValueError, match=r"vision: expected feature dim 20 .* got 35"):
        m(make_batch(2, 5, 5, 5, 5, 35))


# --------------------------------------------------------------------------- training and export


@pytest.fixture(scope="module")
def synthetic_mosei():
    from msa_fast.data.synthetic import make_synthetic

    return make_synthetic("mosei", scale=0.005, tokenizer="builtin", aligned=True)


def test_short_training_lowers_loss(synthetic_mosei):
    ds = StoreDataset(synthetic_mosei["train"])
    m = build("mgcl", TINY, DataDims.from_arrays(synthetic_mosei["train"]))
    stage = m.stages()[-1]
    apply_stage(m, stage)
    opt = torch.optim.Adam(m.param_groups({"lr": 3e-3})[0]["params"], lr=3e-3)
    n = ds.num_samples
    fixed = ds[list(range(min(n, 32)))]

    def eval_loss():
        m.eval()
        with torch.no_grad():
            t = m.loss_terms(fixed, m(fixed), stage)
        m.train()
        return {k: float(v) for k, v in t.items()}

    before = eval_loss()
    rng = np.random.default_rng(0)
    for _ in range(30):
        b = ds[sorted(rng.choice(n, 16, replace=False).tolist())]
        loss = m.loss_terms(b, m(b), stage)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after["total"] < before["total"] - 0.05, (before, after)


def test_export_round_trip(tmp_path, synthetic_mosei):
    ds = StoreDataset(synthetic_mosei["train"])
    m = build("mgcl", TINY, DataDims.from_arrays(synthetic_mosei["train"]))
    apply_stage(m, m.stages()[0])            # a unimodal stage in progress: predict() still runs MGCL
    b = ds[[0, 1, 2]]
    ep = export_predictor(m, b)              # static shapes (the dynamic batch is covered in test_hycon)
    torch.export.save(ep, tmp_path / "mgcl.pt2")
    loaded = torch.export.load(tmp_path / "mgcl.pt2").module()
    with torch.no_grad():
        for idx in ([0, 1, 2], [3, 5, 7]):
            bb = ds[idx]
            want = m.predict(bb)
            assert torch.equal(loaded(*predictor_args(bb)), want)
            assert torch.equal(want, m(bb, full=True)["pred"])
