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


# ---------------------------------------------------------------------------------------------
# Fused backends (C++ CPU on the engine of ops.md §1; Triton under the interpreter and CUDA on a GPU
# once they exist) against the reference: values, gradients, stats, edge cases, opcheck, torch.compile.

import msa_fast.ops as ops  # noqa: E402
from tests.ops.backends import fast_backends  # noqa: E402

FUSED = fast_backends("hycon_rows", "hycon_rows_triton")
NOT_TRITON = [p for p in FUSED if p.values[0] != "triton"]
FP32_TOL = dict(rtol=1e-5, atol=1e-6)
FP32_GRAD_TOL = dict(rtol=1e-4, atol=1e-5)
LOW_TOL = dict(rtol=5e-2, atol=1e-2)
WEIGHTS = (1.3, -0.7, 2.1)   # upstream weights of (iamcl, iemcl, scl): every term reaches the gradient


def fused_and_reference(xs, y, backend, device="cpu", **kw):
    """Outputs (with stats) and gradients of the fused op and of the reference on the same inputs."""
    a_in = [x.detach().to(device).clone().requires_grad_() for x in xs]
    b_in = [x.detach().to(device).clone().requires_grad_() for x in xs]
    y = y.to(device)
    a = ops.hycon_loss(*a_in, y, backend=backend, return_stats=True, **kw)
    b = hycon_loss_reference(*b_in, y, return_stats=True, **kw)
    ga = torch.autograd.grad(sum(w * t for w, t in zip(WEIGHTS, a[:3])), a_in)
    gb = torch.autograd.grad(sum(w * t for w, t in zip(WEIGHTS, b[:3])), b_in)
    assert {k: int(v) for k, v in a[3].items()} == {k: int(v) for k, v in b[3].items()}
    return a[:3], b[:3], ga, gb


def assert_fused_close(a, b, ga, gb, tol=FP32_TOL, grad_tol=FP32_GRAD_TOL):
    for u, v in zip(a, b):
        assert u.dtype == v.dtype
        torch.testing.assert_close(u, v, **tol)
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u.float(), v.float(), **grad_tol)


def labels_for(K, device="cpu"):
    y = torch.tensor([[-1.5, 0.0, 2.0, 0.5, -0.25][k % 5] for k in range(K)], device=device)
    return y[torch.randperm(K)]


FUSED_OPTIONS = [
    {},
    {"alpha": 1.0},
    {"sim_transform": "cos01"},
    {"sim_transform": "cos01", "use_log": True},
    {"sim_transform": "exp_tau", "tau": 0.1},
    {"sim_transform": "exp_tau", "use_log": True, "tau": 0.5},
    {"reduction": "sum", "sim_transform": "cos01"},
    {"reduction": "sum"},
    {"drop_zero": True},
    {"drop_zero": True, "sim_transform": "exp_tau", "use_log": True, "reduction": "sum"},
    {"den_guard": "clamp", "sim_transform": "cos01"},
    {"den_guard": "none", "sim_transform": "exp_tau", "tau": 0.2},
]


@pytest.mark.parametrize("backend, device", FUSED)
@pytest.mark.parametrize("K", [1, 32, 43, 1000])          # 3K ∈ {3, 96, 129, 3000}
@pytest.mark.parametrize("options", FUSED_OPTIONS)
def test_fused_matches_reference(backend, device, K, options):
    if backend == "triton" and K > 43:
        pytest.skip("interpreter: tiny shapes only")
    d = 16 if K < 1000 else 64
    # 'cos' ratios: positive features keep den = Σ s well away from 0 (in fp32 the raw-cosine ratio is
    # badly conditioned near den ≈ 0, see test_matches_loop), the other transforms take any features.
    positive = options.get("sim_transform", "cos") == "cos"
    xs = [torch.randn(K, d).abs() if positive else torch.randn(K, d) for _ in range(3)]
    assert_fused_close(*fused_and_reference(xs, labels_for(K), backend, device, **options))


@pytest.mark.parametrize("backend, device", FUSED)
def test_fused_integer_and_bool_classes(backend, device):
    K = 37
    xs = [torch.randn(K, 12).abs() for _ in range(3)]
    ids = torch.randint(-3, 4, (K,))                      # −1 is an ordinary class here
    for y in (ids, ids.int(), ids > 0, torch.full((K,), -1), torch.arange(K)):
        for options in ({}, {"sim_transform": "exp_tau", "drop_zero": True}):
            assert_fused_close(*fused_and_reference(xs, y, backend, device, **options))


@pytest.mark.parametrize("backend, device", FUSED)
def test_fused_guards_on_exact_cancellation(backend, device):
    xs, y = cancelling_batch()
    a, b, ga, gb = fused_and_reference(xs, y, backend, device, den_guard="skip")
    assert_fused_close(a, b, ga, gb)
    out = ops.hycon_loss(*[x.to(device) for x in xs], y.to(device), den_guard="skip", return_stats=True,
                         backend=backend)
    assert int(out[3]["n_skipped_iamcl"]) == 1 and int(out[3]["n_skipped_iemcl"]) == 0
    clamp = ops.hycon_loss(*[x.to(device) for x in xs], y.to(device), den_guard="clamp", backend=backend)
    torch.testing.assert_close(clamp[0], hycon_loss_reference(*xs, y, den_guard="clamp")[0].to(device), rtol=1e-5,
                               atol=1)
    assert clamp[0].item() < -0.9e5
    iamcl, iemcl, _ = ops.hycon_loss(*[x.to(device) for x in xs], y.to(device), den_guard="none", backend=backend)
    assert iamcl.item() == float("-inf") and torch.isfinite(iemcl)


@pytest.mark.parametrize("backend, device", FUSED)
@pytest.mark.parametrize("case", ["K=1", "K=2 two classes", "all dropped", "single class"])
def test_fused_edge_cases(backend, device, case):
    K, y = {"K=1": (1, torch.tensor([1.0])), "K=2 two classes": (2, torch.tensor([-1.0, 1.0])),
            "all dropped": (5, torch.zeros(5)), "single class": (6, torch.ones(6))}[case]
    xs = [torch.randn(K, 4).abs() for _ in range(3)]
    kw = {"drop_zero": True} if case == "all dropped" else {}
    a, b, ga, gb = fused_and_reference(xs, y, backend, device, **kw)
    assert_fused_close(a, b, ga, gb)
    if case == "single class":
        assert -1 < a[0].item() < 3       # R = 1: the ratio term is −1, plus the mean Ref ∈ [0, 4]
    else:
        # no positives anywhere: IAMCL = IEMCL = 0 exactly (§0.5), with a zero (not None) gradient
        assert a[0].item() == 0 and a[1].item() == 0
        in_ = [x.to(device).requires_grad_() for x in xs]
        out = ops.hycon_loss(*in_, y.to(device), backend=backend, **kw)
        grads = torch.autograd.grad(out[0] + out[1], in_)
        assert all(g is not None and (g == 0).all() for g in grads)


@pytest.mark.parametrize("backend, device", FUSED)
def test_fused_zero_row_gets_zero_gradient(backend, device):
    xs = [torch.randn(9, 5).abs() for _ in range(3)]
    xs[1][4] = 0
    a, b, ga, gb = fused_and_reference(xs, labels_for(9), backend, device, sim_transform="cos01")
    assert_fused_close(a, b, ga, gb)
    assert (ga[1][4] == 0).all()


@pytest.mark.parametrize("backend, device", FUSED)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_low_precision(backend, device, dtype):
    # The fused op on bf16/fp16 inputs against the fp32 reference on the same rounded inputs (§10).
    K = 40
    xs = [torch.randn(K, 24).abs().to(dtype) for _ in range(3)]
    y = labels_for(K)
    for options in ({}, {"sim_transform": "exp_tau", "use_log": True}):
        a_in = [x.to(device).requires_grad_() for x in xs]
        b_in = [x.float().to(device).requires_grad_() for x in xs]
        a = ops.hycon_loss(*a_in, y.to(device), backend=backend, **options)
        b = hycon_loss_reference(*b_in, y.to(device), **options)
        ga = torch.autograd.grad(sum(w * t for w, t in zip(WEIGHTS, a)), a_in)
        gb = torch.autograd.grad(sum(w * t for w, t in zip(WEIGHTS, b)), b_in)
        for u, v in zip(a, b):
            assert u.dtype == torch.float32
            torch.testing.assert_close(u, v, **LOW_TOL)
        for u, v in zip(ga, gb):
            assert u.dtype == dtype
            torch.testing.assert_close(u.float(), v, **LOW_TOL)


@pytest.mark.parametrize("backend, device", FUSED)
def test_fused_nan_propagation_and_check_finite(backend, device):
    xs = [torch.randn(6, 4, device=device) for _ in range(3)]
    y = torch.tensor([1.0, 2.0, -1.0, -2.0, 0.5, -0.5], device=device)
    xs[1][3, 0] = float("nan")
    for options in ({}, {"sim_transform": "exp_tau"}):
        assert all(torch.isnan(t) for t in ops.hycon_loss(*xs, y, backend=backend, **options))
    with pytest.raises(ValueError, match=r"msa_fast.ops.hycon_loss: x_a has 1 non-finite entries"):
        ops.hycon_loss(*xs, y, check_finite=True, backend=backend)
    # a NaN row of a sample dropped by drop_zero only reaches SCL (it is in no IAMCL/IEMCL pair)
    y[3] = 0.0
    iamcl, iemcl, scl = ops.hycon_loss(*xs, y, drop_zero=True, backend=backend)
    assert torch.isfinite(iamcl) and torch.isfinite(iemcl) and torch.isnan(scl)
    ref = hycon_loss_reference(*xs, y, drop_zero=True)
    torch.testing.assert_close(iamcl, ref[0], **FP32_TOL)


@pytest.mark.parametrize("backend, device", NOT_TRITON)
@pytest.mark.parametrize("options", [
    {},
    {"sim_transform": "cos01", "use_log": True},
    {"sim_transform": "exp_tau", "use_log": True, "tau": 0.5, "reduction": "sum"},
    {"den_guard": "clamp", "alpha": 1.0, "sim_transform": "exp_tau", "tau": 0.7},
    {"drop_zero": True},
])
def test_fused_gradcheck_fp64(backend, device, options):
    xs = [torch.randn(5, 3, dtype=torch.float64, device=device, requires_grad=True) for _ in range(3)]
    y = torch.tensor([1.0, 0.0, -1.0, 2.0, -0.5], dtype=torch.float64, device=device)
    out = ops.hycon_loss(*xs, y, backend=backend, **options)
    assert all(o.dtype == torch.float64 for o in out)
    for o, r in zip(out, hycon_loss_reference(*xs, y, **options)):
        torch.testing.assert_close(o, r, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda *t: ops.hycon_loss(*t, y, backend=backend, **options), xs)


def test_fused_opcheck():
    x = torch.randn(3 * 11, 7, requires_grad=True)
    classes = torch.tensor([0, 1, 1, -1, 0, 2, 1, -1, 0, 0, 2])
    for transform in ("cos", "cos01", "exp_tau"):
        torch.library.opcheck(torch.ops.msa_fast.hycon_rows.default, (x, classes, 0.8, transform, 0.3))
    torch.library.opcheck(torch.ops.msa_fast.hycon_rows.default, (x.double(), classes, 1.0, "cos", 0.1))


def test_fused_torch_compile_fullgraph():
    def f(x_l, x_a, x_v, y):
        a = ops.hycon_loss(x_l, x_a, x_v, y, backend="cpp")
        b = ops.hycon_loss(x_l, x_a, x_v, y, sim_transform="exp_tau", use_log=True, drop_zero=True, backend="cpp")
        return sum(a) + sum(b)

    xs = [torch.randn(21, 8).abs().requires_grad_() for _ in range(3)]
    y = labels_for(21)
    out = torch.compile(f, fullgraph=True)(*xs, y)
    grads = torch.autograd.grad(out, xs)
    xs2 = [x.detach().clone().requires_grad_() for x in xs]
    out2 = f(*xs2, y)
    grads2 = torch.autograd.grad(out2, xs2)
    torch.testing.assert_close(out, out2)
    for g, g2 in zip(grads, grads2):
        torch.testing.assert_close(g, g2)


def test_fused_deterministic():
    xs = [torch.randn(700, 32) for _ in range(3)]
    y = labels_for(700)
    runs = []
    for _ in range(2):
        a_in = [x.clone().requires_grad_() for x in xs]
        out = ops.hycon_loss(*a_in, y, sim_transform="exp_tau", backend="cpp")
        runs.append((out, torch.autograd.grad(sum(out), a_in)))
    (o1, g1), (o2, g2) = runs
    assert all(torch.equal(u, v) for u, v in zip(o1, o2))
    assert all(torch.equal(u, v) for u, v in zip(g1, g2))


def test_fused_auto_and_errors():
    xs = [torch.randn(8, 3).abs() for _ in range(3)]
    y = labels_for(8)
    for u, v in zip(ops.hycon_loss(*xs, y), ops.hycon_loss(*xs, y, backend="cpp")):
        assert torch.equal(u, v)
    xs64 = [x.double() for x in xs]
    for u, v in zip(ops.hycon_loss(*xs64, y), hycon_loss_reference(*xs64, y)):   # fp64 → reference under auto
        assert torch.equal(u, v)
    with pytest.raises(ValueError, match=r"hycon_loss: x_l is empty \(shape \(0, 8\)\)"):
        ops.hycon_loss(torch.randn(0, 8), torch.randn(0, 8), torch.randn(0, 8), torch.randn(0), backend="cpp")
    with pytest.raises(ValueError, match="use_log=True needs sim_transform"):
        ops.hycon_loss(*xs, y, use_log=True, backend="cpp")
    with pytest.raises(RuntimeError, match="cuda.*not available"):
        ops.hycon_loss(*xs, y, backend="cuda")
    with pytest.raises(ValueError, match="unknown backend"):
        ops.hycon_loss(*xs, y, backend="fast")
    # the op's own checks
    x, classes = torch.cat(xs), torch.zeros(8, dtype=torch.long)
    with pytest.raises(ValueError, match=r"x must stack the three modalities, \[3K, d\], got 23 rows"):
        torch.ops.msa_fast.hycon_rows(x[:23], classes, 0.8, "cos", 0.1)
    with pytest.raises(ValueError, match=r"classes must be \[K\] = \[8\]"):
        torch.ops.msa_fast.hycon_rows(x, classes[:5], 0.8, "cos", 0.1)
    with pytest.raises(TypeError, match="classes must be int64"):
        torch.ops.msa_fast.hycon_rows(x, classes.int(), 0.8, "cos", 0.1)
    with pytest.raises(TypeError, match="x must be fp32/fp16/bf16/fp64"):
        torch.ops.msa_fast.hycon_rows(x.long(), classes, 0.8, "cos", 0.1)
    with pytest.raises(ValueError, match="sim_transform must be one of"):
        torch.ops.msa_fast.hycon_rows(x, classes, 0.8, "exp", 0.1)
    with pytest.raises(ValueError, match="tau must be > 0"):
        torch.ops.msa_fast.hycon_rows(x, classes, 0.8, "exp_tau", 0.0)
    with pytest.raises(ValueError, match=r"x is empty"):
        torch.ops.msa_fast.hycon_rows(x[:0], classes[:0], 0.8, "cos", 0.1)
    with pytest.raises(ValueError, match=r"grad_stats must be \[3K, 7\]"):
        torch.ops.msa_fast.hycon_rows_backward(torch.zeros(24, 6), x, classes, 0.8, "cos", 0.1)


def test_public_name():
    from msa_fast.ops.hycon import hycon_loss

    assert "hycon_loss" in ops.__all__ and ops.hycon_loss is hycon_loss
