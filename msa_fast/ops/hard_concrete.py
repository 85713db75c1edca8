"""Hard Concrete gates (Louizos, Welling & Kingma, ICLR 2018) with M3SA's threshold mode: ops.md §7.

Side by side: the references (the spec), the autograd and fake registrations of the C++/CUDA ops
``msa_fast::hard_concrete[_backward]`` and ``msa_fast::hard_concrete_l0[_backward]``
(csrc/cpu/hard_concrete.cpp, csrc/cuda/hard_concrete.cu), their Triton twins (kernels/hard_concrete.py)
and the public :func:`hard_concrete` / :func:`hard_concrete_l0`.

Training:  s = σ((log u − log(1 − u) + log α)/β),  s̄ = s(ζ − γ) + γ,  z = clamp(s̄, 0, 1)
(Louizos Eq. 10 with the stretch of §4) or z = 1[s̄ > t] (M3SA's hard filter, straight-through).
Eval: s = σ(log α). Noise comes from u, or from Philox(seed, flat index); backward regenerates it.
"""

from __future__ import annotations

import math

import torch

from msa_fast.ops import _config, _dispatch, philox

_STE = ("clamp", "sbar")
_REDUCTIONS = ("none", "sum", "mean")


def _check_params(beta, gamma, zeta, threshold, eps) -> None:
    if not beta > 0:
        raise ValueError(f"msa_fast.ops.hard_concrete: beta must be > 0, got {beta}")
    if not gamma < 0:
        raise ValueError(f"msa_fast.ops.hard_concrete: gamma must be < 0, got {gamma}")
    if not zeta > 1:
        raise ValueError(f"msa_fast.ops.hard_concrete: zeta must be > 1, got {zeta}")
    if not 0 <= eps < 0.5:
        raise ValueError(f"msa_fast.ops.hard_concrete: eps must lie in [0, 0.5), got {eps}")
    if threshold is not None and not 0 <= threshold <= 1:
        raise ValueError(f"msa_fast.ops.hard_concrete: threshold must lie in [0, 1] or be None, got {threshold}")


def _check_log_alpha(op: str, log_alpha) -> None:
    if not isinstance(log_alpha, torch.Tensor) or not log_alpha.is_floating_point():
        got = log_alpha.dtype if isinstance(log_alpha, torch.Tensor) else type(log_alpha).__name__
        raise TypeError(f"msa_fast.ops.{op}: log_alpha must be a floating tensor, got {got}")
    if log_alpha.numel() == 0:
        raise ValueError(f"msa_fast.ops.{op}: log_alpha is empty (shape {tuple(log_alpha.shape)})")
    if log_alpha.numel() > philox.OFFSET_LIMIT:
        raise ValueError(f"msa_fast.ops.{op}: log_alpha has {log_alpha.numel()} elements, more than the 2**32 "
                         "Philox offsets; split it")


def _check_u(log_alpha: torch.Tensor, u) -> torch.Tensor | None:
    if u is None:
        return None
    if not isinstance(u, torch.Tensor) or u.dtype != log_alpha.dtype:
        got = u.dtype if isinstance(u, torch.Tensor) else type(u).__name__
        raise TypeError(f"msa_fast.ops.hard_concrete: u must share log_alpha's dtype {log_alpha.dtype}, got {got}")
    if u.device != log_alpha.device:
        raise ValueError(f"msa_fast.ops.hard_concrete: u is on {u.device} but log_alpha is on {log_alpha.device}")
    try:
        return u.expand(log_alpha.shape)
    except RuntimeError:
        raise ValueError(f"msa_fast.ops.hard_concrete: u of shape {tuple(u.shape)} does not broadcast to "
                         f"log_alpha's shape {tuple(log_alpha.shape)}") from None


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    # fp32 math for fp32/fp16/bf16 (ops.md §0.2); fp64 keeps fp64 so gradcheck is meaningful.
    return torch.float64 if t.dtype == torch.float64 else torch.float32


# ----------------------------------------------------------------------------------------------
# References.


def _reference_noise(log_alpha, u, seed, eps, ct):
    if u is None:
        offsets = torch.arange(log_alpha.numel(), device=log_alpha.device, dtype=torch.int64)
        u = philox.uniform(philox.randint(seed, offsets)).view(log_alpha.shape)
    return u.detach().to(ct).clamp(eps, 1 - eps)


def _reference_forward(log_alpha, u, seed, beta, gamma, zeta, threshold, training, eps, ste):
    ct = _compute_dtype(log_alpha)
    la = log_alpha.to(ct)
    if training:
        noise = _reference_noise(log_alpha, u, seed, eps, ct)
        s = torch.sigmoid((torch.log(noise) - torch.log(1 - noise) + la) / beta)
    else:
        s = torch.sigmoid(la)
    s_bar = s * (zeta - gamma) + gamma
    if threshold is None:
        z = s_bar.clamp(0, 1)
    else:
        hard = (s_bar > threshold).to(ct)
        soft = s_bar.clamp(0, 1) if ste == "clamp" else s_bar
        z = hard + (soft - soft.detach())  # straight-through: value of hard, gradient of soft
    return z.to(log_alpha.dtype), s_bar.to(log_alpha.dtype)


def hard_concrete_reference(log_alpha, u=None, beta=2 / 3, gamma=-0.1, zeta=1.1, threshold=None, training=True, *,
                            seed=None, eps=1e-6, ste="clamp", return_s_bar=False, return_seed=False,
                            check_finite=False):
    """The pure-PyTorch specification of :func:`hard_concrete` (autograd through the formulas)."""
    _check_log_alpha("hard_concrete", log_alpha)
    _check_params(beta, gamma, zeta, threshold, eps)
    if ste not in _STE:
        raise ValueError(f"msa_fast.ops.hard_concrete: ste must be one of {_STE}, got {ste!r}")
    u = _check_u(log_alpha, u)
    if check_finite or _config.check_finite_default():
        _dispatch.check_finite("hard_concrete", log_alpha=log_alpha)
    seed = philox.seed_tensor(seed, "hard_concrete") if training and u is None else None
    z, s_bar = _reference_forward(log_alpha, u, seed, beta, gamma, zeta, threshold, training, eps, ste)
    return _pack(z, s_bar, seed, return_s_bar, return_seed)


def _reduce(p: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "sum":
        return p.sum()
    if reduction == "mean":
        return p.mean()
    return p


def hard_concrete_l0_reference(log_alpha, beta=2 / 3, gamma=-0.1, zeta=1.1, *, eps=1e-6, reduction="none",
                               check_finite=False):
    """The pure-PyTorch specification of :func:`hard_concrete_l0`."""
    _check_l0(log_alpha, beta, gamma, zeta, eps, reduction, check_finite)
    ct = _compute_dtype(log_alpha)
    p = torch.sigmoid(log_alpha.to(ct) - beta * math.log(-gamma / zeta)).clamp(eps, 1 - eps)
    return _reduce(p.to(log_alpha.dtype), reduction)


def _check_l0(log_alpha, beta, gamma, zeta, eps, reduction, check_finite) -> None:
    _check_log_alpha("hard_concrete_l0", log_alpha)
    _check_params(beta, gamma, zeta, None, eps)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"msa_fast.ops.hard_concrete_l0: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if check_finite:
        _dispatch.check_finite("hard_concrete_l0", log_alpha=log_alpha)


def _pack(z, s_bar, seed, return_s_bar, return_seed):
    if not (return_s_bar or return_seed):
        return z
    result = [z]
    if return_s_bar:
        result.append(s_bar)
    if return_seed:
        result.append(seed)
    return tuple(result)


# ----------------------------------------------------------------------------------------------
# Registrations: fake tensors and autograd of the C++/CUDA ops; the Triton ops and their autograd.


def _gate_fake(log_alpha, u, seed, beta, gamma, zeta, threshold, training, eps, ste, with_s_bar):
    z = torch.empty_like(log_alpha, memory_format=torch.contiguous_format)
    s_bar = torch.empty_like(z) if with_s_bar else log_alpha.new_empty(0)
    return z, s_bar


def _backward_fake(grad_z, grad_s_bar, log_alpha, *rest):
    return torch.empty_like(log_alpha, memory_format=torch.contiguous_format)


def _l0_fake(log_alpha, beta, gamma, zeta, eps):
    return torch.empty_like(log_alpha, memory_format=torch.contiguous_format)


def _l0_backward_fake(grad, log_alpha, beta, gamma, zeta, eps):
    return torch.empty_like(log_alpha, memory_format=torch.contiguous_format)


@torch.library.triton_op("msa_fast::hard_concrete_triton", mutates_args=())
def _hard_concrete_triton(log_alpha: torch.Tensor, u: torch.Tensor | None, seed: torch.Tensor | None, beta: float,
                          gamma: float, zeta: float, threshold: float | None, training: bool, eps: float,
                          ste: str, with_s_bar: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from msa_fast.kernels.hard_concrete import hard_concrete_forward

    return hard_concrete_forward(log_alpha, u, seed, beta, gamma, zeta, threshold, training, eps, with_s_bar)


@torch.library.triton_op("msa_fast::hard_concrete_backward_triton", mutates_args=())
def _hard_concrete_backward_triton(grad_z: torch.Tensor, grad_s_bar: torch.Tensor | None, log_alpha: torch.Tensor,
                                   u: torch.Tensor | None, seed: torch.Tensor | None, beta: float, gamma: float,
                                   zeta: float, threshold: float | None, training: bool, eps: float,
                                   ste: str) -> torch.Tensor:
    from msa_fast.kernels.hard_concrete import hard_concrete_backward

    return hard_concrete_backward(grad_z, grad_s_bar, log_alpha, u, seed, beta, gamma, zeta, threshold, training,
                                  eps, ste)


@torch.library.triton_op("msa_fast::hard_concrete_l0_triton", mutates_args=())
def _hard_concrete_l0_triton(log_alpha: torch.Tensor, beta: float, gamma: float, zeta: float,
                             eps: float) -> torch.Tensor:
    from msa_fast.kernels.hard_concrete import hard_concrete_l0_forward

    return hard_concrete_l0_forward(log_alpha, beta, gamma, zeta, eps)


@torch.library.triton_op("msa_fast::hard_concrete_l0_backward_triton", mutates_args=())
def _hard_concrete_l0_backward_triton(grad: torch.Tensor, log_alpha: torch.Tensor, beta: float, gamma: float,
                                      zeta: float, eps: float) -> torch.Tensor:
    from msa_fast.kernels.hard_concrete import hard_concrete_l0_backward

    return hard_concrete_l0_backward(grad, log_alpha, beta, gamma, zeta, eps)


def _gate_setup_context(ctx, inputs, output):
    (log_alpha, u, seed, ctx.beta, ctx.gamma, ctx.zeta, ctx.threshold, ctx.training, ctx.eps, ctx.ste,
     ctx.with_s_bar) = inputs
    ctx.save_for_backward(log_alpha, u, seed)


def _gate_backward_with(backward_op):
    def backward(ctx, grad_z, grad_s_bar):
        log_alpha, u, seed = ctx.saved_tensors
        grad = backward_op(grad_z, grad_s_bar if ctx.with_s_bar else None, log_alpha, u, seed, ctx.beta, ctx.gamma,
                           ctx.zeta, ctx.threshold, ctx.training, ctx.eps, ctx.ste)
        return grad, None, None, None, None, None, None, None, None, None, None

    return backward


def _l0_setup_context(ctx, inputs, output):
    log_alpha, ctx.beta, ctx.gamma, ctx.zeta, ctx.eps = inputs
    ctx.save_for_backward(log_alpha)


def _l0_backward_with(backward_op):
    def backward(ctx, grad):
        (log_alpha,) = ctx.saved_tensors
        return backward_op(grad, log_alpha, ctx.beta, ctx.gamma, ctx.zeta, ctx.eps), None, None, None, None

    return backward


def _register_autograd(suffix: str) -> None:
    ops = torch.ops.msa_fast
    torch.library.register_autograd(f"msa_fast::hard_concrete{suffix}",
                                    _gate_backward_with(getattr(ops, f"hard_concrete_backward{suffix}").default),
                                    setup_context=_gate_setup_context)
    torch.library.register_autograd(f"msa_fast::hard_concrete_l0{suffix}",
                                    _l0_backward_with(getattr(ops, f"hard_concrete_l0_backward{suffix}").default),
                                    setup_context=_l0_setup_context)


if _dispatch.native_built():
    torch.library.register_fake("msa_fast::hard_concrete", _gate_fake)
    torch.library.register_fake("msa_fast::hard_concrete_backward", _backward_fake)
    torch.library.register_fake("msa_fast::hard_concrete_l0", _l0_fake)
    torch.library.register_fake("msa_fast::hard_concrete_l0_backward", _l0_backward_fake)
    _register_autograd("")
_register_autograd("_triton")


# ----------------------------------------------------------------------------------------------
# Public ops.


def hard_concrete(log_alpha, u=None, beta=2 / 3, gamma=-0.1, zeta=1.1, threshold=None, training=True, *, seed=None,
                  eps=1e-6, ste="clamp", return_s_bar=False, return_seed=False, check_finite=False, backend="auto"):
    """Hard Concrete gate z in [0, 1] (or {0, 1} with ``threshold``), differentiable in ``log_alpha``.

    Args:
        log_alpha: gate logits, any shape, fp32/fp16/bf16 (fp64 runs on the reference under ``auto``).
        u: optional uniform noise broadcastable to ``log_alpha`` (same dtype); if None it is drawn from
            Philox(seed, flat index). Clamped to [eps, 1 − eps]. Gets no gradient.
        beta, gamma, zeta: temperature and stretch interval (Louizos et al.: 2/3, −0.1, 1.1).
        threshold: None → z = clamp(s̄, 0, 1); t → z = 1[s̄ > t] with a straight-through gradient
            (M3SA's hard filter uses t = 0.5).
        training: False → deterministic gate from s = σ(log α) (u and seed ignored).
        seed: int in [0, 2**63) or 0-dim int64 tensor; None draws one from torch's default generator.
        ste: straight-through gradient in threshold mode: ``'clamp'`` (clamp's gradient) or ``'sbar'``.
        return_s_bar: also return the stretched s̄; return_seed: also return the seed used.
        check_finite: raise ValueError if log_alpha has NaN/Inf (also ``MSA_FAST_CHECK_FINITE=1``).
            Otherwise NaN propagates to z; ±inf gives z = 1 or 0 with zero gradient.
        backend: ``'auto'``, ``'reference'``, ``'cpp'``, ``'triton'`` or ``'cuda'``.
    """
    _check_log_alpha("hard_concrete", log_alpha)
    _check_params(beta, gamma, zeta, threshold, eps)
    if ste not in _STE:
        raise ValueError(f"msa_fast.ops.hard_concrete: ste must be one of {_STE}, got {ste!r}")
    u = _check_u(log_alpha, u)
    if check_finite or _config.check_finite_default():
        _dispatch.check_finite("hard_concrete", log_alpha=log_alpha)
    chosen = _dispatch.resolve("hard_concrete", backend, log_alpha, native_op="hard_concrete",
                                triton_op="hard_concrete_triton")
    seed = philox.seed_tensor(seed, "hard_concrete") if training and u is None else None
    args = (float(beta), float(gamma), float(zeta), None if threshold is None else float(threshold), bool(training),
            float(eps), ste)
    if chosen == "reference":
        z, s_bar = _reference_forward(log_alpha, u, seed, *args)
    else:
        op = torch.ops.msa_fast.hard_concrete_triton if chosen == "triton" else torch.ops.msa_fast.hard_concrete
        z, s_bar = op(log_alpha, u, seed, *args, bool(return_s_bar))
    return _pack(z, s_bar, seed, return_s_bar, return_seed)


def hard_concrete_l0(log_alpha, beta=2 / 3, gamma=-0.1, zeta=1.1, *, eps=1e-6, reduction="none", check_finite=False,
                     backend="auto"):
    """Probability that each gate is non-zero, σ(log α − β·log(−γ/ζ)) clamped to [eps, 1 − eps].

    Louizos et al. Eq. 12: ``reduction='sum'`` is the expected L0 norm; ``'none'`` (default) is
    elementwise, ``'mean'`` averages. Gradient 0 where clamped.
    """
    _check_l0(log_alpha, beta, gamma, zeta, eps, reduction, check_finite or _config.check_finite_default())
    chosen = _dispatch.resolve("hard_concrete_l0", backend, log_alpha, native_op="hard_concrete_l0",
                                triton_op="hard_concrete_l0_triton")
    if chosen == "reference":
        return hard_concrete_l0_reference(log_alpha, beta, gamma, zeta, eps=eps, reduction=reduction)
    op = torch.ops.msa_fast.hard_concrete_l0_triton if chosen == "triton" else torch.ops.msa_fast.hard_concrete_l0
    return _reduce(op(log_alpha, float(beta), float(gamma), float(zeta), float(eps)), reduction)
