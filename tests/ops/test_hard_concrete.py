"""hard_concrete and hard_concrete_l0 (ops.md §7): every backend against the reference, the
analytic gate statistics, gradients, opcheck, torch.compile, TorchScript and bad inputs."""

import math

import pytest
import torch

import msa_fast.ops as ops
from msa_fast.ops import philox, reference
from tests.ops.backends import BACKENDS

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float64: dict(rtol=1e-7, atol=1e-9),
       torch.float16: dict(rtol=5e-2, atol=1e-2), torch.bfloat16: dict(rtol=5e-2, atol=1e-2)}
GRAD_TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: dict(rtol=1e-7, atol=1e-9),
            torch.float16: dict(rtol=5e-2, atol=1e-2), torch.bfloat16: dict(rtol=5e-2, atol=1e-2)}
MODES = [  # (training, threshold, ste)
    (True, None, "clamp"), (True, 0.5, "clamp"), (True, 0.5, "sbar"), (False, None, "clamp"), (False, 0.5, "sbar"),
]


def run(fn, log_alpha, u, training, threshold, ste, seed=5, **kw):
    """z, s̄ and d(z·w + s̄·v)/dlog α for one configuration."""
    la = log_alpha.detach().clone().requires_grad_()
    z, s_bar = fn(la, u, threshold=threshold, training=training, seed=seed, ste=ste, return_s_bar=True, **kw)
    w, v = torch.linspace(-1, 2, z.numel()).view_as(z), torch.linspace(0.5, -0.5, z.numel()).view_as(z)
    (grad,) = torch.autograd.grad((z.float() * w).sum() + (s_bar.float() * v).sum(), la)
    return z, s_bar, grad


def near_threshold(s_bar, threshold):
    if threshold is None:
        return torch.zeros_like(s_bar, dtype=torch.bool)
    return (s_bar.double() - threshold).abs() < 1e-6


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("training, threshold, ste", MODES)
@pytest.mark.parametrize("given_u", [False, True])
@pytest.mark.parametrize("shape", [(7,), (3, 5, 11), (2, 3, 50)])
def test_against_reference_fp32(backend, device, training, threshold, ste, given_u, shape):
    la = torch.randn(shape, device=device) * 3
    u = torch.rand(shape, device=device) if given_u else None
    z, s_bar, grad = run(lambda *a, **k: ops.hard_concrete(*a, backend=backend, **k), la, u, training, threshold, ste)
    rz, rs, rgrad = run(reference.hard_concrete, la, u, training, threshold, ste)
    keep = ~near_threshold(rs, threshold)
    torch.testing.assert_close(z[keep], rz[keep], **TOL[torch.float32])
    torch.testing.assert_close(s_bar, rs, **TOL[torch.float32])
    torch.testing.assert_close(grad, rgrad, **GRAD_TOL[torch.float32])


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes(backend, device, dtype):
    la = (torch.randn(4, 33, device=device) * 3).to(dtype)
    for training, threshold, ste in MODES:
        z, s_bar, grad = run(lambda *a, **k: ops.hard_concrete(*a, backend=backend, **k), la, None, training,
                             threshold, ste)
        assert z.dtype == dtype and grad.dtype == dtype
        rz, rs, rgrad = run(reference.hard_concrete, la, None, training, threshold, ste)
        keep = ~near_threshold(rs, threshold)
        torch.testing.assert_close(z[keep], rz[keep], **TOL[dtype])
        torch.testing.assert_close(grad, rgrad, **GRAD_TOL[dtype])


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_seeded_noise_is_the_philox_uniform(backend, device):
    """A seeded run equals a given-u run with u = Philox uniform of (seed, flat index), bit for bit."""
    la = torch.randn(4, 9, device=device)
    u = philox.uniform(philox.randint(torch.tensor(31), torch.arange(la.numel()))).view(la.shape).to(device)
    seeded = ops.hard_concrete(la, seed=31, backend=backend)
    given = ops.hard_concrete(la, u, backend=backend)
    assert torch.equal(seeded, given)


@pytest.mark.parametrize("backend, device", [p for p in BACKENDS if p.values[0] != "cpp"])
def test_same_seed_same_gate_as_cpp(backend, device):
    """u is bit-identical across backends (test above); z agrees up to each backend's exp/log rounding."""
    la = torch.randn(3, 50)
    torch.testing.assert_close(ops.hard_concrete(la.to(device), seed=2**63 - 1, backend=backend).cpu(),
                               ops.hard_concrete(la, seed=2**63 - 1, backend="cpp"), **TOL[torch.float32])


@pytest.mark.parametrize("backend, device", [p for p in BACKENDS if p.values[0] != "triton"])
def test_gradcheck_fp64(backend, device):
    la = torch.randn(2, 6, dtype=torch.float64, device=device, requires_grad=True)
    u = torch.rand(2, 6, dtype=torch.float64, device=device) * 0.8 + 0.1
    for training, threshold, ste in MODES:
        def gate(t):
            return ops.hard_concrete(t, u, threshold=threshold, training=training, ste=ste, backend=backend,
                                     return_s_bar=True)
        if threshold is None:  # threshold outputs are piecewise constant: gradcheck only the clamp mode
            assert torch.autograd.gradcheck(gate, (la,))
    assert torch.autograd.gradcheck(lambda t: reference.hard_concrete(t, u), (la,))
    assert torch.autograd.gradcheck(lambda t: ops.hard_concrete_l0(t, backend=backend), (la,))


# ---- analytic statistics (10⁶ samples, tolerance 5e-3) -----------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("log_alpha", [-1.5, 0.0, 2.0])
def test_gate_probabilities(log_alpha):
    n, beta = 10**6, 2 / 3
    la = torch.full((n,), log_alpha)
    z = ops.hard_concrete(la, seed=99)
    p_zero = 1 / (1 + math.exp(-(beta * math.log(1 / 11) - log_alpha)))  # σ(β·log(−γ/ζ) − log α)
    p_one = 1 - 1 / (1 + math.exp(-(beta * math.log(11) - log_alpha)))
    assert (z == 0).double().mean().item() == pytest.approx(p_zero, abs=5e-3)
    assert (z == 1).double().mean().item() == pytest.approx(p_one, abs=5e-3)
    assert 1 - p_zero == pytest.approx(ops.hard_concrete_l0(la[:1]).item(), abs=1e-6)
    for b in (0.3, 2 / 3, 2.0):  # threshold 0.5: P(z = 1) = σ(log α) for every β
        zt = ops.hard_concrete(la, beta=b, threshold=0.5, seed=7)
        assert zt.double().mean().item() == pytest.approx(1 / (1 + math.exp(-log_alpha)), abs=5e-3)


# ---- edge cases -----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_infinite_log_alpha_gives_hard_gates_with_zero_gradient(backend, device):
    la = torch.tensor([float("inf"), -float("inf")], device=device, requires_grad=True)
    for training, threshold, ste in MODES:
        z = ops.hard_concrete(la, threshold=threshold, training=training, ste=ste, seed=1, backend=backend)
        assert z.tolist() == [1.0, 0.0]
        (grad,) = torch.autograd.grad(z.sum(), la)
        assert grad.tolist() == [0.0, 0.0]


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_nan_propagates_and_check_finite_raises(backend, device):
    la = torch.tensor([0.3, float("nan"), -1.0], device=device)
    z = ops.hard_concrete(la, training=False, backend=backend)
    assert z.isnan().tolist() == [False, True, False]
    with pytest.raises(ValueError, match="hard_concrete: log_alpha has 1 non-finite"):
        ops.hard_concrete(la, check_finite=True, backend=backend)


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_u_at_0_and_1_is_clamped(backend, device):
    la = torch.zeros(2, device=device)
    z, s_bar = ops.hard_concrete(la, torch.tensor([0.0, 1.0], device=device), return_s_bar=True, backend=backend)
    assert torch.isfinite(s_bar).all() and z.tolist() == [0.0, 1.0]


def test_eval_gate_with_threshold_is_sign_of_log_alpha():
    la = torch.randn(1000) * 4
    z = ops.hard_concrete(la, threshold=0.5, training=False)
    assert torch.equal(z, (la > 0).float())


def test_broadcast_u():
    la = torch.randn(4, 6)
    u = torch.rand(1, 6)
    torch.testing.assert_close(ops.hard_concrete(la, u), reference.hard_concrete(la, u))


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_l0_against_reference(backend, device, reduction):
    la = torch.cat([torch.randn(37) * 3, torch.tensor([40.0, -40.0])]).to(device)
    la1, la2 = la.clone().requires_grad_(), la.clone().requires_grad_()
    out = ops.hard_concrete_l0(la1, reduction=reduction, backend=backend)
    ref = reference.hard_concrete_l0(la2, reduction=reduction)
    torch.testing.assert_close(out, ref, **TOL[torch.float32])
    out.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(la1.grad, la2.grad, **GRAD_TOL[torch.float32])
    assert la1.grad[-2:].tolist() == [0.0, 0.0]  # clamped to [eps, 1 − eps]: no gradient


def test_nn_gate_module():
    from msa_fast.nn import HardConcreteGate

    gate = HardConcreteGate((3, 4), init_log_alpha=1.0, threshold=0.5)
    z = gate()
    assert z.shape == (3, 4) and set(z.unique().tolist()) <= {0.0, 1.0}
    (z.sum() + gate.l0()).backward()
    assert gate.log_alpha.grad is not None and gate.log_alpha.grad.abs().sum() > 0
    gate.eval()
    assert torch.equal(gate(), torch.ones(3, 4))


# ---- registration ---------------------------------------------------------------------------------


def test_opcheck():
    la = torch.randn(3, 5, requires_grad=True)
    u = torch.rand(3, 5)
    for args in [(la, None, torch.tensor(4), 2 / 3, -0.1, 1.1, None, True, 1e-6, "clamp", False),
                 (la, u, None, 2 / 3, -0.1, 1.1, 0.5, True, 1e-6, "sbar", True),
                 (la, None, None, 2 / 3, -0.1, 1.1, None, False, 1e-6, "clamp", True)]:
        torch.library.opcheck(torch.ops.msa_fast.hard_concrete.default, args)
    torch.library.opcheck(torch.ops.msa_fast.hard_concrete_l0.default, (la, 2 / 3, -0.1, 1.1, 1e-6))


def test_torch_compile_fullgraph():
    def f(la):
        return ops.hard_concrete(la, seed=3, backend="cpp").sum() + ops.hard_concrete_l0(la, reduction="sum",
                                                                                          backend="cpp")

    la = torch.randn(4, 7, requires_grad=True)
    out = torch.compile(f, fullgraph=True)(la)
    (grad,) = torch.autograd.grad(out, la)
    la2 = la.detach().clone().requires_grad_()
    out2 = f(la2)
    (grad2,) = torch.autograd.grad(out2, la2)
    torch.testing.assert_close(out, out2)
    torch.testing.assert_close(grad, grad2)


def test_torchscript_calls_the_op():
    @torch.jit.script
    def scripted(la: torch.Tensor) -> torch.Tensor:
        z, _ = torch.ops.msa_fast.hard_concrete(la, None, None, 0.6666, -0.1, 1.1, None, False, 1e-6, "clamp", False)
        return z

    la = torch.randn(5, requires_grad=True)
    torch.testing.assert_close(scripted(la), reference.hard_concrete(la, beta=0.6666, training=False))
    scripted(la).sum().backward()
    assert la.grad is not None


# ---- bad inputs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(beta=0.0), ValueError, "beta"),
    (dict(gamma=0.1), ValueError, "gamma"),
    (dict(zeta=1.0), ValueError, "zeta"),
    (dict(threshold=1.5), ValueError, "threshold"),
    (dict(ste="hard"), ValueError, "ste"),
    (dict(u=torch.rand(4, 3, dtype=torch.float64)), TypeError, "u must share"),
    (dict(u=torch.rand(2, 3)), ValueError, "does not broadcast"),
    (dict(seed=2**63), ValueError, "seed"),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ops.hard_concrete(torch.randn(4, 3), **kwargs)


@pytest.mark.parametrize("log_alpha, error, match", [
    (torch.zeros(0), ValueError, r"log_alpha is empty \(shape \(0,\)\)"),
    (torch.zeros(3, dtype=torch.int32), TypeError, "floating"),
    (torch.zeros(1).expand(2**32 + 1), ValueError, "2\\*\\*32"),
])
def test_bad_log_alpha(log_alpha, error, match):
    with pytest.raises(error, match=match):
        ops.hard_concrete(log_alpha)
    with pytest.raises(error, match=match):
        ops.hard_concrete_l0(log_alpha)


def test_cpp_kernel_checks_direct_calls():
    with pytest.raises(ValueError, match="beta must be > 0"):
        torch.ops.msa_fast.hard_concrete(torch.randn(3), None, torch.tensor(1), -1.0, -0.1, 1.1, None, True, 1e-6,
                                         "clamp", False)
    with pytest.raises(ValueError, match="needs a 0-dim int64 seed"):
        torch.ops.msa_fast.hard_concrete(torch.randn(3), None, None, 0.5, -0.1, 1.1, None, True, 1e-6, "clamp", False)
