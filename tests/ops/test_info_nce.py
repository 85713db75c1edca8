"""info_nce reference (ops.md §3): exact values, 'keys' against torch cross-entropy, 'queries' against a
per-row loop, q is k, every §3 / §10 edge case, dtypes, NaN and errors, fp64 gradcheck."""

import math

import pytest
import torch
import torch.nn.functional as F

from msa_fast.ops import reference
from msa_fast.ops.info_nce import info_nce_reference

REDUCTIONS = ["mean", "sum", "none"]


def loop_queries(q, k, tau, normalize=True):
    """ℓ_i = LSE({a_ii} ∪ {b_ij : j ≠ i}) − a_ii by a Python loop in double precision."""
    qd, kd = q.double(), k.double()
    if normalize:
        qd, kd = F.normalize(qd, dim=1), F.normalize(kd, dim=1)
    N = q.shape[0]
    out = []
    for i in range(N):
        a_ii = float(qd[i] @ kd[i]) / tau
        terms = [a_ii] + [float(qd[i] @ qd[j]) / tau for j in range(N) if j != i]
        m = max(terms)
        out.append(m + math.log(sum(math.exp(t - m) for t in terms)) - a_ii)
    return torch.tensor(out, dtype=torch.float64)


def reduce(v, reduction):
    return v if reduction == "none" else v.sum() if reduction == "sum" else v.mean()


def test_exact_value_orthogonal():
    # q = k = orthogonal unit rows: a_ii = 1/τ, every other logit 0 → ℓ_i = log(e^{1/τ} + N − 1) − 1/τ.
    tau, N = 0.1, 5
    q = torch.eye(N) * 2.0
    expected = math.log(math.exp(1 / tau) + N - 1) - 1 / tau
    for negatives in ("queries", "keys"):
        torch.testing.assert_close(info_nce_reference(q, q.clone(), tau, negatives),
                                   torch.tensor(expected))


def test_exact_value_identical_rows():
    # All rows identical: every logit equals 1/τ → ℓ_i = log N.
    q = torch.ones(7, 3)
    for negatives in ("queries", "keys"):
        torch.testing.assert_close(info_nce_reference(q, q.clone(), 0.1, negatives), torch.tensor(math.log(7)))
        torch.testing.assert_close(info_nce_reference(q, q * 3, 0.1, negatives, reduction="sum"),
                                   torch.tensor(7 * math.log(7)))


@pytest.mark.parametrize("N", [2, 3, 65, 127])
@pytest.mark.parametrize("tau", [0.05, 0.1, 0.7])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_keys_is_cross_entropy(N, tau, reduction):
    q, k = torch.randn(N, 8), torch.randn(N, 8)
    logits = F.normalize(q, dim=1) @ F.normalize(k, dim=1).T / tau
    expected = F.cross_entropy(logits, torch.arange(N), reduction=reduction)
    got = info_nce_reference(q, k, tau, "keys", reduction=reduction)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # and without normalisation
    expected = F.cross_entropy(q @ k.T / tau, torch.arange(N), reduction=reduction)
    torch.testing.assert_close(info_nce_reference(q, k, tau, "keys", normalize=False, reduction=reduction),
                               expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("N", [2, 3, 65])
@pytest.mark.parametrize("tau", [0.05, 0.1, 0.7])
def test_queries_matches_loop(N, tau):
    q, k = torch.randn(N, 6, dtype=torch.float64), torch.randn(N, 6, dtype=torch.float64)
    expected = loop_queries(q, k, tau)
    for reduction in REDUCTIONS:
        torch.testing.assert_close(info_nce_reference(q, k, tau, reduction=reduction), reduce(expected, reduction),
                                   rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(info_nce_reference(q.float(), k.float(), tau, reduction=reduction),
                                   reduce(expected, reduction).float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(info_nce_reference(q, k, tau, normalize=False),
                               loop_queries(q, k, tau, normalize=False).mean(), rtol=1e-10, atol=1e-10)


def test_queries_and_keys_differ_and_coincide_when_k_is_q():
    q, k = torch.randn(10, 4), torch.randn(10, 4)
    assert not torch.allclose(info_nce_reference(q, k, 0.1, "queries"), info_nce_reference(q, k, 0.1, "keys"))
    torch.testing.assert_close(info_nce_reference(q, q, 0.1, "queries"), info_nce_reference(q, q, 0.1, "keys"))


@pytest.mark.parametrize("negatives", ["queries", "keys"])
def test_q_is_k_gradients_add_up(negatives):
    q = torch.randn(9, 5, requires_grad=True)
    (g_same,) = torch.autograd.grad(info_nce_reference(q, q, 0.2, negatives), q)
    k = q.detach().clone().requires_grad_(True)
    q2 = q.detach().clone().requires_grad_(True)
    gq, gk = torch.autograd.grad(info_nce_reference(q2, k, 0.2, negatives), (q2, k))
    torch.testing.assert_close(g_same, gq + gk, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("negatives", ["queries", "keys"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_single_row_is_zero_with_zero_gradient(negatives, reduction):
    q = torch.randn(1, 4, requires_grad=True)
    k = torch.randn(1, 4, requires_grad=True)
    out = info_nce_reference(q, k, 0.1, negatives, reduction=reduction)
    assert out.dtype == torch.float32 and torch.equal(out, torch.zeros_like(out))
    gq, gk = torch.autograd.grad(out.sum(), (q, k))
    assert torch.equal(gq, torch.zeros_like(q)) and torch.equal(gk, torch.zeros_like(k))


def test_d_equals_one():
    q, k = torch.randn(6, 1, dtype=torch.float64), torch.randn(6, 1, dtype=torch.float64)
    torch.testing.assert_close(info_nce_reference(q, k, 0.5), loop_queries(q, k, 0.5).mean())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("negatives", ["queries", "keys"])
def test_low_precision_inputs_give_fp32(dtype, negatives):
    q = torch.randn(33, 16).to(dtype).requires_grad_(True)
    k = torch.randn(33, 16).to(dtype).requires_grad_(True)
    out = info_nce_reference(q, k, 0.05, negatives)
    assert out.dtype == torch.float32
    q32, k32 = (t.detach().float().requires_grad_(True) for t in (q, k))
    expected = info_nce_reference(q32, k32, 0.05, negatives)
    torch.testing.assert_close(out, expected, rtol=5e-2, atol=1e-2)
    gq, gk = torch.autograd.grad(out, (q, k))
    gq32, gk32 = torch.autograd.grad(expected, (q32, k32))
    assert gq.dtype == dtype and gk.dtype == dtype
    torch.testing.assert_close(gq.float(), gq32, rtol=5e-2, atol=1e-2)
    torch.testing.assert_close(gk.float(), gk32, rtol=5e-2, atol=1e-2)


def test_nan_propagation_and_check_finite(monkeypatch):
    q, k = torch.randn(5, 3), torch.randn(5, 3)
    k_nan = k.clone()
    k_nan[2, 0] = float("nan")
    per = info_nce_reference(q, k_nan, 0.1, "queries", reduction="none")
    assert torch.isnan(per[2]) and torch.isfinite(per[[0, 1, 3, 4]]).all()   # k_i is only row i's positive
    assert torch.isnan(info_nce_reference(q, k_nan, 0.1, "keys", reduction="none")).all()
    q_nan = q.clone()
    q_nan[4, 1] = float("nan")
    assert torch.isnan(info_nce_reference(q_nan, k, 0.1, "queries", reduction="none")).all()
    with pytest.raises(ValueError, match=r"msa_fast.ops.info_nce: k has 1 non-finite entries"):
        info_nce_reference(q, k_nan, check_finite=True)
    monkeypatch.setenv("MSA_FAST_CHECK_FINITE", "1")
    with pytest.raises(ValueError, match=r"q has 1 non-finite"):
        info_nce_reference(q_nan, k)


@pytest.mark.parametrize("negatives", ["queries", "keys"])
@pytest.mark.parametrize("normalize", [True, False])
def test_gradcheck_fp64(negatives, normalize):
    q = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    k = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    fn = lambda a, b: info_nce_reference(a, b, 0.3, negatives, normalize=normalize, reduction="none")  # noqa: E731
    assert fn(q, k).dtype == torch.float64
    assert torch.autograd.gradcheck(fn, (q, k))
    assert torch.autograd.gradcheck(lambda a: info_nce_reference(a, a, 0.3, negatives, normalize=normalize), (q,))


def test_errors():
    with pytest.raises(ValueError, match=r"^msa_fast\.ops\.info_nce: q is empty \(shape \(0, 16\)\)$"):
        info_nce_reference(torch.randn(0, 16), torch.randn(0, 16))
    with pytest.raises(ValueError, match=r"q and k must have the same shape, got \(4, 3\) and \(5, 3\)"):
        info_nce_reference(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(TypeError, match=r"share a dtype.*torch.float32.*torch.bfloat16"):
        info_nce_reference(torch.randn(4, 3), torch.randn(4, 3).bfloat16())
    with pytest.raises(ValueError, match="negatives"):
        info_nce_reference(torch.randn(4, 3), torch.randn(4, 3), negatives="both")
    with pytest.raises(ValueError, match="reduction"):
        info_nce_reference(torch.randn(4, 3), torch.randn(4, 3), reduction="pml")
    with pytest.raises(ValueError, match="temperature"):
        info_nce_reference(torch.randn(4, 3), torch.randn(4, 3), -1.0)


def test_public_reference_name():
    assert reference.info_nce is info_nce_reference
