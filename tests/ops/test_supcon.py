"""supcon_loss reference (ops.md §2): exact values, an independent per-anchor loop, PML parity (when
pytorch_metric_learning is installed), the batch gate and every §2 / §10 edge case, dtypes, NaN and
errors, fp64 gradcheck."""

import math

import pytest
import torch
import torch.nn.functional as F

from msa_fast.ops import reference
from msa_fast.ops.supcon import supcon_loss_reference

REDUCTIONS = ["pml", "mean_pos", "sum", "none"]


def loop_supcon(z, labels, tau, variant="out", normalize=True):
    """ℓ_i and n_i by a plain Python loop over anchors and pairs, in double precision (§2 "Math")."""
    rows = z.double().tolist()
    labs = labels.tolist()
    if normalize:
        rows = [[v / max(math.sqrt(sum(c * c for c in r)), 1e-12) for v in r] for r in rows]
    N = len(rows)
    ells, counts = [], []
    for i in range(N):
        s = [sum(a * b for a, b in zip(rows[i], rows[j])) / tau for j in range(N)]
        others = [j for j in range(N) if j != i]
        pos = [j for j in others if labs[j] == labs[i]]
        counts.append(len(pos))
        if not pos:
            ells.append(0.0)
            continue
        m = max(s[j] for j in others)
        lse_all = m + math.log(sum(math.exp(s[j] - m) for j in others))
        if variant == "out":
            ells.append(-sum(s[j] - lse_all for j in pos) / len(pos))
        else:
            mp = max(s[j] for j in pos)
            ells.append(lse_all - (mp + math.log(sum(math.exp(s[j] - mp) for j in pos))))
    return ells, counts


def reduce_loop(ells, counts, labels, reduction):
    N = len(ells)
    gate = N > 1 and any(c > 0 for c in counts) and len(set(labels.tolist())) > 1
    if not gate:
        ells = [0.0] * N
    if reduction == "none":
        return torch.tensor(ells, dtype=torch.float64)
    if reduction == "sum":
        return torch.tensor(sum(ells), dtype=torch.float64)
    if reduction == "mean_pos":
        k = sum(c > 0 for c in counts)
        return torch.tensor(sum(ells) / k if gate and k else 0.0, dtype=torch.float64)
    k = sum(e > 0 for e in ells)
    return torch.tensor(sum(ells) / k if k else 0.0, dtype=torch.float64)


def assert_zero_with_zero_grad(fn, z):
    z = z.detach().clone().requires_grad_(True)
    out = fn(z)
    assert out.dtype == torch.float32
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert z.grad is not None and torch.equal(z.grad, torch.zeros_like(z))


# ---------------------------------------------------------------------------------------------
# Exact values


@pytest.mark.parametrize("variant", ["out", "in"])
def test_exact_values_orthogonal_rows(variant):
    # Orthogonal unit rows: every s_ij = 0 for j ≠ i, so LSE over A(i) = log 3 and each anchor with a
    # positive has ℓ_i = log 3 (both variants); labels [0, 0, 1, 2]: only anchors 0 and 1 count.
    z = torch.eye(4) * 3.0
    labels = torch.tensor([0, 0, 1, 2])
    log3 = math.log(3.0)
    per = supcon_loss_reference(z, labels, 0.5, variant=variant, reduction="none")
    torch.testing.assert_close(per, torch.tensor([log3, log3, 0.0, 0.0]))
    torch.testing.assert_close(supcon_loss_reference(z, labels, 0.5, variant=variant), torch.tensor(log3))
    torch.testing.assert_close(supcon_loss_reference(z, labels, 0.5, variant=variant, reduction="mean_pos"),
                               torch.tensor(log3))
    torch.testing.assert_close(supcon_loss_reference(z, labels, 0.5, variant=variant, reduction="sum"),
                               torch.tensor(2 * log3))


def test_exact_value_identical_positive_pair():
    # z0 = z1, z2 and z3 orthogonal to them: ℓ_0 = ℓ_1 = log(1 + 2e^{−1/τ}) ('out', PML).
    tau = 0.5
    z = torch.tensor([[1.0, 0, 0], [2.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    labels = torch.tensor([7, 7, -1, 3])  # arbitrary (negative, sparse) ids
    expected = math.log(1 + 2 * math.exp(-1 / tau))
    torch.testing.assert_close(supcon_loss_reference(z, labels, tau), torch.tensor(expected))


def test_pml_count_reproduces_fp32_underflow():
    # τ = 0.001: anchors 0 and 1 (identical rows) have s01 = 1000 and negatives at 0, so in fp32
    # LSE = 1000 exactly and ℓ_0 = ℓ_1 = 0: not counted by 'pml'. Anchors 2 and 3 (orthogonal, class 1)
    # have ℓ = log 4. 'pml' divides by 2, 'mean_pos' by 4.
    z = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1, 2])
    per = supcon_loss_reference(z, labels, 0.001, reduction="none")
    assert per[0].item() == 0.0 and per[1].item() == 0.0
    torch.testing.assert_close(supcon_loss_reference(z, labels, 0.001), torch.tensor(math.log(4.0)))
    torch.testing.assert_close(supcon_loss_reference(z, labels, 0.001, reduction="mean_pos"),
                               torch.tensor(math.log(4.0) / 2))
    # Only underflowing anchors: the count is 0 → exactly 0, with a zero gradient.
    assert_zero_with_zero_grad(lambda t: supcon_loss_reference(t, labels[:3], 0.001), z[[0, 1, 2]])


# ---------------------------------------------------------------------------------------------
# Independent checks


@pytest.mark.parametrize("N", [2, 3, 17, 63, 65])
@pytest.mark.parametrize("variant", ["out", "in"])
def test_matches_per_anchor_loop(N, variant):
    z = torch.randn(N, 5, dtype=torch.float64)
    labels = torch.randint(0, max(N // 3, 2), (N,))
    for tau in (0.07, 1.0):
        ells, counts = loop_supcon(z, labels, tau, variant)
        per32 = supcon_loss_reference(z.float(), labels, tau, variant=variant, reduction="none")
        for reduction in REDUCTIONS:
            expected = reduce_loop(ells, counts, labels, reduction)
            got = supcon_loss_reference(z, labels, tau, variant=variant, reduction=reduction)
            torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
            got32 = supcon_loss_reference(z.float(), labels, tau, variant=variant, reduction=reduction)
            assert got32.dtype == torch.float32
            if reduction == "pml":
                # the fp32 count of strictly positive ℓ_i can drop anchors whose ℓ_i underflows in fp32
                # (a tiny ℓ is > 0 in double): divide the loop's sum by the fp32 count
                k = int((per32 > 0).sum())
                expected = reduce_loop(ells, counts, labels, "sum") / k if k else expected * 0
            torch.testing.assert_close(got32, expected.float(), rtol=1e-5, atol=1e-5)


def test_normalize_false_matches_loop():
    z = torch.randn(20, 4, dtype=torch.float64) * 0.3
    labels = torch.randint(0, 4, (20,))
    for variant in ("out", "in"):
        expected = reduce_loop(*loop_supcon(z, labels, 0.5, variant, normalize=False), labels, "pml")
        got = supcon_loss_reference(z, labels, 0.5, variant=variant, normalize=False)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def log_softmax_supcon(z, labels, tau, variant):
    """A second dense formulation (log_softmax with the diagonal at −inf), used at sizes the loop can't do."""
    u = F.normalize(z.double(), dim=1)
    s = u @ u.T / tau
    N = z.shape[0]
    eye = torch.eye(N, dtype=torch.bool)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    logp = torch.log_softmax(s.masked_fill(eye, -math.inf), dim=1)
    n = pos.sum(1)
    if variant == "out":
        ell = -(logp.masked_fill(~pos, 0)).sum(1) / n.clamp_min(1)
    else:
        ell = -torch.logsumexp(logp.masked_fill(~pos, -math.inf), dim=1)
    ell = torch.where(n > 0, ell, 0.0)
    return ell.sum() / (ell.float() > 0).sum()


@pytest.mark.parametrize("N, D", [(127, 8), (1000, 16), (4097, 4), (17, 1), (17, 3), (17, 50), (17, 384),
                                  (17, 768), (17, 1000)])
def test_sizes_and_dims_against_log_softmax_form(N, D):
    z = torch.randn(N, D)
    labels = torch.randint(0, 5, (N,))
    for variant in ("out", "in") if N < 4097 else ("out",):
        got = supcon_loss_reference(z, labels, 0.07, variant=variant)
        assert got.dtype == torch.float32 and got.shape == ()
        torch.testing.assert_close(got.double(), log_softmax_supcon(z, labels, 0.07, variant), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tau", [0.01, 0.07, 1.0])
def test_pml_parity(tau):
    pml = pytest.importorskip("pytorch_metric_learning.losses")
    for N, D, classes in [(65, 16, 7), (33, 5, 3), (4, 3, 3)]:
        z = torch.randn(N, D, requires_grad=True)
        labels = torch.randint(0, classes, (N,))
        ours = supcon_loss_reference(z, labels, tau)
        (g_ours,) = torch.autograd.grad(ours, z)
        theirs = pml.SupConLoss(temperature=tau)(z, labels)
        (g_theirs,) = torch.autograd.grad(theirs, z)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(g_ours, g_theirs, rtol=1e-4, atol=1e-5)
    # the gate cases agree too
    for labels in (torch.zeros(6, dtype=torch.long), torch.arange(6)):
        z = torch.randn(6, 3)
        assert supcon_loss_reference(z, labels, tau).item() == pml.SupConLoss(temperature=tau)(z, labels).item() == 0


def test_pml_parity_underflow_count():
    pml = pytest.importorskip("pytorch_metric_learning.losses")
    z = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1, 2])
    torch.testing.assert_close(supcon_loss_reference(z, labels, 0.001),
                               pml.SupConLoss(temperature=0.001)(z, labels))


# ---------------------------------------------------------------------------------------------
# Gate and edge cases (§2 "Edge cases that must be tested")


@pytest.mark.parametrize("variant", ["out", "in"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", ["N=1", "all distinct", "single class"])
def test_gate_gives_connected_zero(variant, reduction, case):
    N = 1 if case == "N=1" else 6
    labels = {"N=1": torch.tensor([3]), "all distinct": torch.arange(N), "single class": torch.full((N,), 2)}[case]
    z = torch.randn(N, 4)
    out = supcon_loss_reference(z, labels, 0.07, variant=variant, reduction=reduction)
    assert out.shape == ((N,) if reduction == "none" else ())
    assert_zero_with_zero_grad(lambda t: supcon_loss_reference(t, labels, 0.07, variant=variant,
                                                               reduction=reduction), z)


def test_mixed_case_only_anchors_with_positives_count():
    z = torch.randn(4, 6, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 2])
    per = supcon_loss_reference(z, labels, 0.1, reduction="none")
    assert per[2].item() == 0 and per[3].item() == 0 and per[0].item() > 0 and per[1].item() > 0
    torch.testing.assert_close(supcon_loss_reference(z, labels, 0.1), (per[0] + per[1]) / 2)


def test_zero_row_is_finite_with_zero_gradient():
    z = torch.randn(8, 5)
    z[3] = 0
    z.requires_grad_(True)
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 2, 2])
    for variant in ("out", "in"):
        out = supcon_loss_reference(z, labels, 0.07, variant=variant)
        (g,) = torch.autograd.grad(out, z)
        assert torch.isfinite(out) and torch.isfinite(g).all()
        assert torch.equal(g[3], torch.zeros(5))
        # its similarities are 0: same as the loop, which normalises the zero row to zero
        expected = reduce_loop(*loop_supcon(z.detach(), labels, 0.07, variant), labels, "pml")
        torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_small_tau_does_not_overflow():
    z = torch.randn(40, 8)
    z[1] = z[0]  # logits reach 1/τ = 100
    labels = torch.randint(0, 3, (40,))
    labels[1] = labels[0]
    for variant in ("out", "in"):
        z_ = z.clone().requires_grad_(True)
        out = supcon_loss_reference(z_, labels, 0.01, variant=variant)
        (g,) = torch.autograd.grad(out, z_)
        assert torch.isfinite(out) and torch.isfinite(g).all()


def test_in_variant_all_others_positive_is_zero():
    # every anchor's positives are all other samples (a single class) → 0 with a zero gradient
    assert_zero_with_zero_grad(lambda t: supcon_loss_reference(t, torch.ones(5, dtype=torch.long), 0.1,
                                                               variant="in"), torch.randn(5, 3))


def test_label_dtypes_agree():
    z = torch.randn(10, 4)
    labels = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1, 1, 0])
    expected = supcon_loss_reference(z, labels, 0.2)
    torch.testing.assert_close(supcon_loss_reference(z, labels.int(), 0.2), expected)
    torch.testing.assert_close(supcon_loss_reference(z, labels.bool(), 0.2), expected)
    torch.testing.assert_close(supcon_loss_reference(z, labels * 1000 - 7, 0.2), expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("variant", ["out", "in"])
def test_low_precision_inputs_give_fp32(dtype, variant):
    z = torch.randn(65, 16).to(dtype).requires_grad_(True)
    labels = torch.randint(0, 5, (65,))
    out = supcon_loss_reference(z, labels, 0.07, variant=variant)
    assert out.dtype == torch.float32
    z32 = z.detach().float().requires_grad_(True)
    expected = supcon_loss_reference(z32, labels, 0.07, variant=variant)
    torch.testing.assert_close(out, expected, rtol=5e-2, atol=1e-2)
    (g,) = torch.autograd.grad(out, z)
    (g32,) = torch.autograd.grad(expected, z32)
    assert g.dtype == dtype
    torch.testing.assert_close(g.float(), g32, rtol=5e-2, atol=1e-2)
    assert supcon_loss_reference(z, labels, 0.07, variant=variant, reduction="none").dtype == torch.float32


def test_nan_propagates_and_check_finite(monkeypatch):
    z = torch.randn(6, 3)
    z[2, 1] = float("nan")
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    assert torch.isnan(supcon_loss_reference(z, labels, 0.1))
    assert torch.isnan(supcon_loss_reference(z, labels, 0.1, variant="in"))
    with pytest.raises(ValueError, match=r"msa_fast.ops.supcon_loss: z has 1 non-finite entries"):
        supcon_loss_reference(z, labels, 0.1, check_finite=True)
    monkeypatch.setenv("MSA_FAST_CHECK_FINITE", "1")
    with pytest.raises(ValueError, match="non-finite"):
        supcon_loss_reference(z, labels, 0.1)
    monkeypatch.delenv("MSA_FAST_CHECK_FINITE")
    # NaN also reaches a gated (zero) result: 0 · Σz is NaN (§0.5)
    assert torch.isnan(supcon_loss_reference(z, torch.arange(6), 0.1))


@pytest.mark.parametrize("variant", ["out", "in"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_fp64(variant, reduction):
    z = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3, 4])
    fn = lambda t: supcon_loss_reference(t, labels, 0.3, variant=variant, reduction=reduction)  # noqa: E731
    assert fn(z).dtype == torch.float64
    assert torch.autograd.gradcheck(fn, (z,))
    assert torch.autograd.gradcheck(lambda t: supcon_loss_reference(t, labels, 0.3, variant=variant,
                                                                    reduction=reduction, normalize=False), (z,))


# ---------------------------------------------------------------------------------------------
# Errors


def test_errors():
    with pytest.raises(ValueError, match=r"^msa_fast\.ops\.supcon_loss: z is empty \(shape \(0, 128\)\)$"):
        supcon_loss_reference(torch.randn(0, 128), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"z is empty \(shape \(4, 0\)\)"):
        supcon_loss_reference(torch.randn(4, 0), torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match="discretise"):
        supcon_loss_reference(torch.randn(4, 3), torch.randn(4))
    with pytest.raises(ValueError, match=r"labels must be \[N\] = \[4\], got shape \(5,\)"):
        supcon_loss_reference(torch.randn(4, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        supcon_loss_reference(torch.randn(4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match="floating"):
        supcon_loss_reference(torch.zeros(4, 3, dtype=torch.long), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="variant"):
        supcon_loss_reference(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), variant="both")
    with pytest.raises(ValueError, match="reduction"):
        supcon_loss_reference(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), reduction="mean")
    with pytest.raises(ValueError, match="temperature"):
        supcon_loss_reference(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), 0.0)


def test_public_reference_name():
    assert reference.supcon_loss is supcon_loss_reference


# ==================================================================================================
# Fused backends (C++ CPU on the engine of ops.md §1; Triton under the interpreter; CUDA on a GPU)
# against the reference: values, gradients, edge cases, opcheck, torch.compile.

import msa_fast.ops as ops  # noqa: E402
from tests.ops.backends import fast_backends  # noqa: E402

FUSED = fast_backends("supcon_rows", "supcon_rows_triton")
FP32_TOL = dict(rtol=1e-5, atol=1e-6)
FP32_GRAD_TOL = dict(rtol=1e-4, atol=1e-5)


def fused_and_reference(z, labels, backend, **kw):
    z1 = z.detach().clone().requires_grad_()
    z2 = z.detach().clone().requires_grad_()
    a = ops.supcon_loss(z1, labels, backend=backend, **kw)
    b = supcon_loss_reference(z2, labels, **kw)
    w = torch.randn_like(a) if a.dim() else torch.tensor(1.7)
    (ga,) = torch.autograd.grad((a * w).sum(), z1)
    (gb,) = torch.autograd.grad((b * w).sum(), z2)
    return a, b, ga, gb


@pytest.mark.parametrize("backend, device", FUSED)
@pytest.mark.parametrize("N, D", [(2, 3), (3, 1), (17, 50), (63, 8), (65, 33), (127, 16)])
@pytest.mark.parametrize("variant", ["out", "in"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_fused_matches_reference(backend, device, N, D, variant, reduction):
    if backend == "triton" and N > 65:
        pytest.skip("interpreter: tiny shapes only")
    z = torch.randn(N, D, device=device)
    labels = torch.randint(0, max(2, N // 5), (N,), device=device)
    a, b, ga, gb = fused_and_reference(z, labels, backend, variant=variant, reduction=reduction)
    assert a.dtype == torch.float32
    torch.testing.assert_close(a, b, **FP32_TOL)
    torch.testing.assert_close(ga, gb, **FP32_GRAD_TOL)


@pytest.mark.parametrize("backend, device", [p for p in FUSED if p.values[0] != "triton"])
@pytest.mark.parametrize("N, D", [(1000, 384), (4097, 3), (1025, 768)])
def test_fused_large_and_odd(backend, device, N, D):
    z = torch.randn(N, D, device=device)
    labels = torch.randint(0, 7, (N,), device=device)
    for variant in ("out", "in"):
        a, b, ga, gb = fused_and_reference(z, labels, backend, variant=variant)
        torch.testing.assert_close(a, b, **FP32_TOL)
        torch.testing.assert_close(ga, gb, **FP32_GRAD_TOL)


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("tau", [0.02, 0.025, 0.07])
def test_cpp_engines_across_thread_counts(threads, tau):
    """csrc/cpu/supcon.cpp has two engines: the symmetric one (upper-triangle slabs, fixed shift 1/τ; used
    when normalize=True and τ ≥ 0.025) and the row-slab one (running max; τ = 0.02 here). Both, at 1 and 3
    threads (one block vs three triangular blocks spread over work items), in fp64 against the reference."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        z = torch.randn(300, 16, dtype=torch.float64)
        z[5] = z[7]  # duplicate features
        labels = torch.randint(0, 6, (300,))
        for variant in ("out", "in"):
            a, b, ga, gb = fused_and_reference(z, labels, "cpp", temperature=tau, variant=variant,
                                               reduction="none")
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(ga, gb, rtol=1e-9, atol=1e-10)
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("backend, device", FUSED)
@pytest.mark.parametrize("tau", [0.01, 0.07, 1.0])
@pytest.mark.parametrize("normalize", [True, False])
def test_fused_temperatures_and_raw_dots(backend, device, tau, normalize):
    z = torch.randn(33, 12, device=device) * (0.3 if not normalize else 1.0)
    labels = torch.randint(0, 4, (33,), device=device)
    a, b, ga, gb = fused_and_reference(z, labels, backend, temperature=tau, normalize=normalize)
    torch.testing.assert_close(a, b, **FP32_TOL)
    torch.testing.assert_close(ga, gb, **FP32_GRAD_TOL)


@pytest.mark.parametrize("backend, device", FUSED)
@pytest.mark.parametrize("case", ["N=1", "all distinct", "single class"])
def test_fused_gate_zero_with_zero_gradient(backend, device, case):
    N = 1 if case == "N=1" else 9
    labels = {"N=1": torch.zeros(1), "all distinct": torch.arange(9), "single class": torch.zeros(9)}[case]
    z = torch.randn(N, 5, device=device, requires_grad=True)
    for reduction in REDUCTIONS:
        loss = ops.supcon_loss(z, labels.long().to(device), reduction=reduction, backend=backend)
        assert (loss == 0).all()
        (grad,) = torch.autograd.grad(loss.sum(), z)
        assert grad is not None and (grad == 0).all()


@pytest.mark.parametrize("backend, device", FUSED)
def test_fused_mixed_case_and_zero_row(backend, device):
    z = torch.randn(4, 6, device=device)
    z[2] = 0
    labels = torch.tensor([0, 0, 1, 2], device=device)
    a, b, ga, gb = fused_and_reference(z, labels, backend, reduction="none")
    torch.testing.assert_close(a, b, **FP32_TOL)
    assert a[2:].tolist() == [0.0, 0.0] and (ga[2] == 0).all()
    torch.testing.assert_close(ga, gb, **FP32_GRAD_TOL)


@pytest.mark.parametrize("backend, device", FUSED)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_low_precision(backend, device, dtype):
    z = torch.randn(40, 24, device=device).to(dtype)
    labels = torch.randint(0, 5, (40,), device=device)
    a, b, ga, gb = fused_and_reference(z, labels, backend)
    assert a.dtype == torch.float32 and ga.dtype == dtype
    torch.testing.assert_close(a, b, rtol=5e-2, atol=1e-2)
    torch.testing.assert_close(ga.float(), gb.float(), rtol=5e-2, atol=1e-2)


@pytest.mark.parametrize("backend, device", FUSED)
def test_fused_nan_row_propagates(backend, device):
    z = torch.randn(10, 4, device=device)
    z[3, 1] = float("nan")
    assert ops.supcon_loss(z, torch.randint(0, 3, (10,), device=device), backend=backend).isnan()


@pytest.mark.parametrize("backend, device", [p for p in FUSED if p.values[0] != "triton"])
def test_fused_gradcheck_fp64(backend, device):
    z = torch.randn(9, 4, dtype=torch.float64, device=device, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3, 0], device=device)
    for variant in ("out", "in"):
        for reduction in ("mean_pos", "none"):
            assert torch.autograd.gradcheck(
                lambda t: ops.supcon_loss(t, labels, 0.5, variant=variant, reduction=reduction, backend=backend), (z,))


def test_fused_opcheck():
    z = torch.randn(13, 7, requires_grad=True)
    labels = torch.randint(0, 3, (13,))
    for variant_in in (False, True):
        torch.library.opcheck(torch.ops.msa_fast.supcon_rows.default, (z, labels, 0.1, variant_in, True))
    torch.library.opcheck(torch.ops.msa_fast.supcon_rows.default, (z, labels, 0.3, False, False))


def test_fused_torch_compile_fullgraph():
    def f(z, labels):
        return ops.supcon_loss(z, labels, backend="cpp") + ops.supcon_loss(z, labels, variant="in", backend="cpp")

    z = torch.randn(21, 8, requires_grad=True)
    labels = torch.randint(0, 3, (21,))
    out = torch.compile(f, fullgraph=True)(z, labels)
    (grad,) = torch.autograd.grad(out, z)
    z2 = z.detach().clone().requires_grad_()
    out2 = f(z2, labels)
    (grad2,) = torch.autograd.grad(out2, z2)
    torch.testing.assert_close(out, out2)
    torch.testing.assert_close(grad, grad2)


def test_fused_auto_and_errors():
    z = torch.randn(8, 3)
    labels = torch.randint(0, 2, (8,))
    torch.testing.assert_close(ops.supcon_loss(z, labels), ops.supcon_loss(z, labels, backend="cpp"))
    with pytest.raises(ValueError, match=r"supcon_loss: z is empty \(shape \(0, 128\)\)"):
        ops.supcon_loss(torch.randn(0, 128), torch.zeros(0, dtype=torch.long))
    with pytest.raises(TypeError, match="discretise"):
        ops.supcon_loss(z, labels.float())
    with pytest.raises(RuntimeError, match="cuda.*not available"):
        ops.supcon_loss(z, labels, backend="cuda")
    with pytest.raises(ValueError, match=r"labels must be \[N\]"):
        torch.ops.msa_fast.supcon_rows(z, labels[:3], 0.1, False, True)
