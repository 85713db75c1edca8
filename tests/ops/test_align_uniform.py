"""align_loss / uniform_loss references (ops.md §6): exact values, direct formulas, subgradient at a
matched pair, κ ∈ {0, 2, 100}, identical rows, n ∈ {1, 2, 65, 1000}, dtypes, NaN and errors, fp64
gradcheck."""

import math

import pytest
import torch

from msa_fast.ops import reference
from msa_fast.ops.align_uniform import align_loss_reference, uniform_loss_reference


def unit(n, d, dtype=torch.float64):
    return torch.nn.functional.normalize(torch.randn(n, d, dtype=dtype), dim=1)


def loop_uniform_cross(p, g, kappa):
    """log((1/(n(n−1))) Σ_{i≠j} exp(−κ‖p_i − g_j‖²)) by a Python loop over pairs, in double."""
    P, G = p.double().tolist(), g.double().tolist()
    n = len(P)
    vals = [-kappa * sum((a - b) ** 2 for a, b in zip(P[i], G[j])) for i in range(n) for j in range(n) if i != j]
    m = max(vals)
    return m + math.log(sum(math.exp(v - m) for v in vals) / (n * (n - 1)))


def loop_unif(x, kappa):
    X = x.double().tolist()
    n = len(X)
    vals = [-kappa * sum((a - b) ** 2 for a, b in zip(X[i], X[j])) for i in range(n) for j in range(i + 1, n)]
    m = max(vals)
    return m + math.log(sum(math.exp(v - m) for v in vals) / (n * (n - 1) / 2))


# ---------------------------------------------------------------------------------------------
# align_loss


def test_align_exact_values():
    p = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    g = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    torch.testing.assert_close(align_loss_reference(p, g, reduction="none"), torch.tensor([25.0, 0.0]))
    torch.testing.assert_close(align_loss_reference(p, g), torch.tensor(12.5))
    torch.testing.assert_close(align_loss_reference(p, g, 1, reduction="sum"), torch.tensor(5.0))
    torch.testing.assert_close(align_loss_reference(p, g, 3), torch.tensor(62.5))
    torch.testing.assert_close(align_loss_reference(p, g, 0.5, reduction="none"), torch.tensor([math.sqrt(5), 0.0]))


@pytest.mark.parametrize("n", [1, 2, 65, 1000])
@pytest.mark.parametrize("power", [1, 2, 1.5, 3.0])
def test_align_matches_direct_formula(n, power):
    p, g = torch.randn(n, 7), torch.randn(n, 7)
    per = torch.linalg.vector_norm(p.double() - g.double(), dim=1) ** power
    got = align_loss_reference(p, g, power, reduction="none")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), per, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(align_loss_reference(p, g, power).double(), per.mean(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(align_loss_reference(p, g, power, reduction="sum").double(), per.sum(), rtol=1e-5,
                               atol=1e-4)
    pn, gn = (torch.nn.functional.normalize(t.double(), dim=1) for t in (p, g))
    torch.testing.assert_close(align_loss_reference(p, g, power, normalize=True).double(),
                               (torch.linalg.vector_norm(pn - gn, dim=1) ** power).mean(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("power", [0.5, 1, 1.5, 2, 3])
def test_align_matched_pair_has_zero_gradient(power):
    p = torch.tensor([[1.0, 2.0], [0.5, -1.0]], requires_grad=True)
    g = torch.tensor([[1.0, 2.0], [0.0, 0.0]], requires_grad=True)
    out = align_loss_reference(p, g, power)
    gp, gg = torch.autograd.grad(out, (p, g))
    assert torch.isfinite(gp).all() and torch.isfinite(gg).all()
    assert torch.equal(gp[0], torch.zeros(2)) and torch.equal(gg[0], torch.zeros(2))
    # the other row has the analytic gradient power·‖d‖^(power−2)·d / n
    d = torch.tensor([0.5, -1.0])
    torch.testing.assert_close(gp[1], power * d.norm() ** (power - 2) * d / 2)


# ---------------------------------------------------------------------------------------------
# uniform_loss


def test_uniform_exact_values():
    # n = 2, p = g = [e0, e1]: the off-diagonal d² = 2 → cross = −2κ.
    p = torch.eye(2)
    torch.testing.assert_close(uniform_loss_reference(p, p.clone(), 2.0), torch.tensor(-4.0))
    # wang_isola: unif(X) = −κ d²(x0, x1) = −2κ for each set
    torch.testing.assert_close(uniform_loss_reference(p, p.clone(), 2.0, mode="wang_isola"), torch.tensor(-4.0))
    # p = 0 rows, g = e0, e1: d²_ij = 1 → −κ
    torch.testing.assert_close(uniform_loss_reference(torch.zeros(2, 2), p, 3.0), torch.tensor(-3.0))


@pytest.mark.parametrize("mode", ["cross", "wang_isola"])
def test_uniform_kappa_zero_and_identical_rows_are_exactly_zero(mode):
    p, g = torch.randn(9, 4), torch.randn(9, 4)
    assert uniform_loss_reference(p, g, 0.0, mode=mode).item() == 0.0
    same = torch.randn(1, 4).expand(9, 4)
    assert uniform_loss_reference(same, same.clone(), 2.0, mode=mode).item() == 0.0
    assert uniform_loss_reference(same, same.clone(), 100.0, mode=mode).item() == 0.0


@pytest.mark.parametrize("n", [2, 3, 17, 65])
@pytest.mark.parametrize("kappa", [0.0, 2.0, 100.0])
def test_uniform_matches_loop(n, kappa):
    p, g = unit(n, 5), unit(n, 5)
    got = uniform_loss_reference(p, g, kappa)
    torch.testing.assert_close(got, torch.tensor(loop_uniform_cross(p, g, kappa), dtype=torch.float64))
    assert got.item() <= 1e-12
    got = uniform_loss_reference(p, g, kappa, mode="wang_isola")
    torch.testing.assert_close(got, torch.tensor(0.5 * (loop_unif(p, kappa) + loop_unif(g, kappa)), dtype=torch.float64))
    # fp32, and normalize=True on unnormalised input
    torch.testing.assert_close(uniform_loss_reference(p.float() * 3, g.float() * 0.5, kappa, normalize=True).double(),
                               torch.tensor(loop_uniform_cross(p, g, kappa), dtype=torch.float64), rtol=1e-4, atol=1e-4)


def test_uniform_large_n_matches_cdist_formula():
    p, g = unit(1000, 3, torch.float32), unit(1000, 3, torch.float32)
    for kappa in (2.0, 100.0):
        d2 = torch.cdist(p.double(), g.double()) ** 2
        off = ~torch.eye(1000, dtype=torch.bool)
        expected = torch.logsumexp(-kappa * d2[off], 0) - math.log(1000 * 999)
        got = uniform_loss_reference(p, g, kappa)
        assert got.dtype == torch.float32 and torch.isfinite(got)
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


def test_uniform_n_below_two_raises():
    with pytest.raises(ValueError, match=r"msa_fast.ops.uniform_loss: needs n >= 2 rows.*shape \(1, 4\)"):
        uniform_loss_reference(torch.randn(1, 4), torch.randn(1, 4))


# ---------------------------------------------------------------------------------------------
# Shared: dtypes, NaN, gradcheck, errors


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("which", ["align", "cross", "wang_isola"])
def test_low_precision_inputs_give_fp32(dtype, which):
    fn = {"align": lambda p, g: align_loss_reference(p, g),
          "cross": lambda p, g: uniform_loss_reference(p, g, 2.0),
          "wang_isola": lambda p, g: uniform_loss_reference(p, g, 2.0, mode="wang_isola")}[which]
    p, g = (t.to(dtype).requires_grad_(True) for t in (unit(65, 16, torch.float32), unit(65, 16, torch.float32)))
    out = fn(p, g)
    assert out.dtype == torch.float32
    p32, g32 = (t.detach().float().requires_grad_(True) for t in (p, g))
    expected = fn(p32, g32)
    torch.testing.assert_close(out, expected, rtol=5e-2, atol=1e-2)
    for a, b in zip(torch.autograd.grad(out, (p, g)), torch.autograd.grad(expected, (p32, g32))):
        assert a.dtype == dtype
        torch.testing.assert_close(a.float(), b, rtol=5e-2, atol=1e-2)


def test_nan_propagation_and_check_finite(monkeypatch):
    p, g = torch.randn(5, 3), torch.randn(5, 3)
    p[1, 2] = float("nan")
    per = align_loss_reference(p, g, reduction="none")
    assert torch.isnan(per[1]) and torch.isfinite(per[[0, 2, 3, 4]]).all()
    assert torch.isnan(align_loss_reference(p, g, 1))
    assert torch.isnan(uniform_loss_reference(p, g))
    assert torch.isnan(uniform_loss_reference(p, g, 0.0))
    assert torch.isnan(uniform_loss_reference(p, g, mode="wang_isola"))
    with pytest.raises(ValueError, match=r"msa_fast.ops.align_loss: p has 1 non-finite entries"):
        align_loss_reference(p, g, check_finite=True)
    with pytest.raises(ValueError, match=r"msa_fast.ops.uniform_loss: p has 1 non-finite entries"):
        uniform_loss_reference(p, g, check_finite=True)
    monkeypatch.setenv("MSA_FAST_CHECK_FINITE", "1")
    with pytest.raises(ValueError, match="non-finite"):
        align_loss_reference(p, g)
    with pytest.raises(ValueError, match="non-finite"):
        uniform_loss_reference(p, g)


@pytest.mark.parametrize("normalize", [False, True])
def test_gradcheck_fp64(normalize):
    p = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    g = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    for power in (1, 2, 1.5):
        assert torch.autograd.gradcheck(lambda a, b: align_loss_reference(a, b, power, normalize=normalize,
                                                                          reduction="none"), (p, g))
    for mode in ("cross", "wang_isola"):
        assert uniform_loss_reference(p, g, mode=mode).dtype == torch.float64
        assert torch.autograd.gradcheck(lambda a, b: uniform_loss_reference(a, b, 2.0, mode=mode, normalize=normalize),
                                        (p, g))


def test_errors():
    for fn, op in ((align_loss_reference, "align_loss"), (uniform_loss_reference, "uniform_loss")):
        with pytest.raises(ValueError, match=rf"^msa_fast\.ops\.{op}: p is empty \(shape \(0, 4\)\)$"):
            fn(torch.randn(0, 4), torch.randn(0, 4))
        with pytest.raises(ValueError, match=r"p and g must have the same shape, got \(3, 4\) and \(3, 5\)"):
            fn(torch.randn(3, 4), torch.randn(3, 5))
        with pytest.raises(TypeError, match="share a dtype"):
            fn(torch.randn(3, 4), torch.randn(3, 4).half())
    with pytest.raises(ValueError, match="power"):
        align_loss_reference(torch.randn(3, 4), torch.randn(3, 4), 0)
    with pytest.raises(ValueError, match="reduction"):
        align_loss_reference(torch.randn(3, 4), torch.randn(3, 4), reduction="pml")
    with pytest.raises(ValueError, match="kappa"):
        uniform_loss_reference(torch.randn(3, 4), torch.randn(3, 4), -1.0)
    with pytest.raises(ValueError, match="mode"):
        uniform_loss_reference(torch.randn(3, 4), torch.randn(3, 4), mode="self")


def test_public_reference_names():
    assert reference.align_loss is align_loss_reference
    assert reference.uniform_loss is uniform_loss_reference


# ==================================================================================================
# Fused backends (C++ CPU on the engine of ops.md §1; Triton under the interpreter; CUDA on a GPU)
# against the reference: values, gradients, edge cases, opcheck, torch.compile. uniform's fused path
# expands d² = ‖p‖² + ‖g‖² − 2p·g, hence the §10 atol for its value. align_loss is row-wise O(n·D) with
# nothing pairwise to fuse: every backend runs the same torch ops, checked here for dispatch only.

import msa_fast.ops as ops  # noqa: E402
from tests.ops.backends import fast_backends  # noqa: E402

FUSED = fast_backends("uniform_rows", "uniform_rows_triton")
NOT_TRITON = [p for p in FUSED if p.values[0] != "triton"]
MODES = ["cross", "wang_isola"]
UNIF_TOL = dict(rtol=1e-5, atol=1e-5)
UNIF_GRAD_TOL = dict(rtol=1e-4, atol=1e-5)
LOW_TOL = dict(rtol=5e-2, atol=1e-2)


def uniform_fused_and_reference(p, g, backend, *args, same=False, **kw):
    p1, p2 = (p.detach().clone().requires_grad_() for _ in range(2))
    g1, g2 = (p1, p2) if same else (g.detach().clone().requires_grad_() for _ in range(2))
    a = ops.uniform_loss(p1, g1, *args, backend=backend, **kw)
    b = uniform_loss_reference(p2, g2, *args, **kw)
    ga = torch.autograd.grad(a * 1.3, (p1,) if same else (p1, g1))
    gb = torch.autograd.grad(b * 1.3, (p2,) if same else (p2, g2))
    return a, b, ga, gb


def assert_grads_close(ga, gb, **tol):
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x.float(), y.float(), **tol)


@pytest.mark.parametrize("backend, device", FUSED)
@pytest.mark.parametrize("n, D", [(2, 3), (3, 1), (17, 50), (65, 384)])
@pytest.mark.parametrize("kappa", [0.0, 2.0, 100.0])
@pytest.mark.parametrize("mode", MODES)
def test_uniform_fused_matches_reference(backend, device, n, D, kappa, mode):
    if backend == "triton" and device == "cpu" and n * D > 1000:
        pytest.skip("Triton interpreter: tiny shapes only (ops.md §10)")
    p, g = unit(n, D, torch.float32).to(device), unit(n, D, torch.float32).to(device)
    a, b, ga, gb = uniform_fused_and_reference(p, g, backend, kappa, mode=mode)
    assert a.dtype == torch.float32 and a.dim() == 0 and a.item() <= 0
    torch.testing.assert_close(a, b, **UNIF_TOL)
    assert_grads_close(ga, gb, **UNIF_GRAD_TOL)


@pytest.mark.parametrize("backend, device", NOT_TRITON)
@pytest.mark.parametrize("n, D", [(1000, 3), (1025, 1), (129, 384)])
@pytest.mark.parametrize("kappa", [2.0, 100.0])
def test_uniform_fused_large_and_odd(backend, device, n, D, kappa):
    p, g = unit(n, D, torch.float32).to(device), unit(n, D, torch.float32).to(device)
    for mode in MODES:
        a, b, ga, gb = uniform_fused_and_reference(p, g, backend, kappa, mode=mode)
        torch.testing.assert_close(a, b, **UNIF_TOL)
        # at κ = 100 and D = 384 the gradients reach ~20 and both fp32 computations carry ~1e-4 of rounding
        # there (the fp32 reference itself is 4e-5 off the fp64 one): judge the fused gradients against the
        # fp64 reference with an absolute tolerance on the gradients' scale
        _, _, _, truth = uniform_fused_and_reference(p.double(), g.double(), "reference", kappa, mode=mode)
        for x, t in zip(ga, truth):
            scale = float(t.abs().max().clamp_min(1.0))
            torch.testing.assert_close(x.double(), t, rtol=UNIF_GRAD_TOL["rtol"], atol=UNIF_GRAD_TOL["atol"] * scale)


@pytest.mark.parametrize("backend, device", FUSED)
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("mode", MODES)
def test_uniform_fused_normalize(backend, device, normalize, mode):
    # normalize=True on raw rows of any scale; normalize=False on rows of norm ≈ 1 (the d² expansion's
    # rounding grows with ‖x‖², so the §10 tolerance is stated for normalised inputs)
    scale = 3.0 if normalize else 1.0 / math.sqrt(12)
    p, g = torch.randn(33, 12, device=device) * scale, torch.randn(33, 12, device=device) * scale
    a, b, ga, gb = uniform_fused_and_reference(p, g, backend, 2.0, mode=mode, normalize=normalize)
    torch.testing.assert_close(a, b, **UNIF_TOL)
    assert_grads_close(ga, gb, **UNIF_GRAD_TOL)


@pytest.mark.parametrize("backend, device", FUSED)
@pytest.mark.parametrize("mode", MODES)
def test_uniform_fused_g_is_p(backend, device, mode):
    p = unit(21, 6, torch.float32).to(device)
    a, b, ga, gb = uniform_fused_and_reference(p, None, backend, 2.0, same=True, mode=mode)
    torch.testing.assert_close(a, b, **UNIF_TOL)
    assert_grads_close(ga, gb, **UNIF_GRAD_TOL)


@pytest.mark.parametrize("backend, device", FUSED)
@pytest.mark.parametrize("mode", MODES)
def test_uniform_fused_kappa_zero_and_identical_rows(backend, device, mode):
    p, g = torch.randn(9, 4, device=device), torch.randn(9, 4, device=device)
    p.requires_grad_(True)
    out = ops.uniform_loss(p, g, 0.0, mode=mode, backend=backend)
    assert out.item() == 0.0                                      # κ = 0: exactly 0 (ops.md §6)
    (grad,) = torch.autograd.grad(out, p)
    assert (grad == 0).all()
    same = unit(1, 4, torch.float32).to(device).expand(9, 4)
    for kappa in (2.0, 100.0):
        a, b, ga, gb = uniform_fused_and_reference(same, same.clone(), backend, kappa, mode=mode)
        assert b.item() == 0.0 and -1e-5 <= a.item() <= 0.0      # ≤ 0 always; 0 up to the d² expansion
        assert_grads_close(ga, gb, **UNIF_GRAD_TOL)


@pytest.mark.parametrize("backend, device", FUSED)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", MODES)
def test_uniform_fused_low_precision(backend, device, dtype, mode):
    p, g = (unit(40, 16, torch.float32).to(device).to(dtype) for _ in range(2))
    a, b, ga, gb = uniform_fused_and_reference(p, g, backend, 2.0, mode=mode)
    assert a.dtype == torch.float32 and all(t.dtype == dtype for t in ga)
    torch.testing.assert_close(a, b, **LOW_TOL)
    assert_grads_close(ga, gb, **LOW_TOL)


@pytest.mark.parametrize("backend, device", FUSED)
def test_uniform_fused_nan_propagation_and_check_finite(backend, device):
    p, g = torch.randn(5, 3, device=device), torch.randn(5, 3, device=device)
    p[1, 2] = float("nan")
    for mode in MODES:
        for kappa in (0.0, 2.0):
            assert torch.isnan(ops.uniform_loss(p, g, kappa, mode=mode, backend=backend))
            assert torch.isnan(ops.uniform_loss(g, p, kappa, mode=mode, backend=backend))
    with pytest.raises(ValueError, match=r"msa_fast.ops.uniform_loss: p has 1 non-finite entries"):
        ops.uniform_loss(p, g, check_finite=True, backend=backend)


@pytest.mark.parametrize("backend, device", NOT_TRITON)
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_uniform_fused_gradcheck_fp64(backend, device, normalize, mode):
    p = torch.randn(6, 3, dtype=torch.float64, device=device, requires_grad=True)
    g = torch.randn(6, 3, dtype=torch.float64, device=device, requires_grad=True)
    fn = lambda a, b: ops.uniform_loss(a, b, 2.0, mode=mode, normalize=normalize, backend=backend)  # noqa: E731
    assert fn(p, g).dtype == torch.float64
    assert torch.autograd.gradcheck(fn, (p, g))
    assert torch.autograd.gradcheck(lambda a: fn(a, a), (p,))


def test_uniform_fused_opcheck():
    p, g = torch.randn(13, 7, requires_grad=True), torch.randn(13, 7, requires_grad=True)
    for normalize in (True, False):
        torch.library.opcheck(torch.ops.msa_fast.uniform_rows.default, (p, g, 2.0, normalize))
        torch.library.opcheck(torch.ops.msa_fast.uniform_rows.default, (p, p, 0.5, normalize))


def test_uniform_fused_torch_compile_fullgraph():
    def f(p, g):
        return ops.uniform_loss(p, g, backend="cpp") + ops.uniform_loss(p, g, 5.0, mode="wang_isola", backend="cpp")

    p, g = unit(21, 8, torch.float32).requires_grad_(), unit(21, 8, torch.float32).requires_grad_()
    out = torch.compile(f, fullgraph=True)(p, g)
    grads = torch.autograd.grad(out, (p, g))
    p2, g2 = (t.detach().clone().requires_grad_() for t in (p, g))
    out2 = f(p2, g2)
    torch.testing.assert_close(out, out2)
    assert_grads_close(grads, torch.autograd.grad(out2, (p2, g2)))


def test_uniform_fused_auto_and_errors():
    p, g = torch.randn(8, 3), torch.randn(8, 3)
    torch.testing.assert_close(ops.uniform_loss(p, g), ops.uniform_loss(p, g, backend="cpp"))
    torch.testing.assert_close(ops.uniform_loss(p, g, backend="reference"), uniform_loss_reference(p, g))
    torch.testing.assert_close(ops.uniform_loss(p.double(), g.double()), uniform_loss_reference(p.double(), g.double()))
    with pytest.raises(ValueError, match=r"^msa_fast\.ops\.uniform_loss: p is empty \(shape \(0, 4\)\)$"):
        ops.uniform_loss(torch.randn(0, 4), torch.randn(0, 4))
    with pytest.raises(ValueError, match=r"needs n >= 2 rows.*shape \(1, 4\)"):
        ops.uniform_loss(torch.randn(1, 4), torch.randn(1, 4))
    with pytest.raises(ValueError, match=r"p and g must have the same shape, got \(3, 4\) and \(3, 5\)"):
        ops.uniform_loss(torch.randn(3, 4), torch.randn(3, 5))
    with pytest.raises(TypeError, match="share a dtype"):
        ops.uniform_loss(p, g.half())
    with pytest.raises(ValueError, match="kappa"):
        ops.uniform_loss(p, g, -1.0)
    with pytest.raises(ValueError, match="mode"):
        ops.uniform_loss(p, g, mode="self")
    with pytest.raises(RuntimeError, match="cuda.*not available"):
        ops.uniform_loss(p, g, backend="cuda")
    with pytest.raises(ValueError, match=r"needs n >= 2 rows"):
        torch.ops.msa_fast.uniform_rows(p[:1], g[:1], 2.0, False)
    with pytest.raises(ValueError, match=r"kappa must be >= 0"):
        torch.ops.msa_fast.uniform_rows(p, g, -2.0, False)
    with pytest.raises(ValueError, match=r"per-row tensors must have n = 8"):
        torch.ops.msa_fast.uniform_rows_backward(torch.ones(3), p, g, torch.ones(8), 2.0, False)


@pytest.mark.parametrize("backend", ["auto", "reference", "cpp"])
@pytest.mark.parametrize("power", [1, 2, 1.5])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_align_public_op_every_backend(backend, power, reduction):
    p = torch.randn(65, 7, requires_grad=True)
    g = torch.randn(65, 7, requires_grad=True)
    with torch.no_grad():
        g[3] = p[3]                                               # a matched pair: zero (sub)gradient
    a = ops.align_loss(p, g, power, reduction=reduction, backend=backend)
    b = align_loss_reference(p, g, power, reduction=reduction)
    torch.testing.assert_close(a, b)
    w = torch.randn(a.shape) if a.dim() else torch.tensor(1.0)
    ga, gb = torch.autograd.grad((a * w).sum(), (p, g)), torch.autograd.grad((b * w).sum(), (p, g))
    assert_grads_close(ga, gb)
    assert (ga[0][3] == 0).all()
    torch.testing.assert_close(ops.align_loss(p, g, power, normalize=True, backend=backend),
                               align_loss_reference(p, g, power, normalize=True))


def test_align_public_op_errors_and_compile():
    p, g = torch.randn(5, 3), torch.randn(5, 3)
    with pytest.raises(ValueError, match=r"^msa_fast\.ops\.align_loss: p is empty \(shape \(0, 4\)\)$"):
        ops.align_loss(torch.randn(0, 4), torch.randn(0, 4))
    with pytest.raises(RuntimeError, match="cuda.*not available"):
        ops.align_loss(p, g, backend="cuda")
    with pytest.raises(ValueError, match="unknown backend"):
        ops.align_loss(p, g, backend="fast")
    with pytest.raises(ValueError, match="power"):
        ops.align_loss(p, g, 0)
    p[1, 0] = float("nan")
    assert torch.isnan(ops.align_loss(p, g, reduction="none")[1])
    with pytest.raises(ValueError, match=r"align_loss: p has 1 non-finite entries"):
        ops.align_loss(p, g, check_finite=True)
    q, k = torch.randn(9, 4), torch.randn(9, 4)
    out = torch.compile(lambda a, b: ops.align_loss(a, b, 1) + ops.align_loss(a, b), fullgraph=True)(q, k)
    torch.testing.assert_close(out, align_loss_reference(q, k, 1) + align_loss_reference(q, k))
