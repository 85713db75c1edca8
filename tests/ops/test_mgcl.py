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


# ---------------------------------------------------------------------------------------------
# Fused backends (C++ CPU on the engine of ops.md §1; Triton under the interpreter and CUDA when
# present) against the reference: values, gradients, every §5 edge case, opcheck, torch.compile.
#
# Tolerances: ops.md §10 fp32 (values rtol 1e-5 / atol 1e-6, gradients rtol 1e-4 / atol 1e-5) at
# moderate logits (τ = 0.5). At τ = 0.03 with gain 1.5 the logits reach ±50, and any fp32
# implementation (the fp32 reference included) carries ~ulp(50) ≈ 4e-6 of absolute rounding in each
# LSE: those cases are checked against the fp64 reference with the §10 atol scaled by gain/τ.

import msa_fast.ops as ops  # noqa: E402
from msa_fast.ops.mgcl import mgcl_contrastive_loss  # noqa: E402
from tests.ops.backends import fast_backends  # noqa: E402

FUSED = fast_backends("mgcl_rows", "mgcl_rows_triton")
NON_TRITON = [p for p in FUSED if p.values[0] != "triton"]
FP32_TOL = dict(rtol=1e-5, atol=1e-6)
FP32_GRAD_TOL = dict(rtol=1e-4, atol=1e-5)
LOW_TOL = dict(rtol=5e-2, atol=1e-2)
SAME_SAMPLE_MODES = ("literal3", "ordered6")


def feats(B, d, device="cpu", dtype=torch.float32, scale=1.0):
    return [(torch.randn(B, d, device=device) * scale).to(dtype) for _ in range(6)]


def fused_and_reference(f, y, backend, ref_dtype=None, **kw):
    """Values and gradients (under a random upstream weight) of the fused op and the reference."""
    a_in = [t.detach().clone().requires_grad_() for t in f]
    b_in = [t.detach().clone().to(ref_dtype or t.dtype).requires_grad_() for t in f]
    a = mgcl_contrastive_loss(tuple(a_in[:3]), tuple(a_in[3:]), y, backend=backend, **kw)
    b = mgcl_contrastive_loss_reference(tuple(b_in[:3]), tuple(b_in[3:]), y, **kw)
    w = torch.randn(a.shape, dtype=torch.float64).to(a.device) if a.dim() else torch.tensor(1.7, device=a.device)
    ga = torch.autograd.grad((a * w.to(a.dtype)).sum(), a_in)
    gb = torch.autograd.grad((b * w.to(b.dtype)).sum(), b_in)
    return a, b, torch.cat(ga), torch.cat(gb)


def check(a, b, ga, gb, tol=FP32_TOL, grad_tol=FP32_GRAD_TOL):
    torch.testing.assert_close(a.double(), b.double(), **tol)
    torch.testing.assert_close(ga.double(), gb.double(), **grad_tol)


@pytest.mark.parametrize("backend, device", FUSED)
@pytest.mark.parametrize("B", [1, 2, 3, 8, 33, 63, 64, 65])
@pytest.mark.parametrize("mode", ["literal3", "ordered6"])
def test_fused_matches_reference(backend, device, B, mode):
    if backend == "triton" and device == "cpu" and B > 33:
        pytest.skip("interpreter: tiny shapes only (B = 33 spans two 32-row tiles with a ragged edge)")
    f = feats(B, 16, device)
    y = torch.empty(B).uniform_(-3, 3).to(device)
    for reduction in ("mean", "sum", "none"):
        a, b, ga, gb = fused_and_reference(f, y, backend, tau=0.5, same_sample_c2=mode, reduction=reduction)
        assert a.dtype == torch.float32 and a.shape == b.shape
        check(a, b, ga, gb)


@pytest.mark.parametrize("backend, device", FUSED)
@pytest.mark.parametrize("pos_weight", WEIGHTS)
@pytest.mark.parametrize("neg_weight", WEIGHTS)
def test_fused_weight_variants(backend, device, pos_weight, neg_weight):
    f = feats(9, 12, device)
    y = torch.tensor([-3.0, -2.0, -1.2, -0.4, 0.0, 0.4, 1.2, 2.0, 3.0], device=device)  # distances near δ
    for mode in SAME_SAMPLE_MODES:
        a, b, ga, gb = fused_and_reference(f, y, backend, tau=0.5, pos_weight=pos_weight, neg_weight=neg_weight,
                                           same_sample_c2=mode, reduction="none")
        check(a, b, ga, gb)


@pytest.mark.parametrize("backend, device", FUSED)
@pytest.mark.parametrize("d", [1, 384, 768])
def test_fused_dims(backend, device, d):
    B = 65 if backend != "triton" or device != "cpu" else (33 if d == 1 else 5)  # interpreter: tiny shapes
    f = feats(B, d, device)
    y = torch.empty(B).uniform_(-3, 3).to(device)
    a, b, ga, gb = fused_and_reference(f, y, backend, tau=0.5, reduction="none")
    # d = 1: n(x) = ±1, so the true gradient is exactly 0 and both sides are rounding noise around it.
    check(a, b, ga, gb, grad_tol=FP32_GRAD_TOL if d > 1 else dict(rtol=0, atol=1e-5))


@pytest.mark.parametrize("backend, device", FUSED)
def test_fused_options_and_raw_dots(backend, device):
    f = feats(21, 5, device, scale=0.3)
    y = torch.randn(21).to(device)
    for kw in (dict(normalize=False, tau=0.7, delta=0.2, gain=2.0, label_scale=1.0),
               dict(normalize=False, same_sample_c2="ordered6", pos_weight="clgsi", neg_weight="none", tau=1.0),
               dict(delta=-0.1, tau=0.4, label_scale=1.0),       # δ < 0: every other sample negative
               dict(delta=10.0, tau=0.4)):                       # δ large: no negatives → 0
        a, b, ga, gb = fused_and_reference(f, y, backend, reduction="none", **kw)
        check(a, b, ga, gb)


@pytest.mark.parametrize("backend, device", NON_TRITON)
def test_fused_many_blocks_threads_and_determinism(backend, device):
    # B = 1100: several sample blocks of the CPU slab (and ragged last block), split over threads
    B = 1100
    f = feats(B, 8, device)
    y = torch.empty(B).uniform_(-3, 3).to(device)
    a, b, ga, gb = fused_and_reference(f, y, backend, tau=0.5)
    check(a, b, ga, gb)
    a2, _, ga2, _ = fused_and_reference(f, y, backend, tau=0.5)
    assert torch.equal(a, a2) and torch.equal(ga, ga2)                  # deterministic


@pytest.mark.parametrize("backend, device", FUSED)
def test_fused_zero_weight_pairs_and_exact_value(backend, device):
    # label_scale 1, labels 0.4 apart: many pairs exactly at E = δ with W⁺ = 0, each still adding exp(0) = 1
    f = feats(6, 7, device)
    y = torch.tensor([0.0, 0.4, 0.8, 1.2, 0.0, 0.4], device=device)
    a, b, ga, gb = fused_and_reference(f, y, backend, tau=1.0, label_scale=1.0, reduction="none")
    check(a, b, ga, gb)
    # orthonormal features: every logit is 0 whatever its weight, ℓ_i = log(|P_i| + |N_i|) − log|P_i|
    # (the (0, 1) pair sits at E = δ with W⁺ = 0 and is counted; see the reference test above)
    eye = torch.eye(18, device=device)
    ortho = [eye[3 * v: 3 * v + 3] for v in range(6)]
    y3 = torch.tensor([0.0, 0.4, 2.0], device=device)
    out = mgcl_contrastive_loss(tuple(ortho[:3]), tuple(ortho[3:]), y3, label_scale=1.0, backend=backend)
    torch.testing.assert_close(out.cpu(), torch.tensor((2 * math.log(27 / 15) + math.log(30 / 6)) / 3))
    out = mgcl_contrastive_loss(tuple(ortho[:3]), tuple(ortho[3:]), y3, label_scale=1.0, same_sample_c2="ordered6",
                                reduction="none", backend=backend)
    torch.testing.assert_close(out.cpu(), torch.tensor([math.log(30 / 18), math.log(30 / 18), math.log(33 / 9)]))


@pytest.mark.parametrize("backend, device", FUSED)
def test_fused_label_boundary(backend, device):
    # y = [0, 0.4], label_scale 1: E = float32(0.4) ≤ float32(δ) → positive, so no negatives → exactly 0
    f = [t.requires_grad_() for t in feats(2, 4, device)]
    y = torch.tensor([0.0, 0.4], device=device)
    out = mgcl_contrastive_loss(tuple(f[:3]), tuple(f[3:]), y, label_scale=1.0, backend=backend)
    assert out.item() == 0
    grads = torch.autograd.grad(out, f)
    assert all(g is not None and (g == 0).all() for g in grads)
    # with a far third sample the boundary pair stays positive (W⁺ = 0) next to real negatives
    f3 = feats(3, 4, device)
    y3 = torch.tensor([0.0, 0.4, 2.0], device=device)
    a, b, ga, gb = fused_and_reference(f3, y3, backend, tau=0.5, label_scale=1.0, reduction="none")
    check(a, b, ga, gb)


@pytest.mark.parametrize("backend, device", FUSED)
def test_fused_label_scale_equivalence(backend, device):
    f = feats(8, 6, device)
    y = torch.tensor([-0.9, -0.5, -0.1, 0.05, 0.3, 0.55, 0.8, 1.0], device=device)  # away from the δ boundary
    m, i = tuple(f[:3]), tuple(f[3:])
    torch.testing.assert_close(mgcl_contrastive_loss(m, i, y, label_scale=1.0, backend=backend),
                               mgcl_contrastive_loss(m, i, 3 * y, label_scale=3.0, backend=backend),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend, device", FUSED)
@pytest.mark.parametrize("mode", ["literal3", "ordered6"])
def test_fused_small_tau_large_logits(backend, device, mode):
    # τ = 0.03 and gain 1.5: logits up to ±50 in fp32; against the fp64 reference, §10 atol scaled by gain/τ
    B = 40
    f = feats(B, 16, device)
    y = torch.empty(B).uniform_(-3, 3).to(device)
    scale = 1.5 / 0.03
    a, b, ga, gb = fused_and_reference(f, y, backend, ref_dtype=torch.float64, same_sample_c2=mode, reduction="none")
    check(a, b, ga, gb, tol=dict(rtol=1e-5, atol=1e-6 * scale), grad_tol=dict(rtol=1e-4, atol=1e-5 * scale))
    # identical macro and micro features: every sim = 1, so the logits sit at the ±50 extremes
    same = feats(B, 8, device)[:3]
    f2 = [t.clone().requires_grad_() for t in same + same]
    out = mgcl_contrastive_loss(tuple(f2[:3]), tuple(f2[3:]), y, same_sample_c2=mode, backend=backend)
    grads = torch.autograd.grad(out, f2)
    assert torch.isfinite(out) and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("backend, device", FUSED)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", ["B=1", "all equal", "clusters"])
def test_fused_no_negatives(backend, device, reduction, case):
    B = {"B=1": 1, "all equal": 5, "clusters": 6}[case]
    f = [t.requires_grad_() for t in feats(B, 4, device)]
    y = {"B=1": torch.tensor([0.3]), "all equal": torch.full((5,), 1.3),
         "clusters": torch.tensor([-2.0, -2.1, -1.9, 2.0, 2.2, 2.1])}[case].to(device)
    out = mgcl_contrastive_loss(tuple(f[:3]), tuple(f[3:]), y, reduction=reduction, backend=backend)
    assert out.dtype == torch.float32 and out.shape == ((B,) if reduction == "none" else ())
    grads = torch.autograd.grad(out.sum(), f)
    assert all(g is not None for g in grads)
    if case != "clusters":                   # no sample has a negative: the §0.5 zero
        assert (out == 0).all() and all((g == 0).all() for g in grads)
    else:                                    # every sample has negatives: compare with the reference
        a, b, ga, gb = fused_and_reference([t.detach() for t in f], y, backend, tau=0.5, reduction=reduction)
        check(a, b, ga, gb)


@pytest.mark.parametrize("backend, device", FUSED)
def test_fused_some_samples_without_negatives(backend, device):
    # δ = 1 (scale 1): sample 2 (y = 0) is within δ of everyone → ℓ_2 = 0 exactly; the others are not
    f = feats(5, 6, device)
    y = torch.tensor([-0.9, -0.8, 0.0, 0.8, 0.9], device=device)
    a, b, ga, gb = fused_and_reference(f, y, backend, tau=0.5, delta=1.0, label_scale=1.0, reduction="none")
    check(a, b, ga, gb)
    assert a[2].item() == 0 and (a[[0, 1, 3, 4]] > 0).all()


@pytest.mark.parametrize("backend, device", FUSED)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_low_precision(backend, device, dtype):
    # reference evaluated in fp32 on the same rounded inputs (§10)
    B = 33
    f = feats(B, 24, device, dtype=dtype)
    y = torch.empty(B).uniform_(-3, 3).to(device)
    a, b, ga, gb = fused_and_reference(f, y, backend, ref_dtype=torch.float32, tau=0.1)
    assert a.dtype == torch.float32
    check(a, b, ga, gb, tol=LOW_TOL, grad_tol=LOW_TOL)
    g = torch.autograd.grad(mgcl_contrastive_loss(tuple(t.requires_grad_() for t in f[:3]), tuple(f[3:]), y,
                                                  backend=backend), f[0])[0]
    assert g.dtype == dtype


@pytest.mark.parametrize("backend, device", FUSED)
def test_fused_nan(backend, device):
    f = feats(6, 5, device)
    y = torch.tensor([-2.0, -1.5, 1.0, 2.0, 0.1, 0.2], device=device)
    # NaN in a feature: the samples whose pairs use it become NaN, exactly as in the reference
    for g, row in ((0, 2), (4, 1), (5, 3)):
        bad = [t.clone() for t in f]
        bad[g][row, 0] = float("nan")
        out = mgcl_contrastive_loss(tuple(bad[:3]), tuple(bad[3:]), y, reduction="none", backend=backend)
        ref = mgcl_contrastive_loss_reference(tuple(bad[:3]), tuple(bad[3:]), y, reduction="none")
        assert torch.equal(out.isnan().cpu(), ref.isnan().cpu()) and out.isnan().any()
        assert mgcl_contrastive_loss(tuple(bad[:3]), tuple(bad[3:]), y, backend=backend).isnan()
        with pytest.raises(ValueError, match="non-finite"):
            mgcl_contrastive_loss(tuple(bad[:3]), tuple(bad[3:]), y, check_finite=True, backend=backend)
    # a NaN label: E is NaN, the pair counts as negative with a NaN weight → NaN (also for B = 1)
    y_nan = y.clone()
    y_nan[1] = float("nan")
    assert mgcl_contrastive_loss(tuple(f[:3]), tuple(f[3:]), y_nan, backend=backend).isnan()
    assert mgcl_contrastive_loss(tuple(t[:1] for t in f[:3]), tuple(t[:1] for t in f[3:]), y_nan[1:2],
                                 backend=backend).isnan()
    with pytest.raises(ValueError, match=r"y has 1 non-finite"):
        mgcl_contrastive_loss(tuple(f[:3]), tuple(f[3:]), y_nan, check_finite=True, backend=backend)


@pytest.mark.parametrize("backend, device", NON_TRITON)
@pytest.mark.parametrize("options", [{}, {"same_sample_c2": "ordered6", "reduction": "sum"},
                                     {"pos_weight": "clgsi", "neg_weight": "clgsi", "normalize": False},
                                     {"pos_weight": "none", "neg_weight": "mgcl", "reduction": "none"}])
def test_fused_gradcheck_fp64(backend, device, options):
    # a forced backend accepts fp64 (auto would route it to the reference)
    macro, micro = make(5, 3, requires_grad=True)
    macro = tuple(t.to(device).detach().requires_grad_() for t in macro)
    micro = tuple(t.to(device).detach().requires_grad_() for t in micro)
    y = torch.tensor([-2.0, -1.5, 0.3, 2.0, 0.35], device=device)
    fn = lambda *f: mgcl_contrastive_loss(f[:3], f[3:], y, tau=0.5, backend=backend, **options)  # noqa: E731
    assert fn(*macro, *micro).dtype == torch.float64
    assert torch.autograd.gradcheck(fn, macro + micro)


def test_fused_opcheck():
    B, d = 7, 5
    macro = torch.randn(3 * B, d, requires_grad=True)
    micro = torch.randn(3 * B, d, requires_grad=True)
    y = torch.empty(B).uniform_(-3, 3)
    for args in ((0.4, 0.5, 3.0, "mgcl", "mgcl", 1.5, False, True),
                 (0.4, 0.5, 3.0, "clgsi", "none", 1.5, True, True),
                 (0.2, 1.0, 1.0, "none", "clgsi", 2.0, False, False)):
        torch.library.opcheck(torch.ops.msa_fast.mgcl_rows.default, (macro, micro, y, *args))


def test_fused_torch_compile_fullgraph():
    def f(m0, m1, m2, i0, i1, i2, y):
        return (ops.mgcl_contrastive_loss((m0, m1, m2), (i0, i1, i2), y, tau=0.5, backend="cpp")
                + ops.mgcl_contrastive_loss((m0, m1, m2), (i0, i1, i2), y, tau=0.5, same_sample_c2="ordered6",
                                            reduction="sum", backend="cpp"))

    x = [t.requires_grad_() for t in feats(11, 6)]
    y = torch.empty(11).uniform_(-3, 3)
    out = torch.compile(f, fullgraph=True)(*x, y)
    grads = torch.autograd.grad(out, x)
    x2 = [t.detach().clone().requires_grad_() for t in x]
    out2 = f(*x2, y)
    grads2 = torch.autograd.grad(out2, x2)
    torch.testing.assert_close(out, out2)
    for g, g2 in zip(grads, grads2):
        torch.testing.assert_close(g, g2)


def test_fused_auto_and_errors():
    f = feats(4, 3)
    m, i = tuple(f[:3]), tuple(f[3:])
    y = torch.tensor([-2.0, -1.0, 1.0, 2.0])
    torch.testing.assert_close(ops.mgcl_contrastive_loss(m, i, y), mgcl_contrastive_loss(m, i, y, backend="cpp"))
    # fp64 under auto runs the reference
    m64, i64 = tuple(t.double() for t in m), tuple(t.double() for t in i)
    assert torch.equal(ops.mgcl_contrastive_loss(m64, i64, y), mgcl_contrastive_loss_reference(m64, i64, y))
    assert torch.equal(mgcl_contrastive_loss(m, i, y, backend="reference"), mgcl_contrastive_loss_reference(m, i, y))
    empty = tuple(torch.randn(0, 8) for _ in range(3))
    with pytest.raises(ValueError, match=r"mgcl_contrastive_loss: macro\[0\] is empty \(shape \(0, 8\)\)"):
        mgcl_contrastive_loss(empty, empty, torch.randn(0), backend="cpp")
    with pytest.raises(ValueError, match=r"y must be \[B\] = \[4\], got shape \(3,\)"):
        mgcl_contrastive_loss(m, i, y[:3], backend="cpp")
    with pytest.raises(ValueError, match="must have the same shape"):
        mgcl_contrastive_loss(m, (i[0], i[1], torch.randn(4, 2)), y, backend="cpp")
    with pytest.raises(ValueError, match="pos_weight"):
        mgcl_contrastive_loss(m, i, y, pos_weight="tanh", backend="cpp")
    with pytest.raises(RuntimeError, match="cuda.*not available"):
        mgcl_contrastive_loss(m, i, y, backend="cuda")
    # the raw op checks its own inputs
    op = torch.ops.msa_fast.mgcl_rows
    args = (0.4, 0.5, 3.0, "mgcl", "mgcl", 1.5, False, True)
    with pytest.raises(ValueError, match=r"macro must stack three views"):
        op(torch.randn(4, 3), torch.randn(4, 3), y[:1], *args)
    with pytest.raises(ValueError, match=r"macro and micro must have the same shape"):
        op(torch.randn(6, 3), torch.randn(6, 4), y[:2], *args)
    with pytest.raises(ValueError, match=r"y must be \[B\] = \[2\]"):
        op(torch.randn(6, 3), torch.randn(6, 3), y, *args)
    with pytest.raises(ValueError, match="neg_weight must be one of"):
        op(torch.randn(6, 3), torch.randn(6, 3), y[:2], 0.4, 0.5, 3.0, "mgcl", "tanh", 1.5, False, True)
    with pytest.raises(ValueError, match="tau must be > 0"):
        op(torch.randn(6, 3), torch.randn(6, 3), y[:2], 0.4, 0.0, 3.0, "mgcl", "mgcl", 1.5, False, True)
    with pytest.raises(ValueError, match="is empty"):
        op(torch.randn(0, 3), torch.randn(0, 3), y[:0], *args)
    with pytest.raises(ValueError, match=r"lse_pos must have 3B = 6"):
        torch.ops.msa_fast.mgcl_rows_backward(torch.zeros(6), torch.zeros(6), torch.randn(6, 3), torch.randn(6, 3),
                                              y[:2], torch.zeros(5), torch.zeros(6), *args)
