"""mgcl_contrastive_loss reference (ops.md §5): pair counts and pair-set structure, exact values, an
independent dense implementation in the engine's row/column layout, zero weights at E = δ, label
boundary and scaling, every §5 / §10 edge case, dtypes, NaN and errors, fp64 gradcheck."""

import math

import pytest
import torch
import torch.nn.functional as F

from msa_fast.ops import reference
from msa_fast.ops.mgcl import mgcl_contrastive_loss_reference, mgcl_pair_sets

WEIGHTS = ["mgcl", "clgsi", "none"]


def make(B, d=6, dtype=torch.float64, requires_grad=False):
    feats = [torch.randn(B, d, dtype=dtype, requires_grad=requires_grad) for _ in range(6)]
    return tuple(feats[:3]), tuple(feats[3:])


def dense_engine_layout(macro, micro, y, delta=0.4, tau=0.03, label_scale=3.0, pos_weight="mgcl", neg_weight="mgcl",
                        gain=1.5, reduction="mean", same_sample_c2="literal3", normalize=True):
    """§5 "Kernel layout": rows = 3B macro features, columns = all 6B, pair structure from view ids,
    per-row LSE_pos / LSE_all merged over the three rows of a sample with logsumexp. Independent of the
    reference's literal pair lists."""
    B = y.shape[0]
    X = torch.cat([t.double() for t in macro + micro])
    Xn = F.normalize(X, dim=1) if normalize else X
    sim = Xn[: 3 * B] @ Xn.T                                            # [3B, 6B]
    vr = torch.arange(3 * B)[:, None] // B
    ir = torch.arange(3 * B)[:, None] % B
    vc = torch.arange(6 * B)[None, :] // B
    jc = torch.arange(6 * B)[None, :] % B
    yt = y.float() / torch.tensor(label_scale, dtype=torch.float32)
    E_s = (yt[:, None] - yt[None, :]).abs()
    same = ir == jc
    E = torch.where(same, torch.zeros(()), E_s[ir, jc])
    d32 = torch.tensor(delta, dtype=torch.float32)
    pos = same | (E <= d32)
    c1 = (vc == vr) & ~same
    c2 = (vc < 3) & (vc != vr)
    if same_sample_c2 == "literal3":
        lit = ((vr == 0) & (vc == 2)) | ((vr == 0) & (vc == 1)) | ((vr == 1) & (vc == 2))  # (T,A) (T,V) (V,A)
        c2 = c2 & (~same | lit)
    c3 = (vc == vr + 3) & (same | ~pos)
    in_set = c1 | c2 | c3
    g = torch.tensor(gain, dtype=torch.float32)
    w_pos = {"mgcl": g * torch.tanh(E - d32).abs(), "clgsi": g * torch.tanh(2 * d32 - E), "none": torch.ones_like(E)}
    w_neg = {"mgcl": g * torch.tanh(E).abs(), "clgsi": 0.8 * g * torch.tanh(E).abs(), "none": torch.ones_like(E)}
    W = torch.where(pos, w_pos[pos_weight], w_neg[neg_weight]).double()
    logits = W * sim / tau
    ninf = torch.tensor(-math.inf, dtype=torch.float64)
    lse_all = torch.logsumexp(torch.where(in_set, logits, ninf), dim=1).view(3, B)
    lse_pos = torch.logsumexp(torch.where(in_set & pos, logits, ninf), dim=1).view(3, B)
    has_neg = (in_set & ~pos).view(3, B, 6 * B).any(dim=2).any(dim=0)
    ell = torch.logsumexp(lse_all, dim=0) - torch.logsumexp(lse_pos, dim=0)
    ell = torch.where(has_neg, ell, 0.0)
    return ell if reduction == "none" else ell.sum() if reduction == "sum" else ell.mean()


# ---------------------------------------------------------------------------------------------
# Pair sets


@pytest.mark.parametrize("mode, extra", [("literal3", 6), ("ordered6", 9)])
def test_pair_counts(mode, extra):
    torch.manual_seed(1)
    for B in (1, 2, 7, 20):
        y = torch.empty(B).uniform_(-3, 3)
        E = (y[:, None] / 3 - y[None, :] / 3).abs()
        for i, s in enumerate(mgcl_pair_sets(y, same_sample_c2=mode)):
            others = torch.arange(B) != i
            n_p = int(((E[i] <= torch.tensor(0.4)) & others).sum())
            n_n = int(((E[i] > torch.tensor(0.4)) & others).sum())
            assert int(s["positive"].sum()) == 9 * n_p + extra
            assert int((~s["positive"]).sum()) == 12 * n_n


def test_pair_set_structure():
    B = 5
    y = torch.tensor([-3.0, -2.9, 0.0, 0.2, 3.0])
    for i, s in enumerate(mgcl_pair_sets(y)):
        a, b = s["anchor"], s["other"]
        assert (a % B == i).all() and (a < 3 * B).all()              # anchors: macro features of sample i
        micro = b >= 3 * B
        assert (b[micro] // B - 3 == a[micro] // B).all()             # macro–micro only within a modality
        neg_samples = {j for j in range(B) if j != i and abs(y[i].item() - y[j].item()) / 3 > 0.4}
        # micro features used: sample i itself (positive) and Neg(i) (negative), never a positive other
        assert set((b[micro] % B).tolist()) == {i} | neg_samples
        same = b % B == i
        assert (s["positive"][same]).all() and (s["E"][same] == 0).all()
        # no duplicate pairs
        assert len(set(zip(a.tolist(), b.tolist()))) == len(a)
    # 'literal3' same-sample C2 pairs: (T,A), (T,V) on row T_a and (V,A) on row V_a
    s = mgcl_pair_sets(y)[2]
    macro_same = (s["other"] % B == 2) & (s["other"] < 3 * B)
    pairs = sorted(zip((s["anchor"][macro_same] // B).tolist(), (s["other"][macro_same] // B).tolist()))
    assert pairs == [(0, 1), (0, 2), (1, 2)]


def test_label_boundary_is_positive_with_zero_weight():
    # label_scale = 1, y = [0, 0.4]: E = float32(0.4) ≤ float32(0.4) → positive, W⁺ = 1.5·|tanh(0)| = 0.
    y = torch.tensor([0.0, 0.4])
    s = mgcl_pair_sets(y, label_scale=1.0)[0]
    assert s["positive"].all()
    cross = s["other"] % 2 == 1
    assert (s["E"][cross] == torch.tensor(0.4, dtype=torch.float32)).all()
    macro, micro = make(2)
    # no negatives anywhere → exactly 0
    assert mgcl_contrastive_loss_reference(macro, micro, y, label_scale=1.0).item() == 0


# ---------------------------------------------------------------------------------------------
# Exact values


def test_exact_value_orthogonal_features_zero_weight_pairs_still_count():
    # 18 orthonormal features: every sim = 0, so every logit is 0 whatever its weight, and
    # ℓ_i = log(|P_i| + |N_i|) − log|P_i|. Labels (scale 1) [0, 0.4, 2]: the pair (0, 1) sits exactly at
    # E = δ (W⁺ = 0) and still adds exp(0) = 1 to both sums: |P_0| = 9·1 + 6 = 15, |N_0| = 12;
    # sample 2: |P| = 6, |N| = 24.
    eye = torch.eye(18)
    feats = [eye[3 * v: 3 * v + 3] for v in range(6)]
    y = torch.tensor([0.0, 0.4, 2.0])
    expected = (2 * math.log(27 / 15) + math.log(30 / 6)) / 3
    out = mgcl_contrastive_loss_reference(tuple(feats[:3]), tuple(feats[3:]), y, label_scale=1.0)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor(expected))
    out = mgcl_contrastive_loss_reference(tuple(feats[:3]), tuple(feats[3:]), y, label_scale=1.0,
                                          same_sample_c2="ordered6", reduction="none")
    torch.testing.assert_close(out, torch.tensor([math.log(30 / 18), math.log(30 / 18), math.log(33 / 9)]))


@pytest.mark.parametrize("pos_weight, neg_weight", [("mgcl", "mgcl"), ("clgsi", "clgsi"), ("none", "none"),
                                                    ("mgcl", "none")])
def test_exact_value_identical_features(pos_weight, neg_weight):
    # Every sim = 1. B = 2 with E = 2/3 > δ: P = the 6 same-sample pairs at W⁺(0), N = 12 pairs at W⁻(E).
    # ℓ = log(6e^a + 12e^b) − log(6e^a) = log(1 + 2e^{b−a}), a = W⁺(0)/τ, b = W⁻(E)/τ.
    x = torch.ones(2, 4)
    feats = tuple(x * (v + 1) for v in range(3))
    y = torch.tensor([0.0, 2.0])
    tau, gain, delta, E = 0.03, 1.5, 0.4, 2.0 / 3.0
    w_pos = {"mgcl": gain * abs(math.tanh(0 - delta)), "clgsi": gain * math.tanh(2 * delta), "none": 1.0}[pos_weight]
    w_neg = {"mgcl": gain * math.tanh(E), "clgsi": 0.8 * gain * math.tanh(E), "none": 1.0}[neg_weight]
    expected = math.log1p(2 * math.exp((w_neg - w_pos) / tau))
    out = mgcl_contrastive_loss_reference(feats, feats, y, pos_weight=pos_weight, neg_weight=neg_weight,
                                          reduction="none")
    torch.testing.assert_close(out, torch.tensor([expected, expected]))


def test_same_sample_weights():
    # W⁺(0): 0.5699 ('mgcl', δ = 0.4), 0.9961 ('clgsi'), 1 ('none') — §5 "Weights".
    from msa_fast.ops.mgcl import pair_weights

    E = torch.zeros(1)
    pos = torch.ones(1, dtype=torch.bool)
    for kind, value in (("mgcl", 0.5699), ("clgsi", 0.9961), ("none", 1.0)):
        torch.testing.assert_close(pair_weights(E, pos, 0.4, 1.5, kind, "mgcl"), torch.tensor([value]), atol=1e-4,
                                   rtol=0)
    # W⁻ rises from 0.570 just past δ to 1.446 at E = 2
    neg = torch.zeros(2, dtype=torch.bool)
    torch.testing.assert_close(pair_weights(torch.tensor([0.4, 2.0]), neg, 0.4, 1.5, "mgcl", "mgcl"),
                               torch.tensor([0.570, 1.446]), atol=1e-3, rtol=0)


# ---------------------------------------------------------------------------------------------
# Against the dense engine-layout implementation


@pytest.mark.parametrize("B", [2, 3, 8, 63, 64, 65])
def test_matches_dense_layout(B):
    macro, micro = make(B)
    y = torch.empty(B).uniform_(-3, 3)
    for mode in ("literal3", "ordered6"):
        got = mgcl_contrastive_loss_reference(macro, micro, y, same_sample_c2=mode, reduction="none")
        torch.testing.assert_close(got, dense_engine_layout(macro, micro, y, same_sample_c2=mode, reduction="none"),
                                   rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("pos_weight", WEIGHTS)
@pytest.mark.parametrize("neg_weight", WEIGHTS)
def test_weight_variants_match_dense_layout(pos_weight, neg_weight):
    macro, micro = make(9)
    y = torch.tensor([-3.0, -2.0, -1.2, -0.4, 0.0, 0.4, 1.2, 2.0, 3.0])  # distances at δ up to fp32 rounding
    for reduction in ("mean", "sum", "none"):
        kw = dict(pos_weight=pos_weight, neg_weight=neg_weight, reduction=reduction)
        torch.testing.assert_close(mgcl_contrastive_loss_reference(macro, micro, y, **kw),
                                   dense_engine_layout(macro, micro, y, **kw), rtol=1e-10, atol=1e-10)


def test_zero_weight_pairs_match_dense_layout():
    # label_scale 1 and labels 0.4 apart: many pairs at E = δ exactly, W⁺ = 0, each adding exp(0) = 1
    macro, micro = make(6)
    y = torch.tensor([0.0, 0.4, 0.8, 1.2, 0.0, 0.4])
    got = mgcl_contrastive_loss_reference(macro, micro, y, tau=1.0, label_scale=1.0, reduction="none")
    torch.testing.assert_close(got, dense_engine_layout(macro, micro, y, tau=1.0, label_scale=1.0, reduction="none"))
    # by hand from the literal pair lists: with every pair the reference's value; dropping the W = 0 pairs
    # (treating a zero weight as a mask) gives a different value
    from msa_fast.ops.mgcl import pair_weights

    F_all = F.normalize(torch.cat(macro + micro), dim=1)
    n_zero = 0
    for i, sets in enumerate(mgcl_pair_sets(y, label_scale=1.0)):
        w = pair_weights(sets["E"], sets["positive"], 0.4, 1.5, "mgcl", "mgcl").double()
        logits = w * (F_all[sets["anchor"]] * F_all[sets["other"]]).sum(1) / 1.0
        pos = sets["positive"]
        ell = torch.logsumexp(logits, 0) - torch.logsumexp(logits[pos], 0)
        torch.testing.assert_close(got[i], ell)
        kept = w != 0
        n_zero += int((~kept).sum())
        masked = torch.logsumexp(logits[kept], 0) - torch.logsumexp(logits[pos & kept], 0)
        if (~kept).any():
            assert not torch.allclose(masked, ell)
    assert n_zero > 0


@pytest.mark.parametrize("d", [1, 384, 768])
def test_dims(d):
    macro, micro = make(5, d, dtype=torch.float32)
    y = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.5])
    torch.testing.assert_close(mgcl_contrastive_loss_reference(macro, micro, y).double(),
                               dense_engine_layout(macro, micro, y), rtol=1e-5, atol=1e-4)


def test_normalize_false_and_options():
    macro, micro = make(7, 3)
    macro = tuple(t * 0.2 for t in macro)
    micro = tuple(t * 0.2 for t in micro)
    y = torch.randn(7)
    kw = dict(normalize=False, tau=0.5, delta=0.2, gain=2.0, label_scale=1.0)
    torch.testing.assert_close(mgcl_contrastive_loss_reference(macro, micro, y, **kw),
                               dense_engine_layout(macro, micro, y, **kw), rtol=1e-10, atol=1e-10)


def test_label_scale_equivalence():
    macro, micro = make(8)
    y = torch.tensor([-0.9, -0.5, -0.1, 0.05, 0.3, 0.55, 0.8, 1.0])  # pairwise distances away from 0.4
    torch.testing.assert_close(mgcl_contrastive_loss_reference(macro, micro, y, label_scale=1.0),
                               mgcl_contrastive_loss_reference(macro, micro, 3 * y, label_scale=3.0),
                               rtol=1e-5, atol=1e-5)


def test_large_logits_are_finite():
    # τ = 0.03 and gain 1.5: logits up to ±50
    macro, micro = make(16, 8, dtype=torch.float32, requires_grad=True)
    micro = tuple(m.detach().clone().requires_grad_(True) for m in macro)   # macro = micro: sims of 1
    y = torch.linspace(-3, 3, 16)
    out = mgcl_contrastive_loss_reference(macro, micro, y)
    grads = torch.autograd.grad(out, macro + micro)
    assert torch.isfinite(out) and all(torch.isfinite(g).all() for g in grads)


# ---------------------------------------------------------------------------------------------
# Zeros, dtypes, NaN, gradcheck, errors


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", ["B=1", "all equal"])
def test_no_negatives_is_zero_with_zero_gradient(reduction, case):
    B = 1 if case == "B=1" else 5
    macro, micro = make(B, dtype=torch.float32, requires_grad=True)
    y = torch.full((B,), 1.3)
    out = mgcl_contrastive_loss_reference(macro, micro, y, reduction=reduction)
    assert out.dtype == torch.float32 and out.shape == ((B,) if reduction == "none" else ())
    assert torch.equal(out, torch.zeros_like(out))
    grads = torch.autograd.grad(out.sum(), macro + micro)
    assert all(g is not None and torch.equal(g, torch.zeros_like(g)) for g in grads)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_give_fp32(dtype):
    macro, micro = make(17, 16, dtype=torch.float32)
    feats = [t.to(dtype).requires_grad_(True) for t in macro + micro]
    y = torch.empty(17).uniform_(-3, 3)
    out = mgcl_contrastive_loss_reference(tuple(feats[:3]), tuple(feats[3:]), y, tau=0.1)
    assert out.dtype == torch.float32
    feats32 = [t.detach().float().requires_grad_(True) for t in feats]
    expected = mgcl_contrastive_loss_reference(tuple(feats32[:3]), tuple(feats32[3:]), y, tau=0.1)
    torch.testing.assert_close(out, expected, rtol=5e-2, atol=1e-2)
    for g, g32 in zip(torch.autograd.grad(out, feats), torch.autograd.grad(expected, feats32)):
        assert g.dtype == dtype
        torch.testing.assert_close(g.float(), g32, rtol=5e-2, atol=1e-2)


def test_nan_propagation_and_check_finite(monkeypatch):
    macro, micro = make(4, dtype=torch.float32)
    y = torch.tensor([-2.0, -1.5, 1.0, 2.0])
    bad = micro[1].clone()
    bad[2, 0] = float("nan")
    assert torch.isnan(mgcl_contrastive_loss_reference(macro, (micro[0], bad, micro[2]), y))
    with pytest.raises(ValueError, match=r"msa_fast.ops.mgcl_contrastive_loss: micro\[1\] has 1 non-finite"):
        mgcl_contrastive_loss_reference(macro, (micro[0], bad, micro[2]), y, check_finite=True)
    # a NaN label: E is NaN, the pair counts as negative with a NaN weight → NaN
    y_nan = y.clone()
    y_nan[1] = float("nan")
    sets = mgcl_pair_sets(y_nan)
    assert int((~sets[1]["positive"]).sum()) == 12 * 3
    assert torch.isnan(mgcl_contrastive_loss_reference(macro, micro, y_nan))
    assert torch.isnan(mgcl_contrastive_loss_reference(tuple(t[:1] for t in macro), tuple(t[:1] for t in micro),
                                                       y_nan[1:2]))
    with pytest.raises(ValueError, match=r"y has 1 non-finite"):
        mgcl_contrastive_loss_reference(macro, micro, y_nan, check_finite=True)
    monkeypatch.setenv("MSA_FAST_CHECK_FINITE", "1")
    with pytest.raises(ValueError, match=r"y has 1 non-finite"):
        mgcl_contrastive_loss_reference(macro, micro, y_nan)


@pytest.mark.parametrize("options", [{}, {"same_sample_c2": "ordered6", "reduction": "sum"},
                                     {"pos_weight": "clgsi", "neg_weight": "clgsi", "normalize": False},
                                     {"pos_weight": "none", "neg_weight": "none", "reduction": "none"}])
def test_gradcheck_fp64(options):
    macro, micro = make(4, 3, requires_grad=True)
    y = torch.tensor([-2.0, -1.5, 0.3, 2.0])
    fn = lambda *f: mgcl_contrastive_loss_reference(f[:3], f[3:], y, tau=0.5, **options)  # noqa: E731
    assert fn(*macro, *micro).dtype == torch.float64
    assert torch.autograd.gradcheck(fn, macro + micro)


def test_errors():
    macro, micro = make(3, dtype=torch.float32)
    y = torch.randn(3)
    empty = tuple(torch.randn(0, 8) for _ in range(3))
    with pytest.raises(ValueError, match=r"^msa_fast\.ops\.mgcl_contrastive_loss: macro\[0\] is empty \(shape \(0, 8\)\)$"):
        mgcl_contrastive_loss_reference(empty, empty, torch.randn(0))
    with pytest.raises(TypeError, match="3-tuple"):
        mgcl_contrastive_loss_reference(macro[:2], micro, y)
    with pytest.raises(ValueError, match=r"macro\[0\] and micro\[2\] must have the same shape, got \(3, 6\) and \(3, 5\)"):
        mgcl_contrastive_loss_reference(macro, (micro[0], micro[1], torch.randn(3, 5)), y)
    with pytest.raises(TypeError, match="share a dtype"):
        mgcl_contrastive_loss_reference(macro, (micro[0], micro[1], micro[2].double()), y)
    with pytest.raises(ValueError, match=r"y must be \[B\] = \[3\], got shape \(4,\)"):
        mgcl_contrastive_loss_reference(macro, micro, torch.randn(4))
    for bad in ({"pos_weight": "tanh"}, {"neg_weight": "x"}, {"reduction": "pml"}, {"same_sample_c2": "both"},
                {"tau": 0.0}, {"label_scale": 0.0}):
        with pytest.raises(ValueError):
            mgcl_contrastive_loss_reference(macro, micro, y, **bad)


def test_public_reference_name():
    assert reference.mgcl_contrastive_loss is mgcl_contrastive_loss_reference
