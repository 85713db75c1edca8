"""hycon_loss reference (ops.md §4): exact values, an independent per-anchor loop, the three denominator
guards on a constructed exact cancellation, drop_zero, class inputs, every §4 / §10 edge case, dtypes,
NaN and errors, fp64 gradcheck."""

import pytest
import torch
import torch.nn.functional as F

from msa_fast.ops import reference
from msa_fast.ops.hycon import hycon_loss_reference

TRANSFORMS = {"cos": lambda s, tau: s, "cos01": lambda s, tau: (1 + s) / 2, "exp_tau": lambda s, tau: torch.exp(s / tau)}


def loop_hycon(xs, y, alpha=0.8, use_log=False, sim_transform="cos", tau=0.1, den_eps=1e-6, den_guard="skip",
               reduction="mean", drop_zero=False):
    """§4 anchor by anchor (k, m) in double precision, with the candidate sets as index lists."""
    Z = [F.normalize(x.detach().double(), dim=1) for x in xs]
    K = Z[0].shape[0]
    cls = (y >= 0).long() if y.is_floating_point() else y.long()
    keep = y != 0 if drop_zero else torch.ones(K, dtype=torch.bool)
    idx = torch.arange(K)
    f = lambda s: TRANSFORMS[sim_transform](s, tau)  # noqa: E731

    def ratio(s_pos, s_neg):
        num = f(s_pos).sum()
        den = num + f(s_neg).sum()
        if den_guard == "skip" and abs(float(den)) < den_eps:
            return None
        if den_guard == "clamp" and abs(float(den)) < den_eps:
            den = torch.tensor(-den_eps if float(den) < 0 else den_eps, dtype=torch.float64)
        R = num / den
        return -torch.log(R) if use_log else -R

    terms = {"iamcl": ([], []), "iemcl": ([], [])}
    n_valid = n_anchors = 0
    for m in range(3):
        for k in range(K):
            if not keep[k]:
                continue
            n_anchors += 1
            pos = idx[(idx != k) & keep & (cls == cls[k])]     # Pos1 as an index list
            neg = idx[keep & (cls != cls[k])]                  # Neg1
            if len(pos) == 0:
                continue
            n_valid += 1
            z = Z[m][k]
            s_pos, s_neg = Z[m][pos] @ z, Z[m][neg] @ z
            t = ratio(s_pos, s_neg)
            if t is not None:
                terms["iamcl"][0].append(t)
            terms["iamcl"][1].append(((s_pos - 1) ** 2).mean())
            others = [mm for mm in range(3) if mm != m]
            s_pos = torch.cat([Z[mm][pos] @ z for mm in others])
            s_neg = torch.cat([Z[mm][neg] @ z for mm in others])
            t = ratio(s_pos, s_neg)
            if t is not None:
                terms["iemcl"][0].append(t)
            terms["iemcl"][1].append(((s_pos - alpha) ** 2).sum() / (2 * len(pos)))
    red = (lambda v: sum(v) if v else 0.0) if reduction == "sum" else (lambda v: sum(v) / len(v) if v else 0.0)
    out = [torch.as_tensor(red(ts) + red(refs), dtype=torch.float64) for ts, refs in terms.values()]
    scl = [0.5 * sum((float(Z[m][k] @ Z[mm][k]) - alpha) ** 2 for mm in range(3) if mm != m)
           for m in range(3) for k in range(K)]
    out.append(torch.tensor(sum(scl) if reduction == "sum" else sum(scl) / len(scl), dtype=torch.float64))
    stats = {"n_anchors": n_anchors, "n_valid_anchors": n_valid,
             "n_skipped_iamcl": n_valid - len(terms["iamcl"][0]), "n_skipped_iemcl": n_valid - len(terms["iemcl"][0])}
    return out, stats


def make(K, d=5, dtype=torch.float64, requires_grad=False):
    return [torch.randn(K, d, dtype=dtype, requires_grad=requires_grad) for _ in range(3)]


def assert_matches_loop(xs, y, rtol=1e-10, atol=1e-10, **kw):
    got = hycon_loss_reference(*xs, y, return_stats=True, **kw)
    expected, stats = loop_hycon(xs, y, **kw)
    for g, e in zip(got[:3], expected):
        torch.testing.assert_close(g.double(), e, rtol=rtol, atol=atol)
    assert {k: int(v) for k, v in got[3].items()} == stats
    return got


# ---------------------------------------------------------------------------------------------
# Exact values


def test_all_one_class_identical_features():
    # s = 1 everywhere: R = 1 (no negatives) so the 'cos' ratio term is −1; IAMCL Ref = 0;
    # IEMCL Ref = SCL = (1 − α)² = 0.04.
    x = torch.randn(1, 4).expand(6, 4).contiguous()
    y = torch.tensor([0.5, 1.0, 2.0, 0.0, 3.0, 1.5])
    iamcl, iemcl, scl = hycon_loss_reference(x, x * 2, x * 3, y)
    assert iamcl.dtype == iemcl.dtype == scl.dtype == torch.float32
    torch.testing.assert_close(iamcl, torch.tensor(-1.0))
    torch.testing.assert_close(iemcl, torch.tensor(-1.0 + 0.04))
    torch.testing.assert_close(scl, torch.tensor(0.04))


def test_all_one_class_ratio_is_one():
    xs = make(7)
    xs = [x.abs() for x in xs]  # positive cosines, so no denominator is near 0
    y = torch.ones(7)
    iamcl, iemcl, scl = hycon_loss_reference(*xs, y)
    expected, _ = loop_hycon(xs, y)
    Z = [F.normalize(x, dim=1) for x in xs]
    # IAMCL = −1 + mean over anchors of the mean (s − 1)² over the other samples of the same modality
    ref = torch.stack([((Z[m] @ Z[m][k])[torch.arange(7) != k] - 1).pow(2).mean() for m in range(3) for k in range(7)])
    torch.testing.assert_close(iamcl, -1 + ref.mean())
    torch.testing.assert_close(iamcl.double(), expected[0])


def test_k1_scl_only():
    x = torch.randn(1, 3, requires_grad=True)
    a = torch.randn(1, 3, requires_grad=True)
    v = torch.randn(1, 3, requires_grad=True)
    iamcl, iemcl, scl, stats = hycon_loss_reference(x, a, v, torch.tensor([1.0]), return_stats=True)
    assert iamcl.item() == 0 and iemcl.item() == 0
    assert int(stats["n_anchors"]) == 3 and int(stats["n_valid_anchors"]) == 0
    s = [float(F.cosine_similarity(p.detach(), q.detach())) for p, q in ((x, a), (x, v), (a, v))]
    expected = sum(2 * 0.5 * (si - 0.8) ** 2 for si in s) / 3  # each pair appears in two anchors' S
    torch.testing.assert_close(scl, torch.tensor(expected))
    grads = torch.autograd.grad(iamcl + iemcl, (x, a, v))
    assert all(g is not None and torch.equal(g, torch.zeros(1, 3)) for g in grads)


def test_k2_different_classes_zero_with_zero_gradient():
    xs = make(2, dtype=torch.float32, requires_grad=True)
    iamcl, iemcl, _ = hycon_loss_reference(*xs, torch.tensor([-1.0, 1.0]))
    assert iamcl.item() == 0 and iemcl.item() == 0 and iamcl.dtype == torch.float32
    grads = torch.autograd.grad(iamcl + iemcl, xs)
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)


def cancelling_batch():
    """Anchor (k=0, l) sees a positive at s = 0.6/‖·‖ and a negative at exactly −s: den = 0 exactly."""
    x_l = torch.tensor([[1.0, 0.0], [0.6, 0.8], [-0.6, 0.8]])
    x_a = torch.tensor([[1.0, 0.2], [0.3, 1.0], [0.9, 0.1]])
    x_v = torch.tensor([[0.2, 1.0], [1.0, 0.4], [0.5, 0.5]])
    return [x_l, x_a, x_v], torch.tensor([1.0, 2.0, -1.0])


def test_guard_skip_clamp_none():
    xs, y = cancelling_batch()
    # skip: anchor (0, l) leaves the IAMCL ratio mean, its Ref still counts
    got = assert_matches_loop([x.double() for x in xs], y, den_guard="skip")
    assert int(got[3]["n_skipped_iamcl"]) == 1 and int(got[3]["n_skipped_iemcl"]) == 0
    assert int(got[3]["n_valid_anchors"]) == 6
    assert_matches_loop(xs, y, rtol=1e-5, atol=1e-5, den_guard="skip")
    # clamp: den ← sign(0)·den_eps = +1e-6, so t = −s/1e-6 dominates the mean
    got = assert_matches_loop([x.double() for x in xs], y, rtol=1e-9, atol=1e-6, den_guard="clamp")
    assert int(got[3]["n_skipped_iamcl"]) == 0
    assert got[0].item() < -0.9e5
    torch.testing.assert_close(hycon_loss_reference(*xs, y, den_guard="clamp")[0].double(), got[0], rtol=1e-5, atol=1)
    # none: raw division by 0 → −inf
    iamcl, iemcl, _ = hycon_loss_reference(*xs, y, den_guard="none")
    assert iamcl.item() == float("-inf") and torch.isfinite(iemcl)
    # the skip path keeps finite gradients
    xs_g = [x.clone().requires_grad_(True) for x in xs]
    grads = torch.autograd.grad(sum(hycon_loss_reference(*xs_g, y)), xs_g)
    assert all(torch.isfinite(g).all() for g in grads)


def test_guard_clamp_negative_denominator_keeps_sign():
    xs, y = cancelling_batch()
    xs[0] = torch.tensor([[1.0, 0.0], [0.6, 0.8], [-0.6 - 1e-7, 0.8]], dtype=torch.float64)
    xs = [x.double() for x in xs]
    got = assert_matches_loop(xs, y, rtol=1e-9, atol=1e-6, den_guard="clamp")
    assert got[0].item() > 0.9e5  # den ← −1e-6: t = +0.6/1e-6 in a mean over 6 anchors


# ---------------------------------------------------------------------------------------------
# Against the loop


@pytest.mark.parametrize("K", [2, 3, 32, 43])
@pytest.mark.parametrize("options", [
    {},
    {"alpha": 1.0},
    {"sim_transform": "cos01"},
    {"sim_transform": "cos01", "use_log": True},
    {"sim_transform": "exp_tau", "use_log": True, "tau": 0.5},
    {"sim_transform": "exp_tau", "tau": 0.1},
    {"reduction": "sum"},
    {"drop_zero": True},
    {"den_guard": "clamp", "sim_transform": "cos01"},
])
def test_matches_loop(K, options):
    xs = make(K)
    y = torch.tensor([[-1.5, 0.0, 2.0, 0.5][k % 4] for k in range(K)], dtype=torch.float64)
    y[1 % K] = 0.0
    assert_matches_loop(xs, y, **options)
    if options.get("sim_transform", "cos") != "cos":
        # fp32 too, where the ratio is well conditioned (the raw-cosine den = Σ s can be near 0, which
        # amplifies fp32 rounding arbitrarily)
        assert_matches_loop([x.float() for x in xs], y.float(), rtol=1e-4, atol=1e-4, **options)


def block_hycon(xs, y, alpha=0.8):
    """A third formulation for large K (default 'skip' guard, cos01 ratio): K × K blocks per modality pair."""
    Z = [F.normalize(x.double(), dim=1) for x in xs]
    K = Z[0].shape[0]
    c = y >= 0
    same = c[:, None] == c[None, :]
    eye = torch.eye(K, dtype=torch.bool)
    pos, neg = same & ~eye, ~same
    n = pos.sum(1).double()
    valid = n > 0
    f = lambda s: (1 + s) / 2  # noqa: E731
    t_intra, ref_intra, t_inter, ref_inter, scl = [], [], [], [], []
    for m in range(3):
        G = Z[m] @ Z[m].T
        num, negs = (f(G) * pos).sum(1), (f(G) * neg).sum(1)
        t_intra.append(-num / (num + negs))
        ref_intra.append(((G - 1) ** 2 * pos).sum(1) / n.clamp_min(1))
        num = negs = ref = sc = 0
        for mm in range(3):
            if mm == m:
                continue
            G = Z[m] @ Z[mm].T
            num, negs = num + (f(G) * pos).sum(1), negs + (f(G) * neg).sum(1)
            ref = ref + ((G - alpha) ** 2 * pos).sum(1)
            sc = sc + 0.5 * (G.diagonal() - alpha) ** 2
        t_inter.append(-num / (num + negs))
        ref_inter.append(ref / (2 * n.clamp_min(1)))
        scl.append(sc)
    v = valid.repeat(3)
    mean_v = lambda parts: torch.cat(parts)[v].mean()  # noqa: E731
    return mean_v(t_intra) + mean_v(ref_intra), mean_v(t_inter) + mean_v(ref_inter), torch.cat(scl).mean()


def test_large_k_matches_block_formulation():
    xs = make(1000, d=8, dtype=torch.float32)
    y = torch.randn(1000)
    got = hycon_loss_reference(*xs, y, sim_transform="cos01")
    for g, e in zip(got, block_hycon(xs, y)):
        torch.testing.assert_close(g.double(), e, rtol=1e-5, atol=1e-5)
    # and the block formulation agrees with the loop on a small batch
    xs, y = make(13), torch.randn(13, dtype=torch.float64)
    for b, e in zip(block_hycon(xs, y), loop_hycon(xs, y, sim_transform="cos01")[0]):
        torch.testing.assert_close(b, e)


def test_zero_labels_are_positive_and_drop_zero():
    xs = make(6)
    y = torch.tensor([0.0, 0.0, 1.0, -1.0, -2.0, 0.0], dtype=torch.float64)
    # y = 0 is class 1 (y ≥ 0): same as labelling them 1.0
    y_pos = torch.where(y == 0, 1.0, y)
    for a, b in zip(hycon_loss_reference(*xs, y), hycon_loss_reference(*xs, y_pos)):
        torch.testing.assert_close(a, b)
    # drop_zero removes samples 0, 1, 5 from IAMCL/IEMCL: equal to the batch without them, SCL unchanged
    keep = y != 0
    dropped = hycon_loss_reference(*xs, y, drop_zero=True, return_stats=True)
    sub = hycon_loss_reference(*[x[keep] for x in xs], y[keep])
    torch.testing.assert_close(dropped[0], sub[0])
    torch.testing.assert_close(dropped[1], sub[1])
    torch.testing.assert_close(dropped[2], hycon_loss_reference(*xs, y)[2])
    assert int(dropped[3]["n_anchors"]) == 9


def test_integer_and_bool_classes():
    xs = make(8)
    y = torch.tensor([0.3, -0.2, 1.0, -3.0, 0.0, 2.0, -0.1, 0.7], dtype=torch.float64)
    expected = hycon_loss_reference(*xs, y)
    for cls in ((y >= 0).long(), (y >= 0).int(), y >= 0, (y >= 0).long() * 5 - 2):
        for a, b in zip(hycon_loss_reference(*xs, cls), expected):
            torch.testing.assert_close(a, b)
    # more than two classes from integer ids
    assert_matches_loop(xs, torch.tensor([0, 1, 2, 0, 1, 2, 2, 0]))


def test_use_log_with_cos_raises():
    xs = make(3)
    with pytest.raises(ValueError, match="use_log=True needs sim_transform"):
        hycon_loss_reference(*xs, torch.ones(3), use_log=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_give_fp32(dtype):
    xs = [x.abs().to(dtype).requires_grad_(True) for x in make(33, 16, dtype=torch.float32)]
    y = torch.randn(33)
    out = hycon_loss_reference(*xs, y, sim_transform="exp_tau", use_log=True)
    xs32 = [x.detach().float().requires_grad_(True) for x in xs]
    expected = hycon_loss_reference(*xs32, y, sim_transform="exp_tau", use_log=True)
    for o, e in zip(out, expected):
        assert o.dtype == torch.float32
        torch.testing.assert_close(o, e, rtol=5e-2, atol=1e-2)
    grads = torch.autograd.grad(sum(out), xs)
    grads32 = torch.autograd.grad(sum(expected), xs32)
    for g, g32 in zip(grads, grads32):
        assert g.dtype == dtype
        torch.testing.assert_close(g.float(), g32, rtol=5e-2, atol=1e-2)


def test_nan_propagation_and_check_finite(monkeypatch):
    xs = [x.float() for x in make(6)]
    y = torch.tensor([1.0, 2.0, -1.0, -2.0, 0.5, -0.5])
    xs[1][3, 0] = float("nan")
    iamcl, iemcl, scl = hycon_loss_reference(*xs, y)
    assert torch.isnan(iamcl) and torch.isnan(iemcl) and torch.isnan(scl)
    with pytest.raises(ValueError, match=r"msa_fast.ops.hycon_loss: x_a has 1 non-finite entries"):
        hycon_loss_reference(*xs, y, check_finite=True)
    xs[1][3, 0] = 0.5
    y_nan = y.clone()
    y_nan[0] = float("nan")
    with pytest.raises(ValueError, match=r"y has 1 non-finite"):
        hycon_loss_reference(*xs, y_nan, check_finite=True)
    monkeypatch.setenv("MSA_FAST_CHECK_FINITE", "1")
    with pytest.raises(ValueError, match=r"y has 1 non-finite"):
        hycon_loss_reference(*xs, y_nan)


@pytest.mark.parametrize("options", [
    {},
    {"sim_transform": "cos01", "use_log": True},
    {"sim_transform": "exp_tau", "use_log": True, "tau": 0.5, "reduction": "sum"},
    {"den_guard": "clamp", "alpha": 1.0},
    {"drop_zero": True},
])
def test_gradcheck_fp64(options):
    xs = make(5, 3, requires_grad=True)
    y = torch.tensor([1.0, 0.0, -1.0, 2.0, -0.5], dtype=torch.float64)
    out = hycon_loss_reference(*xs, y, **options)
    assert all(o.dtype == torch.float64 for o in out)
    assert torch.autograd.gradcheck(lambda *t: hycon_loss_reference(*t, y, **options), xs)


def test_errors():
    with pytest.raises(ValueError, match=r"^msa_fast\.ops\.hycon_loss: x_l is empty \(shape \(0, 8\)\)$"):
        hycon_loss_reference(torch.randn(0, 8), torch.randn(0, 8), torch.randn(0, 8), torch.randn(0))
    with pytest.raises(ValueError, match=r"x_l and x_v must have the same shape, got \(4, 3\) and \(4, 5\)"):
        hycon_loss_reference(torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 5), torch.randn(4))
    with pytest.raises(TypeError, match="share a dtype"):
        hycon_loss_reference(torch.randn(4, 3), torch.randn(4, 3).double(), torch.randn(4, 3), torch.randn(4))
    with pytest.raises(ValueError, match=r"y must be \[K\] = \[4\], got shape \(3,\)"):
        hycon_loss_reference(torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3), torch.randn(3))
    xs = make(3)
    for bad in ({"den_guard": "eps"}, {"sim_transform": "exp"}, {"reduction": "none"}, {"tau": 0.0}):
        with pytest.raises(ValueError):
            hycon_loss_reference(*xs, torch.ones(3), **bad)


def test_public_reference_name():
    assert reference.hycon_loss is hycon_loss_reference
