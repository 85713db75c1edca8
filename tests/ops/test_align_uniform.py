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
