"""Triton per-row contrastive kernels (kernels/supcon.py, info_nce.py, uniform.py, hycon.py, mgcl.py) under the Triton
interpreter.

Each launcher's per-row statistics and gradients are compared with the pure-PyTorch references
(``supcon_per_anchor_reference``, ``info_nce_reference``, dense ``torch.logsumexp``; for hycon the seven masked row
sums of the dense 3K × 3K Gram matrix, for mgcl the LSEs over the reference's literal pair lists ``mgcl_pair_sets``
grouped by anchor row), evaluated in fp64 on the same inputs, gradients through autograd with random upstream
gradients of every statistic (ops.md §2–§6, §10).

Tolerances are those of ops.md §10 (fp32 IEEE: values rtol 1e-5 / atol 1e-6, gradients rtol 1e-4 / atol 1e-5;
fp16/bf16 against the fp32 reference on the same rounded inputs: 5e-2 / 1e-2), with the absolute part scaled by
the magnitude of the quantity: an fp32 logit of size 1/τ = 100 carries an absolute rounding error of ~1e-5 that
no fp32 implementation (the fp32 reference included) avoids, and the same holds for gradients of size 100 (and,
for hycon's sums, for a sum whose terms add up to Σ|term| in magnitude).

Shapes are tiny and odd (N ∈ {1, 2, 3, 17, 65}, D ∈ {1, 3, 50}; hycon 3K ∈ {3, 6, 33, 129}, mgcl B ∈ {1, 2, 5, 33}
rows per view); the first autotune config (16 × 16 tiles, 16-wide D chunks, 32-wide feature chunks in backward; for
hycon and mgcl 32 × 32 tiles and 64-wide chunks) makes them ragged and multi-tile, and a test forces the other
tile configs. A subprocess without the interpreter checks that every launcher traces under make_fx (torch ops + one
``triton_kernel_wrapper_mutation`` per launch) and that the kernels compile for sm_80.
"""

import os

# Before triton (and the kernels) are imported: interpreter, IEEE dots, one autotune config.
os.environ["TRITON_INTERPRET"] = "1"
os.environ["MSA_FAST_INPUT_PRECISION"] = "ieee"
os.environ["MSA_FAST_AUTOTUNE"] = "0"

import importlib  # noqa: E402
import math  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from msa_fast.ops._contrastive import normalize_rows  # noqa: E402
from msa_fast.ops.info_nce import info_nce_reference  # noqa: E402
from msa_fast.ops.mgcl import _segment_logsumexp, mgcl_pair_sets, pair_weights  # noqa: E402
from msa_fast.ops.supcon import supcon_loss_reference, supcon_per_anchor_reference  # noqa: E402

pytestmark = [pytest.mark.triton,
              # NaN-propagation cases: the interpreter's numpy max reductions warn on all-NaN rows.
              pytest.mark.filterwarnings("ignore:All-NaN slice encountered:RuntimeWarning")]

REPO = Path(__file__).resolve().parents[2]


def _kernels(name):
    """``msa_fast.kernels.<name>`` once the package is wired, else ``kernels.<name>`` from the repo root."""
    try:
        return importlib.import_module(f"msa_fast.kernels.{name}")
    except ImportError:
        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        return importlib.import_module(f"kernels.{name}")


ksup = _kernels("supcon")
knce = _kernels("info_nce")
kuni = _kernels("uniform")
khy = _kernels("hycon")
kmg = _kernels("mgcl")

F64 = torch.float64
SHAPES = [(2, 3), (3, 1), (17, 50), (65, 3)]
HALF = [torch.float16, torch.bfloat16]


def _close(got, want, rtol, atol, what):
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    torch.testing.assert_close(got.double(), want.double(), rtol=rtol, atol=atol, equal_nan=True,
                               msg=lambda m: f"{what}: {m}")


def _value_tol(dtype, scale):
    """(rtol, atol) of a forward value whose inputs (logits) have magnitude ``scale``."""
    if dtype in HALF:
        return 5e-2, 1e-2 * max(1.0, scale)
    return 1e-5, 1e-6 * max(1.0, scale)


def _grad_tol(dtype, want):
    scale = max(1.0, float(want.abs().max())) if want.numel() else 1.0
    if dtype in HALF:
        return 5e-2, 1e-2 * scale
    return 1e-4, 1e-5 * scale


def _feats(n, d, g, normalize, dtype=torch.float32):
    """Rows of norm ≈ 1 when not normalising (raw logits stay ≈ 1/τ), arbitrary scales otherwise."""
    x = torch.randn(n, d, generator=g, dtype=F64)
    x = x * 3 if normalize else x / math.sqrt(d)
    return x.to(dtype)


def _ref_dtype(dtype):
    """fp64 truth for fp32/fp64 inputs; fp32 on the same rounded inputs for fp16/bf16 (ops.md §10)."""
    return torch.float32 if dtype in HALF else F64


# ----------------------------------------------------------------------------------------------
# supcon


def _supcon_stats(z, labels, tau, variant_in, normalize):
    """Dense (lse_all, pos_stat, n_pos) and the logit scale max|s|, in z's dtype."""
    u = normalize_rows(z) if normalize else z
    s = u @ u.T / tau
    n = z.shape[0]
    eye = torch.eye(n, dtype=torch.bool)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    lse_all = torch.logsumexp(s.masked_fill(eye, float("-inf")), 1)
    if variant_in:
        pos_stat = torch.logsumexp(s.masked_fill(~pos, float("-inf")), 1)
    else:
        pos_stat = torch.where(pos, s, 0).sum(1)
    return lse_all, pos_stat, pos.sum(1).to(s.dtype), float(s.abs().max())


def _check_supcon(z, labels, tau, variant_in, normalize, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = z.shape[0]
    grad_rows = torch.randn(n, generator=g, dtype=F64)
    rd = _ref_dtype(z.dtype)
    what = f"supcon N={n} D={z.shape[1]} {z.dtype} tau={tau} in={variant_in} normalize={normalize}"

    loss, lse, ps, npos = ksup.supcon_rows_forward(z, labels, tau, variant_in, normalize)
    out_dtype = F64 if z.dtype == F64 else torch.float32
    for t in (loss, lse, ps, npos):
        assert t.dtype == out_dtype and t.shape == (n,), what
    dz = ksup.supcon_rows_backward(grad_rows.to(out_dtype), z, labels, lse, ps, npos, tau, variant_in, normalize)
    assert dz.dtype == z.dtype and dz.shape == z.shape, what

    zr = z.detach().to(rd).requires_grad_()
    lse_w, ps_w, n_w, scale = _supcon_stats(zr.detach(), labels, tau, variant_in, normalize)
    rtol, atol = _value_tol(z.dtype, scale)
    _close(npos, n_w, 0, 0, what + " n_pos")
    _close(lse, lse_w, rtol, atol, what + " lse_all")
    _close(ps, ps_w, rtol, atol * max(1.0, float(n_w.max())), what + " pos_stat")  # 'out': a sum of n_i logits
    if n == 1:  # no pairs: lse_all = −inf, no positives, loss 0 and no gradient
        assert lse.item() == float("-inf") and loss.item() == 0 and npos.item() == 0
        assert torch.equal(dz, torch.zeros_like(dz))
        return loss, dz
    ref_loss, _ = supcon_per_anchor_reference(normalize_rows(zr) if normalize else zr, labels, tau,
                                              "in" if variant_in else "out")
    _close(loss, ref_loss.detach(), rtol, atol, what + " loss_rows")
    (ref_loss * grad_rows.to(rd)).sum().backward()
    _close(dz, zr.grad, *_grad_tol(z.dtype, zr.grad), what + " dz")
    return loss, dz


def _labels(n, g, kind):
    if kind == "single":
        return torch.full((n,), 7, dtype=torch.int64)
    labels = torch.randint(-2, max(1, n // 4) + 1, (n,), generator=g)
    labels[-1] = 1000  # a singleton (no positive)
    return labels


@pytest.mark.parametrize("shape", SHAPES)
def test_supcon_rows_matrix(shape):
    n, d = shape
    g = torch.Generator().manual_seed(n * 100 + d)
    taus = [0.01, 0.07, 1.0]
    k = 0
    for variant_in in (False, True):
        for normalize in (True, False):
            z = _feats(n, d, g, normalize)
            _check_supcon(z, _labels(n, g, "mixed"), taus[k % 3], variant_in, normalize, seed=k)
            k += 1


@pytest.mark.parametrize("variant_in", [False, True])
def test_supcon_rows_single_class_singletons_and_n1(variant_in):
    g = torch.Generator().manual_seed(1)
    # A single class: every anchor's positives are all the others.
    z = _feats(17, 50, g, True)
    loss, _ = _check_supcon(z, _labels(17, g, "single"), 0.07, variant_in, True)
    if variant_in:  # 'in' with P(i) = A(i): ℓ_i = 0 up to rounding
        assert loss.abs().max() < 1e-5
    # All labels distinct: no positives, zero loss rows and zero gradient.
    loss, dz = _check_supcon(_feats(3, 3, g, True), torch.tensor([4, 5, 6]), 0.07, variant_in, True)
    assert torch.equal(loss, torch.zeros(3)) and torch.equal(dz, torch.zeros_like(dz))
    # PML's mixed case: only anchors 0 and 1 count; int32 and bool labels.
    z = _feats(4, 3, g, True)
    loss, _ = _check_supcon(z, torch.tensor([0, 0, 1, 2], dtype=torch.int32), 0.07, variant_in, True)
    assert (loss[:2] > 0).all() and torch.equal(loss[2:], torch.zeros(2))
    _check_supcon(z, torch.tensor([True, False, True, True]), 0.07, variant_in, False)
    # N = 1.
    _check_supcon(_feats(1, 3, g, True), torch.tensor([3]), 0.07, variant_in, True)


def test_supcon_rows_match_gated_reference():
    """When the batch gate passes, loss_rows are supcon_loss_reference(..., reduction='none')."""
    g = torch.Generator().manual_seed(2)
    z = _feats(17, 50, g, True)
    labels = _labels(17, g, "mixed")
    for variant_in in (False, True):
        loss, _, _, _ = ksup.supcon_rows_forward(z, labels, 0.07, variant_in, True)
        ref = supcon_loss_reference(z, labels, 0.07, variant="in" if variant_in else "out", reduction="none")
        _close(loss, ref, 1e-5, 1e-5, f"gated reference in={variant_in}")


@pytest.mark.parametrize("variant_in", [False, True])
def test_supcon_rows_zero_row_and_nan(variant_in):
    g = torch.Generator().manual_seed(3)
    labels = _labels(17, g, "mixed")
    z = _feats(17, 50, g, True)
    z[4] = 0
    loss, dz = _check_supcon(z, labels, 0.07, variant_in, True)
    assert torch.isfinite(loss).all() and torch.equal(dz[4], torch.zeros(50))
    # A NaN row: every anchor's denominator sees it, so every lse_all and every loss row of an anchor with a
    # positive is NaN (as in the reference); anchors without a positive stay exactly 0.
    z[9, 3] = float("nan")
    for normalize in (True, False):
        loss, lse, _, npos = ksup.supcon_rows_forward(z, labels, 0.07, variant_in, normalize)
        has = npos > 0
        assert torch.isnan(lse).all() and torch.isnan(loss[has]).all() and not has.all()
        assert torch.equal(loss[~has], torch.zeros(int((~has).sum())))
        ref, _ = supcon_per_anchor_reference(normalize_rows(z) if normalize else z, labels, 0.07,
                                             "in" if variant_in else "out")
        assert torch.isnan(ref[has]).all()


@pytest.mark.parametrize("dtype", HALF + [F64])
def test_supcon_rows_half_and_fp64(dtype):
    g = torch.Generator().manual_seed(4)
    labels = _labels(17, g, "mixed")
    for variant_in in (False, True):
        z = _feats(17, 50, g, True, dtype)
        z[5] = 0
        _check_supcon(z, labels, 0.07, variant_in, True)
    _check_supcon(_feats(17, 50, g, False, dtype), labels, 0.1, False, False)


# ----------------------------------------------------------------------------------------------
# info_nce


def _check_info_nce(q, k, tau, queries, normalize, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = q.shape[0]
    grad_rows = torch.randn(n, generator=g, dtype=F64)
    rd = _ref_dtype(q.dtype)
    same = k is q
    what = f"info_nce N={n} D={q.shape[1]} {q.dtype} tau={tau} queries={queries} normalize={normalize} same={same}"

    loss, lse = knce.info_nce_rows_forward(q, k, tau, queries, normalize)
    out_dtype = F64 if q.dtype == F64 else torch.float32
    assert loss.dtype == lse.dtype == out_dtype and loss.shape == lse.shape == (n,), what
    dq, dk = knce.info_nce_rows_backward(grad_rows.to(out_dtype), q, k, lse, tau, queries, normalize)
    assert dq.dtype == dk.dtype == q.dtype and dq.shape == dk.shape == q.shape, what

    qr = q.detach().to(rd).requires_grad_()
    kr = qr if same else k.detach().to(rd).requires_grad_()
    with torch.no_grad():
        qh = normalize_rows(qr) if normalize else qr
        kh = normalize_rows(kr) if normalize else kr
        a = qh @ kh.T / tau
        b = qh @ qh.T / tau
        if queries:
            eye = torch.eye(n, dtype=torch.bool)
            lse_w = torch.logsumexp(torch.where(eye, (qh * kh).sum(1)[:, None] / tau, b), 1)
        else:
            lse_w = torch.logsumexp(a, 1)
        scale = float(torch.cat([a.flatten(), b.flatten()]).abs().max())
    rtol, atol = _value_tol(q.dtype, scale)
    _close(lse, lse_w, rtol, atol, what + " lse")
    ref = info_nce_reference(qr, kr, tau, "queries" if queries else "keys", normalize=normalize, reduction="none")
    _close(loss, ref.detach(), rtol, atol, what + " loss_rows")
    (ref * grad_rows.to(rd)).sum().backward()
    if same:
        _close(dq.to(rd) + dk.to(rd), qr.grad, *_grad_tol(q.dtype, qr.grad), what + " dq + dk")
    else:
        _close(dq, qr.grad, *_grad_tol(q.dtype, qr.grad), what + " dq")
        _close(dk, kr.grad, *_grad_tol(q.dtype, kr.grad), what + " dk")
    return loss, dq, dk


@pytest.mark.parametrize("shape", SHAPES)
def test_info_nce_rows_matrix(shape):
    n, d = shape
    g = torch.Generator().manual_seed(n * 100 + d + 1)
    taus = [0.05, 0.1, 0.7, 0.01]
    k = 0
    for queries in (False, True):
        for normalize in (True, False):
            q, kk = _feats(n, d, g, normalize), _feats(n, d, g, normalize)
            _check_info_nce(q, kk, taus[k % 4], queries, normalize, seed=k)
            k += 1


@pytest.mark.parametrize("queries", [False, True])
def test_info_nce_rows_edge_cases(queries):
    g = torch.Generator().manual_seed(5)
    # N = 1: a single-term softmax, exactly 0; a zero gradient up to the rounding of π_ii − 1 (the column-owned
    # 'keys' launch rebuilds a_ii as k̂·q̂, not bit-identical to the forward's q̂·k̂).
    q = _feats(1, 3, g, True)
    loss, dq, dk = _check_info_nce(q, _feats(1, 3, g, True), 0.1, queries, True)
    assert loss.item() == 0 and dq.abs().max() < 1e-5 and dk.abs().max() < 1e-5
    # q is k; identical rows; a zero row.
    q = _feats(17, 50, g, True)
    _check_info_nce(q, q, 0.1, queries, True)
    q[3] = q[7]
    k = _feats(17, 50, g, True)
    k[2] = 0
    _, _, dk = _check_info_nce(q, k, 0.1, queries, True)
    assert torch.equal(dk[2], torch.zeros(50))
    # NaN in row r of q: every row with 'queries' (q̂_r is everyone's negative), row r only with 'keys';
    # NaN in row r of k: row r only with 'queries', every row with 'keys'.
    qn = q.clone()
    qn[4, 0] = float("nan")
    loss, _ = knce.info_nce_rows_forward(qn, k, 0.1, queries, True)
    ref = info_nce_reference(qn, k, 0.1, "queries" if queries else "keys", reduction="none")
    assert torch.equal(torch.isnan(loss), torch.isnan(ref))
    assert torch.isnan(loss).sum() == (17 if queries else 1)
    kn = k.clone()
    kn[4, 0] = float("nan")
    loss, _ = knce.info_nce_rows_forward(q, kn, 0.1, queries, False)
    assert torch.isnan(loss).sum() == (1 if queries else 17) and torch.isnan(loss[4])


@pytest.mark.parametrize("dtype", HALF + [F64])
def test_info_nce_rows_half_and_fp64(dtype):
    g = torch.Generator().manual_seed(6)
    for queries in (False, True):
        q, k = _feats(17, 50, g, True, dtype), _feats(17, 50, g, True, dtype)
        _check_info_nce(q, k, 0.1, queries, True)
    q, k = _feats(17, 50, g, False, dtype), _feats(17, 50, g, False, dtype)
    _check_info_nce(q, k, 0.1, True, False)


# ----------------------------------------------------------------------------------------------
# uniform


def _check_uniform(p, gg, kappa, normalize, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = p.shape[0]
    grad_rows = torch.randn(n, generator=g, dtype=F64)
    rd = _ref_dtype(p.dtype)
    same = gg is p
    what = f"uniform n={n} D={p.shape[1]} {p.dtype} kappa={kappa} normalize={normalize} same={same}"

    lse = kuni.uniform_rows_forward(p, gg, kappa, normalize)
    out_dtype = F64 if p.dtype == F64 else torch.float32
    assert lse.dtype == out_dtype and lse.shape == (n,), what
    dp, dg = kuni.uniform_rows_backward(grad_rows.to(out_dtype), p, gg, lse, kappa, normalize)
    assert dp.dtype == dg.dtype == p.dtype and dp.shape == dg.shape == p.shape, what

    pr = p.detach().to(rd).requires_grad_()
    gr = pr if same else gg.detach().to(rd).requires_grad_()
    ph = normalize_rows(pr) if normalize else pr
    gh = normalize_rows(gr) if normalize else gr
    neg_d2 = -kappa * ((ph[:, None, :] - gh[None, :, :]) ** 2).sum(-1)  # direct differences, as the reference
    eye = torch.eye(n, dtype=torch.bool)
    ref = torch.logsumexp(neg_d2.masked_fill(eye, float("-inf")), 1)
    if n == 1:
        assert lse.item() == float("-inf")
        assert torch.equal(dp, torch.zeros_like(dp)) and torch.equal(dg, torch.zeros_like(dg))
        return lse, dp, dg
    # The fused expansion of d² loses ~eps·(‖p̂‖² + ‖ĝ‖²)·κ absolutely (ops.md §10: atol 1e-5 when normalised).
    norms = float((ph.detach() ** 2).sum(1).max() + (gh.detach() ** 2).sum(1).max())
    rtol, atol = _value_tol(p.dtype, max(kappa * norms, float(neg_d2.detach().abs().max())))
    _close(lse, ref.detach(), rtol, max(atol, 1e-5 if p.dtype not in HALF else atol), what + " lse_rows")
    (ref * grad_rows.to(rd)).sum().backward()
    if same:
        _close(dp.to(rd) + dg.to(rd), pr.grad, *_grad_tol(p.dtype, pr.grad), what + " dp + dg")
    else:
        _close(dp, pr.grad, *_grad_tol(p.dtype, pr.grad), what + " dp")
        _close(dg, gr.grad, *_grad_tol(p.dtype, gr.grad), what + " dg")
    return lse, dp, dg


@pytest.mark.parametrize("shape", SHAPES)
def test_uniform_rows_matrix(shape):
    n, d = shape
    g = torch.Generator().manual_seed(n * 100 + d + 2)
    k = 0
    for normalize in (True, False):
        for kappa in (2.0, 100.0 if normalize else 0.0):
            p, gg = _feats(n, d, g, normalize), _feats(n, d, g, normalize)
            _check_uniform(p, gg, kappa, normalize, seed=k)
            k += 1


def test_uniform_rows_edge_cases():
    g = torch.Generator().manual_seed(7)
    # n = 1: LSE over ∅ = −inf, zero gradient; κ = 0: LSE of zeros = log(n − 1) exactly.
    _check_uniform(_feats(1, 3, g, True), _feats(1, 3, g, True), 2.0, True)
    p, gg = _feats(17, 50, g, True), _feats(17, 50, g, True)
    lse, _, _ = _check_uniform(p, gg, 0.0, True)
    assert torch.equal(lse, torch.full((17,), math.log(16)))
    # g is p (the wang_isola form), identical rows across the sets (d² = 0: the clamp's edge), a zero row.
    _check_uniform(p, p, 2.0, True)
    gg[5] = p[3]
    p[8] = 0
    _check_uniform(p, gg, 2.0, True)
    pu, gu = _feats(17, 50, g, False), _feats(17, 50, g, False)
    gu[5] = pu[3]
    pu[8] = 0
    _check_uniform(pu, gu, 2.0, False)
    # NaN in row r of p makes row r NaN; NaN in row r of g makes every other row NaN.
    pn = p.clone()
    pn[4, 1] = float("nan")
    assert torch.isnan(kuni.uniform_rows_forward(pn, gg, 2.0, True)).nonzero().flatten().tolist() == [4]
    gn = gg.clone()
    gn[4, 1] = float("nan")
    assert torch.isnan(kuni.uniform_rows_forward(p, gn, 2.0, False)).nonzero().flatten().tolist() == (
        [i for i in range(17) if i != 4])


@pytest.mark.parametrize("dtype", HALF + [F64])
def test_uniform_rows_half_and_fp64(dtype):
    g = torch.Generator().manual_seed(8)
    p, gg = _feats(17, 50, g, True, dtype), _feats(17, 50, g, True, dtype)
    _check_uniform(p, gg, 2.0, True)
    _check_uniform(p, gg, 2.0, False)


# ----------------------------------------------------------------------------------------------
# hycon (kernels/hycon.py): the seven per-row pair sums of msa_fast::hycon_rows and their gradient


def _hycon_stats(x, classes, alpha, transform, tau):
    """Dense ``stats [3K, 7]`` (the layout of msa_fast::hycon_rows) and the per-column scale Σ|term| (for atol)."""
    K = x.shape[0] // 3
    u = normalize_rows(x)
    s = u @ u.T
    m = torch.arange(3).repeat_interleave(K)
    k = torch.arange(K).repeat(3)
    c = classes[k]
    same_view = m[:, None] == m[None, :]
    kept = (c >= 0)[:, None] & (c >= 0)[None, :]
    same_cls = c[:, None] == c[None, :]
    pos = kept & same_cls & (k[:, None] != k[None, :])
    neg = kept & ~same_cls
    scl = (k[:, None] == k[None, :]) & ~same_view
    f = {"cos": s, "cos01": (1 + s) / 2, "exp_tau": torch.exp(s / tau)}[transform]
    terms = [(pos & same_view, f), (neg & same_view, f), (pos & same_view, (s - 1) ** 2),
             (pos & ~same_view, f), (neg & ~same_view, f), (pos & ~same_view, (s - alpha) ** 2),
             (scl, (s - alpha) ** 2)]
    stats = torch.stack([torch.where(mask, t, 0).sum(1) for mask, t in terms], 1)
    scale = torch.stack([torch.where(mask, t, 0).abs().sum(1).max() for mask, t in terms]).detach()
    return stats, scale.clamp_min(1.0)


def _check_hycon(x, classes, alpha=0.8, transform="cos", tau=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    grad_stats = torch.randn(n, 7, generator=g, dtype=F64)
    rd = _ref_dtype(x.dtype)
    what = f"hycon K={n // 3} D={x.shape[1]} {x.dtype} {transform} alpha={alpha} tau={tau}"

    stats = khy.hycon_rows_forward(x, classes, alpha, transform, tau)
    out_dtype = F64 if x.dtype == F64 else torch.float32
    assert stats.dtype == out_dtype and stats.shape == (n, 7), what
    dx = khy.hycon_rows_backward(grad_stats.to(out_dtype), x, classes, alpha, transform, tau)
    assert dx.dtype == x.dtype and dx.shape == x.shape, what

    xr = x.detach().to(rd).requires_grad_()
    want, scale = _hycon_stats(xr, classes, alpha, transform, tau)
    rtol, atol = _value_tol(x.dtype, 1.0)
    for q in range(7):
        _close(stats[:, q], want[:, q].detach(), rtol, atol * float(scale[q]), f"{what} stat {q}")
    (want * grad_stats.to(rd)).sum().backward()
    _close(dx, xr.grad, *_grad_tol(x.dtype, xr.grad), what + " dx")
    return stats, dx


def _hycon_classes(K, g):
    cls = torch.randint(0, 3, (K,), generator=g)
    cls[torch.randperm(K, generator=g)[: max(1, K // 5)]] = -1   # dropped samples
    return cls


@pytest.mark.parametrize("K, D", [(1, 3), (2, 1), (11, 50), (43, 16)])  # 3K = 3, 6, 33, 129: ragged multi-tile
def test_hycon_rows_matrix(K, D):
    g = torch.Generator().manual_seed(K * 100 + D)
    x = _feats(3 * K, D, g, True)
    cls = _hycon_classes(K, g)
    for k, (transform, alpha, tau) in enumerate([("cos", 0.8, 0.1), ("cos01", 1.0, 0.1), ("exp_tau", 0.5, 0.2)]):
        _check_hycon(x, cls, alpha, transform, tau, seed=k)


def test_hycon_rows_edge_cases():
    g = torch.Generator().manual_seed(10)
    x = _feats(3 * 7, 5, g, True)
    # no positives anywhere (every class distinct): only the negative sums and SCL are non-zero
    stats, _ = _check_hycon(x, torch.arange(7), transform="cos01")
    assert torch.equal(stats[:, [0, 2, 3, 5]], torch.zeros(21, 4))
    # a single class: no negatives; every sample dropped: only SCL
    stats, _ = _check_hycon(x, torch.zeros(7, dtype=torch.int64), transform="exp_tau", tau=0.5)
    assert torch.equal(stats[:, [1, 4]], torch.zeros(21, 2))
    stats, _ = _check_hycon(x, torch.full((7,), -1), transform="cos")
    assert torch.equal(stats[:, :6], torch.zeros(21, 6)) and (stats[:, 6] > 0).all()
    # duplicate features (s = 1 exactly across samples and views) and a zero row (s = 0, zero gradient)
    x[3] = x[5]
    x[7 + 2] = x[2]
    x[14 + 4] = 0
    _, dx = _check_hycon(x, torch.tensor([0, 1, 0, 1, 1, 0, 2]), transform="cos")
    assert torch.equal(dx[18], torch.zeros(5))


@pytest.mark.parametrize("dtype", HALF + [F64])
def test_hycon_rows_half_and_fp64(dtype):
    g = torch.Generator().manual_seed(11)
    x = _feats(3 * 13, 24, g, True, dtype)
    cls = _hycon_classes(13, g)
    _check_hycon(x, cls, 0.8, "cos", 0.1)
    _check_hycon(x, cls, 0.8, "exp_tau", 0.1)


# ----------------------------------------------------------------------------------------------
# mgcl (kernels/mgcl.py): per macro row LSE_pos and LSE_all of msa_fast::mgcl_rows and their gradient


def _mgcl_rows_ref(macro, micro, y, delta, tau, label_scale, pos_weight, neg_weight, gain, ordered6, normalize):
    """Per macro row (lse_pos, lse_all) from the reference's literal pair lists, grouped by anchor row, and the
    logit scale max|λ|."""
    sets = mgcl_pair_sets(y, delta, label_scale, "ordered6" if ordered6 else "literal3")
    F = torch.cat([macro, micro])
    Fn = normalize_rows(F) if normalize else F
    anchor, other = torch.cat([s["anchor"] for s in sets]), torch.cat([s["other"] for s in sets])
    positive = torch.cat([s["positive"] for s in sets])
    w = pair_weights(torch.cat([s["E"] for s in sets]), positive, delta, gain, pos_weight, neg_weight).to(F.dtype)
    lam = w * (Fn[anchor] * Fn[other]).sum(1) / tau
    n = macro.shape[0]
    return (_segment_logsumexp(lam[positive], anchor[positive], n), _segment_logsumexp(lam, anchor, n),
            float(lam.detach().abs().max()))


MGCL_DEFAULTS = dict(delta=0.4, tau=0.5, label_scale=3.0, pos_weight="mgcl", neg_weight="mgcl", gain=1.5,
                     ordered6=False, normalize=True)


def _check_mgcl(macro, micro, y, seed=0, **kw):
    p = {**MGCL_DEFAULTS, **kw}
    args = tuple(p[k] for k in MGCL_DEFAULTS)
    g = torch.Generator().manual_seed(seed)
    n = macro.shape[0]
    g_pos, g_all = torch.randn(n, generator=g, dtype=F64), torch.randn(n, generator=g, dtype=F64)
    rd = _ref_dtype(macro.dtype)
    what = f"mgcl B={n // 3} D={macro.shape[1]} {macro.dtype} {kw}"

    lse_pos, lse_all = kmg.mgcl_rows_forward(macro, micro, y, *args)
    out_dtype = F64 if macro.dtype == F64 else torch.float32
    assert lse_pos.dtype == lse_all.dtype == out_dtype and lse_pos.shape == lse_all.shape == (n,), what
    dmacro, dmicro = kmg.mgcl_rows_backward(g_pos.to(out_dtype), g_all.to(out_dtype), macro, micro, y, lse_pos,
                                            lse_all, *args)
    assert dmacro.dtype == dmicro.dtype == macro.dtype and dmacro.shape == dmicro.shape == macro.shape, what

    mr = macro.detach().to(rd).requires_grad_()
    ir = micro.detach().to(rd).requires_grad_()
    pos_w, all_w, scale = _mgcl_rows_ref(mr, ir, y, *args)
    rtol, atol = _value_tol(macro.dtype, scale)
    _close(lse_pos, pos_w.detach(), rtol, atol, what + " lse_pos")
    _close(lse_all, all_w.detach(), rtol, atol, what + " lse_all")
    (pos_w * g_pos.to(rd) + all_w * g_all.to(rd)).sum().backward()
    _close(dmacro, mr.grad, *_grad_tol(macro.dtype, mr.grad), what + " dmacro")
    _close(dmicro, ir.grad, *_grad_tol(macro.dtype, ir.grad), what + " dmicro")
    return lse_pos, lse_all, dmacro, dmicro


def _mgcl_feats(B, D, g, normalize=True, dtype=torch.float32):
    return _feats(3 * B, D, g, normalize, dtype), _feats(3 * B, D, g, normalize, dtype)


@pytest.mark.parametrize("B, D", [(1, 3), (2, 1), (5, 50), (33, 16)])  # 33 rows per view: two tiles, ragged
def test_mgcl_rows_matrix(B, D):
    g = torch.Generator().manual_seed(B * 100 + D + 3)
    macro, micro = _mgcl_feats(B, D, g)
    y = torch.empty(B).uniform_(-3, 3, generator=g)
    _check_mgcl(macro, micro, y, seed=0)
    _check_mgcl(macro, micro, y, seed=1, ordered6=True, pos_weight="clgsi", neg_weight="none", tau=0.03)


@pytest.mark.parametrize("pos_weight", ["mgcl", "clgsi", "none"])
def test_mgcl_rows_weights_and_options(pos_weight):
    g = torch.Generator().manual_seed(12)
    y = torch.tensor([-3.0, -2.0, -1.2, -0.4, 0.0, 0.4, 1.2, 2.0, 3.0])   # label distances at and near δ
    macro, micro = _mgcl_feats(9, 12, g)
    for k, neg_weight in enumerate(("mgcl", "clgsi", "none")):
        _check_mgcl(macro, micro, y, seed=k, pos_weight=pos_weight, neg_weight=neg_weight, ordered6=k == 1)
    macro, micro = _mgcl_feats(9, 12, g, normalize=False)
    _check_mgcl(macro, micro, y, pos_weight=pos_weight, normalize=False, gain=2.0, delta=0.2, label_scale=1.0)


def test_mgcl_rows_edge_cases():
    g = torch.Generator().manual_seed(13)
    macro, micro = _mgcl_feats(6, 7, g)
    # zero weights: label_scale 1 and labels 0.4 apart put pairs at E = δ exactly (positive, W⁺ = 0, still counted)
    y = torch.tensor([0.0, 0.4, 0.8, 1.2, 0.0, 0.4])
    _check_mgcl(macro, micro, y, tau=1.0, label_scale=1.0)
    # orthonormal features: every logit is 0, so the LSEs are logs of the row's pair counts. Row T of sample 0
    # (n_p = n_n = 1, literal3): positives C1 1 + C2 cross 2 + C2 same (T,A), (T,V) 2 + C3 1 = 6, negatives
    # C1 1 + C2 cross 2 + C3 1 = 4; row A has no same-sample C2 pair: 4 positives.
    eye = torch.eye(18)
    lp, la, _, _ = _check_mgcl(eye[:9], eye[9:], torch.tensor([0.0, 0.4, 2.0]), label_scale=1.0)
    torch.testing.assert_close(lp[[0, 6]], torch.tensor([math.log(6.0), math.log(4.0)]))
    torch.testing.assert_close(la[[0, 6]], torch.tensor([math.log(10.0), math.log(8.0)]))
    # a single class (all labels equal): no negatives, lse_all = lse_pos
    lp, la, _, _ = _check_mgcl(macro, micro, torch.full((6,), 1.3))
    torch.testing.assert_close(lp, la, rtol=0, atol=1e-6)
    # duplicate features (sim = 1 at the τ = 0.03 extremes) and a zero row (sim 0, zero gradient)
    macro[4] = macro[1]
    micro[7] = macro[7]
    micro[15] = 0
    _, _, _, dmicro = _check_mgcl(macro, micro, torch.empty(6).uniform_(-3, 3, generator=g), tau=0.03)
    assert torch.equal(dmicro[15], torch.zeros(7))


@pytest.mark.parametrize("dtype", HALF + [F64])
def test_mgcl_rows_half_and_fp64(dtype):
    g = torch.Generator().manual_seed(14)
    macro, micro = _mgcl_feats(9, 24, g, dtype=dtype)
    y = torch.empty(9).uniform_(-3, 3, generator=g)
    _check_mgcl(macro, micro, y, tau=0.1)
    _check_mgcl(macro, micro, y, tau=0.1, ordered6=True, pos_weight="clgsi")


@triton.jit
def _tanh_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, kmg._tanh(tl.load(x_ptr + offs, mask=offs < n)), mask=offs < n)


def test_mgcl_tanh_and_label_boundary():
    """The kernel's fp32 tanh against torch's, and E = |ỹ_i − ỹ_j| at the δ boundary (spec: y = [0, 0.4], scale 1)."""
    x = torch.cat([torch.linspace(-12, 12, 2001), torch.tensor([0.0, -0.0, 1e-30, 0.625, -0.625, float("nan")])])
    out = torch.empty_like(x)
    _tanh_kernel[(1,)](x, out, x.numel(), BLOCK=4096)
    torch.testing.assert_close(out, torch.tanh(x), rtol=4e-7, atol=0, equal_nan=True)
    assert out[2001] == 0 and out[2002] == 0
    # y = [0, 0.4], label_scale 1: E = float32(0.4) ≤ float32(δ) → positive, so no negatives: lse_all = lse_pos
    g = torch.Generator().manual_seed(15)
    macro, micro = _mgcl_feats(2, 4, g)
    lp, la, _, _ = _check_mgcl(macro, micro, torch.tensor([0.0, 0.4]), label_scale=1.0)
    torch.testing.assert_close(lp, la, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# The public ops with backend='triton' forced on CPU tensors (the interpreter), against the references.


def test_hycon_and_mgcl_forced_triton_backend(monkeypatch):
    from msa_fast import ops
    from msa_fast.ops import _dispatch
    from msa_fast.ops.hycon import hycon_loss_reference
    from msa_fast.ops.mgcl import mgcl_contrastive_loss_reference

    x = [torch.randn(9, 6).abs().requires_grad_() for _ in range(3)]   # 'cos' ratios: den = Σ s away from 0
    y = torch.tensor([1.0, 0.0, -1.0, 2.0, -0.5, 0.0, 3.0, -2.0, 0.5])     # exact zeros: class 1, or dropped
    assert _dispatch.resolve("hycon_loss", "triton", x[0], native_op="hycon_rows",
                             triton_op="hycon_rows_triton") == "triton"
    calls = []
    real = torch.ops.msa_fast.hycon_rows_triton

    class Spy:
        def __call__(self, *a):
            calls.append(a)
            return real(*a)

    monkeypatch.setattr(torch.ops.msa_fast, "hycon_rows_triton", Spy())
    for kw in ({}, {"drop_zero": True, "sim_transform": "exp_tau", "use_log": True}):
        got = ops.hycon_loss(*x, y, backend="triton", **kw)
        want = hycon_loss_reference(*x, y, **kw)
        for u, v in zip(got, want):
            torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-6)
        gu = torch.autograd.grad(sum(got), x)
        gv = torch.autograd.grad(sum(want), x)
        for u, v in zip(gu, gv):
            torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-5)
    assert len(calls) == 2
    monkeypatch.undo()

    f = [torch.randn(5, 4).requires_grad_() for _ in range(6)]
    y = torch.tensor([-2.0, -1.5, 0.3, 2.0, 0.35])
    monkeypatch.setenv("MSA_FAST_BACKEND", "triton")   # 'auto' overridden to the Triton kernels
    for mode in ("literal3", "ordered6"):
        got = ops.mgcl_contrastive_loss(tuple(f[:3]), tuple(f[3:]), y, tau=0.5, same_sample_c2=mode)
        want = mgcl_contrastive_loss_reference(tuple(f[:3]), tuple(f[3:]), y, tau=0.5, same_sample_c2=mode)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        for u, v in zip(torch.autograd.grad(got, f), torch.autograd.grad(want, f)):
            torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# The GPU tile configs (rectangular tiles, one D chunk, wide feature chunks), forced one at a time.


def test_other_tile_configs(monkeypatch):
    P = _kernels("_pairwise_rows")
    fwd, bwd = P.FWD_CONFIGS[2], P.BWD_CONFIGS[3]  # 32 × 64 × 64 and 64 × 32 × 32 (128-wide chunks)
    for kernel in (ksup._supcon_fwd_kernel, knce._info_nce_fwd_kernel, kuni._uniform_fwd_kernel):
        monkeypatch.setattr(kernel, "configs", [fwd])
    for kernel in (ksup._supcon_bwd_kernel, knce._info_nce_bwd_kernel, kuni._uniform_bwd_kernel):
        monkeypatch.setattr(kernel, "configs", [bwd])
    monkeypatch.setattr(P.finish_kernel, "configs", [P.FINISH_CONFIGS[1]])
    g = torch.Generator().manual_seed(9)
    z = _feats(65, 50, g, True)
    _check_supcon(z, _labels(65, g, "mixed"), 0.07, True, True)
    _check_info_nce(z, _feats(65, 50, g, True), 0.1, True, True)
    _check_uniform(z, _feats(65, 50, g, True), 2.0, True)


@pytest.mark.parametrize("which", ["16x16", "64-row"])
def test_hycon_mgcl_other_tile_configs(monkeypatch, which):
    """The hycon / mgcl kernels under the small shared configs (16 × 16 tiles, 32-wide feature chunks: several tiles
    and chunks at these shapes) and under their 64-row GPU configs."""
    P = _kernels("_pairwise_rows")
    fwd, bwd = (P.FWD_CONFIGS[0], P.BWD_CONFIGS[0]) if which == "16x16" else (P.FWD_CONFIGS_WIDE[1],
                                                                             P.BWD_CONFIGS_WIDE[2])
    for kernel in (khy._hycon_fwd_kernel, kmg._mgcl_fwd_kernel):
        monkeypatch.setattr(kernel, "configs", [fwd])
    for kernel in (khy._hycon_bwd_kernel, kmg._mgcl_bwd_kernel):
        monkeypatch.setattr(kernel, "configs", [bwd])
    g = torch.Generator().manual_seed(16)
    K = 23 if which == "16x16" else 25        # 3K = 69 / 75 rows, ragged
    _check_hycon(_feats(3 * K, 40, g, True), _hycon_classes(K, g), 0.8, "exp_tau", 0.2)
    B = 19 if which == "16x16" else 67        # 67 rows per view: two 64-row blocks
    macro, micro = _mgcl_feats(B, 40 if which == "16x16" else 8, g)
    _check_mgcl(macro, micro, torch.empty(B).uniform_(-3, 3, generator=g), ordered6=which == "16x16")


# ----------------------------------------------------------------------------------------------
# Argument checks.


def test_launcher_argument_errors():
    z = torch.randn(4, 3)
    with pytest.raises(ValueError):
        ksup.supcon_rows_forward(torch.empty(0, 3), torch.empty(0, dtype=torch.int64), 0.1, False, True)
    with pytest.raises(ValueError):
        ksup.supcon_rows_forward(z, torch.zeros(3, dtype=torch.int64), 0.1, False, True)
    with pytest.raises(TypeError):
        ksup.supcon_rows_forward(z, torch.zeros(4), 0.1, False, True)
    with pytest.raises(ValueError):
        knce.info_nce_rows_forward(z, torch.randn(5, 3), 0.1, True, True)
    with pytest.raises(ValueError):
        kuni.uniform_rows_forward(z, z.double(), 2.0, True)
    # hycon / mgcl: the C++ ops' checks and exception types
    x, cls = torch.randn(6, 3), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"x must stack the three modalities"):
        khy.hycon_rows_forward(x[:5], cls, 0.8, "cos", 0.1)
    with pytest.raises(TypeError, match="classes must be int64"):
        khy.hycon_rows_forward(x, cls.int(), 0.8, "cos", 0.1)
    with pytest.raises(ValueError, match="sim_transform must be one of"):
        khy.hycon_rows_forward(x, cls, 0.8, "exp", 0.1)
    with pytest.raises(ValueError, match=r"grad_stats must be \[3K, 7\]"):
        khy.hycon_rows_backward(torch.zeros(6, 6), x, cls, 0.8, "cos", 0.1)
    args = (0.4, 0.5, 3.0, "mgcl", "mgcl", 1.5, False, True)
    with pytest.raises(ValueError, match="macro and micro must have the same shape"):
        kmg.mgcl_rows_forward(x, torch.randn(6, 4), cls.float(), *args)
    with pytest.raises(ValueError, match=r"y must be \[B\] = \[2\]"):
        kmg.mgcl_rows_forward(x, x, torch.zeros(3), *args)
    with pytest.raises(ValueError, match="neg_weight must be one of"):
        kmg.mgcl_rows_forward(x, x, cls.float(), 0.4, 0.5, 3.0, "mgcl", "tanh", 1.5, False, True)
    with pytest.raises(ValueError, match=r"lse_pos must have 3B = 6"):
        kmg.mgcl_rows_backward(torch.zeros(6), torch.zeros(6), x, x, cls.float(), torch.zeros(5), torch.zeros(6), *args)


# ----------------------------------------------------------------------------------------------
# Traceability (make_fx, symbolic shapes) and GPU compilation, without the interpreter.

_TRACE_AND_COMPILE = textwrap.dedent("""
    import os, sys
    os.environ["TRITON_INTERPRET"] = "0"
    sys.path.insert(0, sys.argv[1])
    import torch, triton
    from torch.fx.experimental.proxy_tensor import make_fx
    from kernels import supcon as S, info_nce as I, uniform as U, hycon as H, mgcl as M

    z = torch.randn(5, 7)
    lab = torch.tensor([0, 1, 0, 2, 1])
    v = torch.randn(5)
    traces = [
        (lambda z, l: S.supcon_rows_forward(z, l, 0.07, True, True), (z, lab), 1),
        (lambda g, z, l, a, b, c: S.supcon_rows_backward(g, z, l, a, b, c, 0.07, False, True),
         (v, z.bfloat16(), lab, v, v, v), 3),
        (lambda q, k: I.info_nce_rows_forward(q, k, 0.1, True, True), (z, z + 1), 1),
        (lambda g, q, k, l: I.info_nce_rows_backward(g, q, k, l, 0.1, False, False), (v, z, z + 1, v), 4),
        (lambda p, g: U.uniform_rows_forward(p, g, 2.0, False), (z, z + 1), 1),
        (lambda r, p, g, l: U.uniform_rows_backward(r, p, g, l, 2.0, True), (v, z.half(), z.half(), v), 4),
    ]
    x, cls, st = torch.randn(6, 7), torch.tensor([0, -1]), torch.randn(6, 7)
    y, w = torch.randn(2), torch.randn(6)
    mg = (0.4, 0.5, 3.0, "mgcl", "clgsi", 1.5, True, True)
    traces += [
        (lambda x, c: H.hycon_rows_forward(x, c, 0.8, "exp_tau", 0.1), (x, cls), 1),
        (lambda g, x, c: H.hycon_rows_backward(g, x, c, 0.8, "cos01", 0.1), (st, x.bfloat16(), cls), 2),
        (lambda a, b, y: M.mgcl_rows_forward(a, b, y, *mg), (x, x + 1, y), 1),
        (lambda gp, ga, a, b, y, lp, la: M.mgcl_rows_backward(gp, ga, a, b, y, lp, la, *mg),
         (w, w, x.half(), x.half(), y, w, w), 4),
    ]
    for fn, args, launches in traces:
        code = make_fx(fn, tracing_mode="symbolic")(*args).code
        assert code.count("triton_kernel_wrapper_mutation(") == launches, code
        assert "_local_scalar_dense" not in code and ".item" not in code, code
    print("TRACED")

    from triton.backends import backends
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if "nvidia" not in backends or not os.path.exists(ptxas):
        print("NO-NVIDIA-BACKEND")
        sys.exit(0)
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from kernels import _pairwise_rows as P
    target = GPUTarget("cuda", 80, 32)

    def build(kernel, sig, consts):
        fn = kernel.fn
        sig = {**sig, **{k: "constexpr" for k in consts}}
        triton.compile(ASTSource(fn, sig, consts), target=target)

    fwd = P.FWD_CONFIGS[1].kwargs
    bwd = P.BWD_CONFIGS[1].kwargs

    def flags(dt):  # (pointer type, compute pointer type, constexpr flags) per input dtype
        ct = "fp64" if dt == "fp64" else "fp32"
        return ("*i16" if dt == "bf16" else "*" + dt), "*" + ct, dict(
            NORMALIZE=True, BF16=dt == "bf16", FP64=dt == "fp64", IP="tf32" if dt == "fp32" else "ieee")

    # One compile per kernel (they take seconds each), the dtype paths spread over them.
    x, c, f = flags("fp32")
    build(S._supcon_fwd_kernel, {"z_ptr": x, "lab_ptr": "*i64", "loss_ptr": c, "lse_ptr": c, "pos_ptr": c,
          "npos_ptr": c, "N": "i32", "D": "i32", "tau_bits": "i64"}, {"VARIANT_IN": True, **f, **fwd})
    x, c, f = flags("bf16")
    build(S._supcon_bwd_kernel, {"z_ptr": x, "lab_ptr": "*i64", "g_ptr": c, "lse_ptr": c, "pos_ptr": c,
          "npos_ptr": c, "out_ptr": c, "N": "i32", "D": "i32", "tau_bits": "i64"},
          {"COL": True, "VARIANT_IN": False, **f, **bwd})
    x, c, f = flags("fp64")
    build(I._info_nce_fwd_kernel, {"q_ptr": x, "k_ptr": x, "y_ptr": x, "loss_ptr": c, "lse_ptr": c, "N": "i32",
          "D": "i32", "tau_bits": "i64"}, {"QUERIES": True, **f, **fwd})
    x, c, f = flags("fp16")
    build(I._info_nce_bwd_kernel, {"own_ptr": x, "oth_ptr": x, "q_ptr": x, "k_ptr": x, "g_ptr": c, "lse_ptr": c,
          "out_ptr": c, "diag_ptr": c, "N": "i32", "D": "i32", "tau_bits": "i64"},
          {"COL": False, "QUERIES": True, **f, **bwd})
    x, c, f = flags("bf16")
    build(U._uniform_fwd_kernel, {"p_ptr": x, "g_ptr": x, "lse_ptr": c, "N": "i32", "D": "i32",
          "kappa_bits": "i64"}, {**f, **fwd})
    x, c, f = flags("fp32")
    build(U._uniform_bwd_kernel, {"own_ptr": x, "oth_ptr": x, "gr_ptr": c, "lse_ptr": c, "out_ptr": c,
          "N": "i32", "D": "i32", "kappa_bits": "i64"}, {"COL": True, **f, **bwd})
    x, c, f = flags("bf16")
    build(P.finish_kernel, {"x_ptr": x, "a_ptr": c, "b_ptr": c, "out_ptr": x, "N": "i32", "D": "i32"},
          {"HAS_B": True, "NORMALIZE": True, "BF16": True, "FP64": False, **P.FINISH_CONFIGS[1].kwargs})
    fwd, bwd = P.FWD_CONFIGS_WIDE[0].kwargs, P.BWD_CONFIGS_WIDE[0].kwargs
    hy = {"cls_ptr": "*i64", "N": "i32", "K": "i32", "D": "i32", "alpha_bits": "i64", "tau_bits": "i64"}
    x, c, f = flags("fp32")
    del f["NORMALIZE"]
    build(H._hycon_fwd_kernel, {"x_ptr": x, "out_ptr": c, **hy}, {"F": 2, **f, **fwd})
    x, c, f = flags("bf16")
    del f["NORMALIZE"]
    build(H._hycon_bwd_kernel, {"x_ptr": x, "g_ptr": c, "out_ptr": c, **hy}, {"F": 1, **f, **bwd})
    mg = {"y_ptr": "*fp32", "B": "i32", "D": "i32", **{k: "i64" for k in ("delta_bits", "tau_bits", "scale_bits",
                                                                        "gain_bits", "gain08_bits")}}
    x, c, f = flags("fp16")
    build(M._mgcl_fwd_kernel, {"f_ptr": x, "lse_pos_ptr": c, "lse_all_ptr": c, **mg},
          {"POS_W": 0, "NEG_W": 1, "ORDERED6": False, **f, **fwd})
    x, c, f = flags("fp32")
    build(M._mgcl_bwd_kernel, {"f_ptr": x, "lp_ptr": c, "la_ptr": c, "ap_ptr": c, "ga_ptr": c, "out_ptr": c, **mg},
          {"MICRO": False, "POS_W": 1, "NEG_W": 2, "ORDERED6": True, **f, **bwd})
    print("COMPILED")
""")


def test_launchers_trace_and_kernels_compile_for_gpu(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_CACHE_DIR": str(tmp_path / "triton-cache")}
    proc = subprocess.run([sys.executable, "-c", _TRACE_AND_COMPILE, str(REPO)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "TRACED" in proc.stdout
    if "NO-NVIDIA-BACKEND" in proc.stdout:
        pytest.skip("triton's NVIDIA backend (ptxas) is not installed: traced, not compiled")
    assert "COMPILED" in proc.stdout, proc.stdout + proc.stderr
