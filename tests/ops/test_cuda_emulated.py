"""The CUDA kernels of the contrastive losses (csrc/cuda/{supcon,info_nce,uniform,hycon,mgcl}.cu) run
without a GPU: the .cu files are compiled by the host compiler against a small emulation of the CUDA
execution model (tests/ops/cuda_emulation/cuda_emulation.h: a block's threads are host threads, a
barrier is __syncthreads, __shared__ is shared) and registered as CPU kernels of a test-only namespace
``msa_fast_emu`` with the schemas of the real ops. Everything but the launch itself runs as on a GPU —
argument checks, tiling, shared-memory staging, online log-sum-exps, the backward passes and the
finalize kernel — and is compared output for output with the C++ CPU kernels.

Forward statistics are compared directly. Backward passes are compared with each backend fed its own
forward statistics (as in training): mixing one backend's LSE with the other's recomputed logits would
measure the two GEMMs' rounding, amplified by the softmax, not the kernels. fp64 inputs run the
double-precision instantiation of the same kernels and agree with the CPU to ~1e-12.
"""

from __future__ import annotations

import pytest
import torch

from tests.ops import cuda_emulation

FWD_TOL = dict(rtol=1e-5, atol=1e-5)
BWD_TOL = dict(rtol=1e-4, atol=1e-5)
FP64_TOL = dict(rtol=1e-10, atol=1e-12)
MGCL_FP64_TOL = dict(rtol=1e-6, atol=1e-7)  # mgcl's label arithmetic and weights are fp32 on every backend


@pytest.fixture(scope="module")
def emu():
    """torch.ops.msa_fast_emu: the CUDA kernels, emulated on the CPU (built once, cached by torch)."""
    reason = cuda_emulation.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    return cuda_emulation.load()


CPU = torch.ops.msa_fast


def assert_same(a, b, rtol, atol):
    """Output for output; atol is relative to the largest magnitude of the CPU output (gradients are sums of
    many softmax-weighted rows: their rounding scales with the largest entries, not with each entry)."""
    a = a if isinstance(a, (tuple, list)) else (a,)
    b = b if isinstance(b, (tuple, list)) else (b,)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape, (x.dtype, y.dtype, x.shape, y.shape)
        scale = max(1.0, float(y.detach().double().abs().nan_to_num(0.0, 0.0, 0.0).max())) if y.numel() else 1.0
        torch.testing.assert_close(x, y, equal_nan=True, rtol=rtol, atol=atol * scale)


def assert_as_accurate(emu_out, cpu_out, truth, factor=8.0, slack=1e-6):
    """fp32 gradients of an ill-conditioned case (large logits): the emulated kernel's error against the fp64
    result is at most `factor` times the CPU kernel's (plus `slack` relative to the largest entry). The
    emulation is built without FMA contraction (a GPU contracts), and uniform's column sums of mixed-sign
    weights at κ = 100 cancel: measured 2–3x the CPU's mean error, 6x its maximum, within ops.md §10."""
    emu_out = emu_out if isinstance(emu_out, (tuple, list)) else (emu_out,)
    cpu_out = cpu_out if isinstance(cpu_out, (tuple, list)) else (cpu_out,)
    truth = truth if isinstance(truth, (tuple, list)) else (truth,)
    for e, c, t in zip(emu_out, cpu_out, truth):
        scale = max(1.0, float(t.abs().max()))
        err_e, err_c = float((e.double() - t).abs().max()), float((c.double() - t).abs().max())
        assert err_e <= factor * err_c + slack * scale, (err_e, err_c, scale)


def tols(dtype):
    return (FP64_TOL, FP64_TOL) if dtype == torch.float64 else (FWD_TOL, BWD_TOL)


# ------------------------------------------------------------------------------------------------
# supcon


@pytest.mark.parametrize("N, D", [(1, 3), (2, 1), (9, 5), (70, 20), (130, 150)])
@pytest.mark.parametrize("variant_in", [False, True])
def test_supcon_matches_cpu(emu, N, D, variant_in):
    torch.manual_seed(N * 7 + D)
    z = torch.randn(N, D)
    labels = torch.randint(-2, max(2, N // 5), (N,))
    args = (0.1, variant_in, True)
    e, c = emu.supcon_rows(z, labels, *args), CPU.supcon_rows(z, labels, *args)
    assert_same(e, c, **FWD_TOL)
    g = torch.randn(N)
    assert_same(emu.supcon_rows_backward(g, z, labels, *e[1:], *args),
                CPU.supcon_rows_backward(g, z, labels, *c[1:], *args), **BWD_TOL)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_supcon_dtypes_raw_dots_zero_row(emu, dtype):
    torch.manual_seed(1)
    z = (torch.randn(40, 24) * 0.3).to(dtype)
    z[5] = 0
    labels = torch.randint(0, 5, (40,))
    ftol, btol = tols(dtype)
    for variant_in in (False, True):
        for normalize in (True, False):
            args = (0.5, variant_in, normalize)
            e, c = emu.supcon_rows(z, labels, *args), CPU.supcon_rows(z, labels, *args)
            assert_same(e, c, **ftol)
            g = torch.randn(40, dtype=e[0].dtype)
            ge = emu.supcon_rows_backward(g, z, labels, *e[1:], *args)
            gc = CPU.supcon_rows_backward(g, z, labels, *c[1:], *args)
            assert ge.dtype == dtype
            assert_same(ge.double(), gc.double(), **(btol if dtype == torch.float64 else dict(rtol=2e-2, atol=2e-3)))
            if normalize:
                assert (ge[5] == 0).all()


def test_supcon_nan_row_propagates_as_on_cpu(emu):
    z = torch.randn(10, 4)
    z[3, 1] = float("nan")
    labels = torch.randint(0, 3, (10,))
    e, c = emu.supcon_rows(z, labels, 0.1, False, True), CPU.supcon_rows(z, labels, 0.1, False, True)
    for x, y in zip(e, c):
        assert torch.equal(x.isnan(), y.isnan())


# ------------------------------------------------------------------------------------------------
# info_nce


@pytest.mark.parametrize("N, D", [(1, 3), (2, 1), (9, 5), (70, 20), (130, 150)])
@pytest.mark.parametrize("queries", [False, True])
@pytest.mark.parametrize("same", [False, True])
def test_info_nce_matches_cpu(emu, N, D, queries, same):
    torch.manual_seed(N * 11 + D)
    q = torch.randn(N, D)
    k = q if same else torch.randn(N, D)
    for normalize in (True, False):
        qq, kk = (q, k) if normalize else (q * 0.3, q * 0.3 if same else k * 0.3)
        args = (0.1, queries, normalize)
        e, c = emu.info_nce_rows(qq, kk, *args), CPU.info_nce_rows(qq, kk, *args)
        assert_same(e, c, **FWD_TOL)
        if N == 1:
            assert (e[0] == 0).all()
        g = torch.randn(N)
        assert_same(emu.info_nce_rows_backward(g, qq, kk, e[1], *args),
                    CPU.info_nce_rows_backward(g, qq, kk, c[1], *args), **BWD_TOL)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_info_nce_dtypes(emu, dtype):
    torch.manual_seed(2)
    q, k = torch.randn(37, 19).to(dtype), torch.randn(37, 19).to(dtype)
    ftol, btol = tols(dtype)
    for queries in (False, True):
        e, c = emu.info_nce_rows(q, k, 0.2, queries, True), CPU.info_nce_rows(q, k, 0.2, queries, True)
        assert_same(e, c, **ftol)
        g = torch.randn(37, dtype=e[0].dtype)
        for x, y in zip(emu.info_nce_rows_backward(g, q, k, e[1], 0.2, queries, True),
                        CPU.info_nce_rows_backward(g, q, k, c[1], 0.2, queries, True)):
            assert x.dtype == dtype
            assert_same(x.double(), y.double(), **(btol if dtype == torch.float64 else dict(rtol=2e-2, atol=2e-3)))


# ------------------------------------------------------------------------------------------------
# uniform


@pytest.mark.parametrize("n, D", [(2, 1), (9, 5), (70, 20), (130, 150)])
@pytest.mark.parametrize("kappa", [0.0, 2.0, 100.0])
def test_uniform_matches_cpu(emu, n, D, kappa):
    torch.manual_seed(n * 13 + D)
    p, g = torch.randn(n, D), torch.randn(n, D)
    for normalize, same in ((True, False), (True, True), (False, False)):
        pp, gg = (p, p if same else g) if normalize else (p * 0.3, g * 0.3)
        e, c = emu.uniform_rows(pp, gg, kappa, normalize), CPU.uniform_rows(pp, gg, kappa, normalize)
        assert_same(e, c, **FWD_TOL)
        if kappa == 0.0:
            assert torch.equal(e, c)  # exactly fl(log(n − 1)), the constant the public op subtracts
        w = torch.randn(n)
        ge = emu.uniform_rows_backward(w, pp, gg, e, kappa, normalize)
        gc = CPU.uniform_rows_backward(w, pp, gg, c, kappa, normalize)
        if kappa < 100:
            assert_same(ge, gc, **BWD_TOL)
        else:  # κ = 100: logits −κd² of ±hundreds, so compare both with the fp64 kernel
            p64, g64 = pp.double(), gg.double()
            truth = CPU.uniform_rows_backward(w.double(), p64, g64, CPU.uniform_rows(p64, g64, kappa, normalize),
                                              kappa, normalize)
            assert_as_accurate(ge, gc, truth)


def test_uniform_fp64(emu):
    torch.manual_seed(3)
    p, g = torch.randn(33, 7, dtype=torch.float64), torch.randn(33, 7, dtype=torch.float64)
    e, c = emu.uniform_rows(p, g, 2.0, True), CPU.uniform_rows(p, g, 2.0, True)
    assert_same(e, c, **FP64_TOL)
    w = torch.randn(33, dtype=torch.float64)
    assert_same(emu.uniform_rows_backward(w, p, g, e, 2.0, True), CPU.uniform_rows_backward(w, p, g, c, 2.0, True),
                **FP64_TOL)


# ------------------------------------------------------------------------------------------------
# hycon


@pytest.mark.parametrize("K, D", [(1, 3), (2, 4), (23, 10), (45, 130)])
@pytest.mark.parametrize("transform", ["cos", "cos01", "exp_tau"])
def test_hycon_matches_cpu(emu, K, D, transform):
    torch.manual_seed(K * 17 + D)
    x = torch.randn(3 * K, D)
    classes = torch.tensor([-1, 7, -5, 7, 0])[torch.randint(0, 5, (K,))]  # −1 = dropped, arbitrary ids
    args = (0.8, transform, 0.5)
    e, c = emu.hycon_rows(x, classes, *args), CPU.hycon_rows(x, classes, *args)
    assert_same(e, c, **FWD_TOL)
    g = torch.randn(3 * K, 7)
    assert_same(emu.hycon_rows_backward(g, x, classes, *args), CPU.hycon_rows_backward(g, x, classes, *args),
                **BWD_TOL)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_hycon_dtypes_and_zero_row(emu, dtype):
    torch.manual_seed(4)
    x = torch.randn(3 * 12, 9).to(dtype)
    x[4] = 0
    classes = torch.randint(0, 3, (12,))
    ftol, btol = tols(dtype)
    e, c = emu.hycon_rows(x, classes, 1.0, "cos01", 0.1), CPU.hycon_rows(x, classes, 1.0, "cos01", 0.1)
    assert_same(e, c, **ftol)
    g = torch.randn(36, 7, dtype=e.dtype)
    ge = emu.hycon_rows_backward(g, x, classes, 1.0, "cos01", 0.1)
    assert ge.dtype == dtype and (ge[4] == 0).all()
    assert_same(ge.double(), CPU.hycon_rows_backward(g, x, classes, 1.0, "cos01", 0.1).double(),
                **(btol if dtype == torch.float64 else dict(rtol=2e-2, atol=2e-3)))


# ------------------------------------------------------------------------------------------------
# mgcl


def _mgcl(emu, macro, micro, y, args, bwd_tol):
    e, c = emu.mgcl_rows(macro, micro, y, *args), CPU.mgcl_rows(macro, micro, y, *args)
    assert_same(e, c, **FWD_TOL if macro.dtype != torch.float64 else MGCL_FP64_TOL)
    gp, ga = torch.randn(e[0].shape, dtype=e[0].dtype), torch.randn(e[0].shape, dtype=e[0].dtype)
    assert_same(emu.mgcl_rows_backward(gp, ga, macro, micro, y, *e, *args),
                CPU.mgcl_rows_backward(gp, ga, macro, micro, y, *c, *args), **bwd_tol)


@pytest.mark.parametrize("B, d", [(1, 3), (2, 4), (23, 10), (70, 33)])
@pytest.mark.parametrize("weights", [("mgcl", "mgcl"), ("clgsi", "clgsi"), ("none", "none"), ("mgcl", "none")])
@pytest.mark.parametrize("ordered6", [False, True])
def test_mgcl_matches_cpu(emu, B, d, weights, ordered6):
    torch.manual_seed(B * 19 + d)
    macro, micro = torch.randn(3 * B, d), torch.randn(3 * B, d)
    y = (torch.rand(B) * 6 - 3).round(decimals=1)  # many pairs exactly at E = δ
    _mgcl(emu, macro, micro, y, (0.4, 0.3, 3.0, *weights, 1.5, ordered6, True), BWD_TOL)


def test_mgcl_label_dtypes_raw_dots_nan_and_fp64(emu):
    torch.manual_seed(5)
    B, d = 17, 6
    macro, micro = torch.randn(3 * B, d), torch.randn(3 * B, d)
    args = (0.4, 0.5, 1.0, "mgcl", "clgsi", 1.5, False, True)
    for y in (torch.randint(-3, 4, (B,)), torch.randint(0, 2, (B,)).bool(), torch.rand(B, dtype=torch.float64),
              torch.randint(-3, 4, (B,)).to(torch.int16)):
        _mgcl(emu, macro, micro, y, args, BWD_TOL)
    y = torch.tensor([0.0, 0.4] * 8 + [0.1])  # E = float32(0.4) is a positive at weight 0
    _mgcl(emu, macro, micro, y, args, BWD_TOL)
    _mgcl(emu, macro * 0.3, micro * 0.3, y, (0.4, 0.5, 1.0, "mgcl", "mgcl", 1.5, True, False), BWD_TOL)
    _mgcl(emu, macro.double(), micro.double(), y, args, MGCL_FP64_TOL)
    y_nan = y.clone()
    y_nan[3] = float("nan")
    e, c = emu.mgcl_rows(macro, micro, y_nan, *args), CPU.mgcl_rows(macro, micro, y_nan, *args)
    for x, z in zip(e, c):
        assert torch.equal(x.isnan(), z.isnan())
        torch.testing.assert_close(x, z, equal_nan=True, **FWD_TOL)


# ------------------------------------------------------------------------------------------------
# The glue shares the CPU kernels' argument checks (csrc/common/contrastive_args.h).


def test_errors_match_cpu(emu):
    z, labels = torch.randn(4, 3), torch.zeros(5, dtype=torch.long)
    for ops in (emu, CPU):
        with pytest.raises(ValueError, match=r"supcon_loss: labels must be \[N\] = \[4\], got shape \[5\]"):
            ops.supcon_rows(z, labels, 0.1, False, True)
        with pytest.raises(ValueError, match=r"info_nce: q and k must have the same shape"):
            ops.info_nce_rows(z, torch.randn(5, 3), 0.1, True, True)
        with pytest.raises(ValueError, match=r"uniform_loss: needs n >= 2 rows"):
            ops.uniform_rows(z[:1], z[:1], 2.0, True)
        with pytest.raises(ValueError, match=r"sim_transform must be one of"):
            ops.hycon_rows(torch.randn(6, 3), torch.zeros(2, dtype=torch.long), 0.8, "tanh", 0.1)
        with pytest.raises(ValueError, match=r"pos_weight must be one of"):
            ops.mgcl_rows(torch.randn(6, 3), torch.randn(6, 3), torch.zeros(2), 0.4, 0.1, 3.0, "x", "mgcl", 1.5, False,
                          True)
