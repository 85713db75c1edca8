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


# ==================================================================================================
# Fused backends (C++ CPU on the engine of ops.md §1; Triton under the interpreter; CUDA on a GPU)
# against the reference: values, gradients, edge cases, opcheck, torch.compile.

import msa_fast.ops as ops  # noqa: E402
from tests.ops.backends import fast_backends  # noqa: E402

FUSED = fast_backends("info_nce_rows", "info_nce_rows_triton")
NOT_TRITON = [p for p in FUSED if p.values[0] != "triton"]
NEGATIVES = ["queries", "keys"]
FP32_TOL = dict(rtol=1e-5, atol=1e-6)
FP32_GRAD_TOL = dict(rtol=1e-4, atol=1e-5)
LOW_TOL = dict(rtol=5e-2, atol=1e-2)


def fused_and_reference(q, k, backend, *args, same=False, **kw):
    """Values and gradients (w.r.t. q and k, or q alone when ``same``) of the fused op and the reference."""
    q1, q2 = (q.detach().clone().requires_grad_() for _ in range(2))
    k1, k2 = (q1, q2) if same else (k.detach().clone().requires_grad_() for _ in range(2))
    a = ops.info_nce(q1, k1, *args, backend=backend, **kw)
    b = info_nce_reference(q2, k2, *args, **kw)
    w = torch.randn(a.shape, device=a.device) if a.dim() else torch.tensor(1.7, device=a.device)
    ga = torch.autograd.grad((a * w).sum(), (q1,) if same else (q1, k1))
    gb = torch.autograd.grad((b * w).sum(), (q2,) if same else (q2, k2))
    return a, b, ga, gb


def assert_grads_close(ga, gb, **tol):
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x.float(), y.float(), **tol)


@pytest.mark.parametrize("backend, device", FUSED)
@pytest.mark.parametrize("N, D", [(1, 3), (2, 3), (3, 1), (17, 50), (65, 384)])
@pytest.mark.parametrize("negatives", NEGATIVES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_fused_matches_reference(backend, device, N, D, negatives, reduction):
    if backend == "triton" and device == "cpu" and N * D > 1000:
        pytest.skip("Triton interpreter: tiny shapes only (ops.md §10)")
    q, k = torch.randn(N, D, device=device), torch.randn(N, D, device=device)
    a, b, ga, gb = fused_and_reference(q, k, backend, 0.1, negatives, reduction=reduction)
    assert a.dtype == torch.float32 and a.shape == b.shape
    torch.testing.assert_close(a, b, **FP32_TOL)
    assert_grads_close(ga, gb, **FP32_GRAD_TOL)


@pytest.mark.parametrize("backend, device", NOT_TRITON)
@pytest.mark.parametrize("N, D", [(1000, 384), (1025, 3)])
@pytest.mark.parametrize("negatives", NEGATIVES)
def test_fused_large_and_odd(backend, device, N, D, negatives):
    q, k = torch.randn(N, D, device=device), torch.randn(N, D, device=device)
    a, b, ga, gb = fused_and_reference(q, k, backend, 0.1, negatives, reduction="none")
    torch.testing.assert_close(a, b, **FP32_TOL)
    assert_grads_close(ga, gb, **FP32_GRAD_TOL)


@pytest.mark.parametrize("backend, device", NOT_TRITON)
@pytest.mark.parametrize("negatives", NEGATIVES)
def test_fused_d_equals_one_large(backend, device, negatives):
    # D = 1 with normalisation: every row is ±1, so the true gradient is exactly 0. The fused path gives
    # exactly 0 (tangential projection of an exact ±1); the reference's autograd through the division
    # leaves rounding noise of the size of the upstream gradient times 1 ulp, so it is not compared.
    q, k = torch.randn(1000, 1, device=device), torch.randn(1000, 1, device=device)
    a, b, ga, _ = fused_and_reference(q, k, backend, 0.1, negatives, reduction="none")
    torch.testing.assert_close(a, b, **FP32_TOL)
    assert all((g == 0).all() for g in ga)
    a, b, ga, gb = fused_and_reference(q * 0.5, k * 0.5, backend, 0.7, negatives, normalize=False)
    torch.testing.assert_close(a, b, **FP32_TOL)
    assert_grads_close(ga, gb, **FP32_GRAD_TOL)


@pytest.mark.parametrize("backend, device", FUSED)
@pytest.mark.parametrize("tau", [0.05, 0.1, 0.7])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("negatives", NEGATIVES)
def test_fused_temperatures_and_raw_dots(backend, device, tau, normalize, negatives):
    scale = 1.0 if normalize else 0.3
    q, k = torch.randn(33, 12, device=device) * scale, torch.randn(33, 12, device=device) * scale
    a, b, ga, gb = fused_and_reference(q, k, backend, tau, negatives, normalize=normalize, reduction="none")
    torch.testing.assert_close(a, b, **FP32_TOL)
    assert_grads_close(ga, gb, **FP32_GRAD_TOL)


@pytest.mark.parametrize("backend, device", FUSED)
@pytest.mark.parametrize("negatives", NEGATIVES)
@pytest.mark.parametrize("normalize", [True, False])
def test_fused_q_is_k(backend, device, negatives, normalize):
    q = torch.randn(19, 7, device=device) * (1.0 if normalize else 0.4)
    a, b, ga, gb = fused_and_reference(q, None, backend, 0.2, negatives, same=True, normalize=normalize,
                                       reduction="none")
    torch.testing.assert_close(a, b, **FP32_TOL)
    assert_grads_close(ga, gb, **FP32_GRAD_TOL)
    # the two modes coincide when k is q
    torch.testing.assert_close(ops.info_nce(q, q, 0.2, "queries", backend=backend),
                               ops.info_nce(q, q, 0.2, "keys", backend=backend), **FP32_TOL)


@pytest.mark.parametrize("backend, device", FUSED)
@pytest.mark.parametrize("negatives", NEGATIVES)
def test_fused_identical_rows(backend, device, negatives):
    q = torch.randn(1, 5, device=device).expand(9, 5).contiguous()
    a, b, ga, gb = fused_and_reference(q, q * 2, backend, 0.1, negatives)
    torch.testing.assert_close(a, torch.tensor(math.log(9), device=device), **FP32_TOL)
    torch.testing.assert_close(a, b, **FP32_TOL)
    assert_grads_close(ga, gb, **FP32_GRAD_TOL)


@pytest.mark.parametrize("backend, device", FUSED)
@pytest.mark.parametrize("negatives", NEGATIVES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_fused_single_row_is_exactly_zero(backend, device, negatives, reduction):
    q = torch.randn(1, 4, device=device, requires_grad=True)
    k = torch.randn(1, 4, device=device, requires_grad=True)
    out = ops.info_nce(q, k, 0.1, negatives, reduction=reduction, backend=backend)
    assert out.dtype == torch.float32 and (out == 0).all()
    gq, gk = torch.autograd.grad(out.sum(), (q, k))
    assert (gq == 0).all() and (gk == 0).all()


@pytest.mark.parametrize("backend, device", FUSED)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("negatives", NEGATIVES)
def test_fused_low_precision(backend, device, dtype, negatives):
    q, k = torch.randn(40, 24, device=device).to(dtype), torch.randn(40, 24, device=device).to(dtype)
    a, b, ga, gb = fused_and_reference(q, k, backend, 0.05, negatives)
    assert a.dtype == torch.float32 and all(g.dtype == dtype for g in ga)
    torch.testing.assert_close(a, b, **LOW_TOL)
    assert_grads_close(ga, gb, **LOW_TOL)


@pytest.mark.parametrize("backend, device", FUSED)
def test_fused_nan_propagation_and_check_finite(backend, device):
    q, k = torch.randn(5, 3, device=device), torch.randn(5, 3, device=device)
    k_nan = k.clone()
    k_nan[2, 0] = float("nan")
    per = ops.info_nce(q, k_nan, 0.1, "queries", reduction="none", backend=backend)
    assert torch.isnan(per[2]) and torch.isfinite(per[[0, 1, 3, 4]]).all()
    assert torch.isnan(ops.info_nce(q, k_nan, 0.1, "keys", reduction="none", backend=backend)).all()
    q_nan = q.clone()
    q_nan[4, 1] = float("nan")
    assert torch.isnan(ops.info_nce(q_nan, k, 0.1, "queries", reduction="none", backend=backend)).all()
    assert torch.isnan(ops.info_nce(q_nan, k, 0.1, "keys", reduction="none", backend=backend)[4])
    with pytest.raises(ValueError, match=r"msa_fast.ops.info_nce: k has 1 non-finite entries"):
        ops.info_nce(q, k_nan, check_finite=True, backend=backend)


@pytest.mark.parametrize("backend, device", NOT_TRITON)
@pytest.mark.parametrize("negatives", NEGATIVES)
@pytest.mark.parametrize("normalize", [True, False])
def test_fused_gradcheck_fp64(backend, device, negatives, normalize):
    q = torch.randn(7, 3, dtype=torch.float64, device=device, requires_grad=True)
    k = torch.randn(7, 3, dtype=torch.float64, device=device, requires_grad=True)
    fn = lambda a, b: ops.info_nce(a, b, 0.3, negatives, normalize=normalize, reduction="none",  # noqa: E731
                                   backend=backend)
    assert fn(q, k).dtype == torch.float64
    assert torch.autograd.gradcheck(fn, (q, k))
    assert torch.autograd.gradcheck(lambda a: ops.info_nce(a, a, 0.3, negatives, normalize=normalize,
                                                           backend=backend), (q,))


def test_fused_opcheck():
    q, k = torch.randn(13, 7, requires_grad=True), torch.randn(13, 7, requires_grad=True)
    for negatives_queries in (False, True):
        for normalize in (True, False):
            torch.library.opcheck(torch.ops.msa_fast.info_nce_rows.default, (q, k, 0.1, negatives_queries, normalize))
        torch.library.opcheck(torch.ops.msa_fast.info_nce_rows.default, (q, q, 0.5, negatives_queries, True))


def test_fused_torch_compile_fullgraph():
    def f(q, k):
        return ops.info_nce(q, k, backend="cpp") + ops.info_nce(q, k, 0.05, "keys", backend="cpp")

    q, k = torch.randn(21, 8, requires_grad=True), torch.randn(21, 8, requires_grad=True)
    out = torch.compile(f, fullgraph=True)(q, k)
    grads = torch.autograd.grad(out, (q, k))
    q2, k2 = (t.detach().clone().requires_grad_() for t in (q, k))
    out2 = f(q2, k2)
    grads2 = torch.autograd.grad(out2, (q2, k2))
    torch.testing.assert_close(out, out2)
    assert_grads_close(grads, grads2)


def test_fused_auto_and_errors():
    q, k = torch.randn(8, 3), torch.randn(8, 3)
    torch.testing.assert_close(ops.info_nce(q, k), ops.info_nce(q, k, backend="cpp"))
    torch.testing.assert_close(ops.info_nce(q, k, backend="reference"), info_nce_reference(q, k))
    # fp64 under auto runs the reference
    torch.testing.assert_close(ops.info_nce(q.double(), k.double()), info_nce_reference(q.double(), k.double()))
    with pytest.raises(ValueError, match=r"^msa_fast\.ops\.info_nce: q is empty \(shape \(0, 16\)\)$"):
        ops.info_nce(torch.randn(0, 16), torch.randn(0, 16))
    with pytest.raises(ValueError, match=r"q and k must have the same shape, got \(4, 3\) and \(5, 3\)"):
        ops.info_nce(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(TypeError, match="share a dtype"):
        ops.info_nce(q, k.half())
    with pytest.raises(ValueError, match="negatives"):
        ops.info_nce(q, k, negatives="both")
    with pytest.raises(ValueError, match="temperature"):
        ops.info_nce(q, k, 0.0)
    with pytest.raises(ValueError, match="unknown backend"):
        ops.info_nce(q, k, backend="fast")
    with pytest.raises(RuntimeError, match="cuda.*not available"):
        ops.info_nce(q, k, backend="cuda")
    # the C++ op checks its own inputs
    with pytest.raises(ValueError, match=r"q and k must have the same shape"):
        torch.ops.msa_fast.info_nce_rows(q, k[:3], 0.1, True, True)
    with pytest.raises(ValueError, match=r"temperature must be > 0"):
        torch.ops.msa_fast.info_nce_rows(q, k, -1.0, True, True)
    with pytest.raises(ValueError, match=r"per-row tensors must have N = 8"):
        torch.ops.msa_fast.info_nce_rows_backward(torch.ones(3), q, k, torch.ones(8), 0.1, True, True)
