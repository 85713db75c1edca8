"""Triton kernels of the Hard Concrete gate and its L0 term (ops.md §7), mirroring ``csrc/common/hard_concrete.h``.

Elementwise over the flattened, contiguous ``log_alpha``. Math is fp32 (fp64 for fp64 inputs), as the C++
``opmath`` type. The noise is the given ``u`` (expanded to ``log_alpha``'s shape in the launcher) or the Philox
uniform of ``(seed, flat index)`` (§0.8), regenerated in backward rather than stored.

Scalar parameters travel as the int64 bit patterns of the Python doubles and are bit-cast back in the kernel,
then rounded to the compute type (what the C++ ``T(beta)`` does): Triton float scalars are fp32, which would
lose the fp64 path's precision. bf16 tensors are moved as int16 bit patterns and converted by hand
(exact widening; round-to-nearest-even narrowing, NaN → 0x7FC0 as ``c10::BFloat16``), because the interpreter's
own fp32 → bf16 cast truncates.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._autotune import autotune
from ._io import bits as _bits, div as _div, io as _io, load as _load, param as _param, store as _store
from .philox import uniform_from_bits

__all__ = ["hard_concrete_forward", "hard_concrete_backward", "hard_concrete_l0_forward",
           "hard_concrete_l0_backward"]

_CONFIGS = [
    triton.Config({"BLOCK": 1024}, num_warps=4),
    triton.Config({"BLOCK": 2048}, num_warps=8),
    triton.Config({"BLOCK": 512}, num_warps=4),
]

_PARAMS = ["beta_bits", "gamma_bits", "zeta_bits", "thr_bits", "eps_bits"]


# ----------------------------------------------------------------------------------------------
# Device helpers.


@triton.jit
def _sigmoid(x, CT: tl.constexpr):
    return _div(tl.full(x.shape, 1, CT), 1 + tl.exp(-x), CT)


@triton.jit
def _gate_s(log_alpha, u_ptr, seed_ptr, offs, mask, beta, eps, HAS_U: tl.constexpr, TRAINING: tl.constexpr,
            BF16: tl.constexpr, CT: tl.constexpr):
    """s = σ((log u − log(1 − u) + log α)/β), u clamped to [eps, 1 − eps], in training; σ(log α) in eval."""
    if TRAINING:
        if HAS_U:
            u = _load(u_ptr, offs, mask, CT, BF16)
        else:
            seed = tl.load(seed_ptr)
            u = uniform_from_bits(tl.randint(seed, offs.to(tl.uint32))).to(CT)
        one_minus_eps = 1 - eps
        u = tl.where(u < eps, eps, tl.where(u > one_minus_eps, one_minus_eps, u))  # NaN passes, as C++ clamp
        return _sigmoid(_div(tl.log(u) - tl.log(1 - u) + log_alpha, beta, CT), CT)
    else:
        return _sigmoid(log_alpha, CT)


# ----------------------------------------------------------------------------------------------
# Kernels.


@autotune(_CONFIGS, key=["N"])
@triton.jit(do_not_specialize=_PARAMS)
def _hard_concrete_forward_kernel(la_ptr, u_ptr, seed_ptr, z_ptr, sbar_ptr, N, beta_bits, gamma_bits, zeta_bits,
                                  thr_bits, eps_bits, HAS_U: tl.constexpr, HAS_THRESHOLD: tl.constexpr,
                                  TRAINING: tl.constexpr, WITH_S_BAR: tl.constexpr, BF16: tl.constexpr,
                                  FP64: tl.constexpr, BLOCK: tl.constexpr):
    CT: tl.constexpr = tl.float64 if FP64 else tl.float32
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    beta = _param(beta_bits, CT)
    gamma = _param(gamma_bits, CT)
    zeta = _param(zeta_bits, CT)
    eps = _param(eps_bits, CT)
    log_alpha = _load(la_ptr, offs, mask, CT, BF16)
    s = _gate_s(log_alpha, u_ptr, seed_ptr, offs, mask, beta, eps, HAS_U, TRAINING, BF16, CT)
    s_bar = s * (zeta - gamma) + gamma
    if HAS_THRESHOLD:
        z = tl.where(s_bar > _param(thr_bits, CT), 1, 0).to(CT)
    else:
        z = tl.where(s_bar < 0, 0, tl.where(s_bar > 1, 1, s_bar))
    _store(z_ptr, offs, z, mask, BF16)
    if WITH_S_BAR:
        _store(sbar_ptr, offs, s_bar, mask, BF16)


@autotune(_CONFIGS, key=["N"])
@triton.jit(do_not_specialize=_PARAMS)
def _hard_concrete_backward_kernel(gz_ptr, gsb_ptr, la_ptr, u_ptr, seed_ptr, grad_ptr, N, beta_bits, gamma_bits,
                                   zeta_bits, thr_bits, eps_bits, HAS_GSB: tl.constexpr, HAS_U: tl.constexpr,
                                   HAS_THRESHOLD: tl.constexpr, TRAINING: tl.constexpr, STE_SBAR: tl.constexpr,
                                   BF16: tl.constexpr, FP64: tl.constexpr, BLOCK: tl.constexpr):
    CT: tl.constexpr = tl.float64 if FP64 else tl.float32
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    beta = _param(beta_bits, CT)
    gamma = _param(gamma_bits, CT)
    zeta = _param(zeta_bits, CT)
    eps = _param(eps_bits, CT)
    log_alpha = _load(la_ptr, offs, mask, CT, BF16)
    s = _gate_s(log_alpha, u_ptr, seed_ptr, offs, mask, beta, eps, HAS_U, TRAINING, BF16, CT)
    # h = ds̄/dlog α = (ζ − γ)·s(1 − s), divided by β in training.
    h = (zeta - gamma) * s * (1 - s)
    if TRAINING:
        h = _div(h, beta, CT)
    s_bar = s * (zeta - gamma) + gamma
    grad_z = _load(gz_ptr, offs, mask, CT, BF16)
    if HAS_THRESHOLD and STE_SBAR:
        g = grad_z * h
    else:
        g = tl.where((s_bar >= 0) & (s_bar <= 1), grad_z * h, 0)  # torch.clamp's inclusive rule
    if HAS_GSB:
        grad_s_bar = _load(gsb_ptr, offs, mask, CT, BF16)
    else:
        grad_s_bar = tl.zeros([BLOCK], dtype=CT)
    _store(grad_ptr, offs, g + grad_s_bar * h, mask, BF16)


@autotune(_CONFIGS, key=["N"])
@triton.jit(do_not_specialize=_PARAMS[:3] + _PARAMS[4:])
def _hard_concrete_l0_kernel(grad_ptr, la_ptr, out_ptr, N, beta_bits, gamma_bits, zeta_bits, eps_bits,
                             BACKWARD: tl.constexpr, BF16: tl.constexpr, FP64: tl.constexpr, BLOCK: tl.constexpr):
    CT: tl.constexpr = tl.float64 if FP64 else tl.float32
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    beta = _param(beta_bits, CT)
    gamma = _param(gamma_bits, CT)
    zeta = _param(zeta_bits, CT)
    eps = _param(eps_bits, CT)
    one_minus_eps = 1 - eps
    # pre = σ(log α − β·log(−γ/ζ)), the probability that the gate is non-zero.
    shift = beta * tl.log(_div(-gamma, zeta, CT))
    pre = _sigmoid(_load(la_ptr, offs, mask, CT, BF16) - shift, CT)
    if BACKWARD:
        grad = _load(grad_ptr, offs, mask, CT, BF16)
        out = tl.where((pre >= eps) & (pre <= one_minus_eps), grad * pre * (1 - pre), 0)
    else:
        out = tl.where(pre < eps, eps, tl.where(pre > one_minus_eps, one_minus_eps, pre))
    _store(out_ptr, offs, out, mask, BF16)


# ----------------------------------------------------------------------------------------------
# Launchers: torch ops and wrap_triton launches only (traceable by make_fx / FakeTensor).


def _is_fp64(dtype: torch.dtype) -> bool:
    """Whether the kernels compute in fp64 (fp64 inputs) rather than fp32 (fp32/fp16/bf16 inputs)."""
    if not dtype.is_floating_point:
        raise TypeError(f"msa_fast.kernels.hard_concrete: log_alpha must be floating, got {dtype}")
    return dtype == torch.float64


def _like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``t`` broadcast to ``ref``'s shape, in ``ref``'s dtype and device, contiguous."""
    return t.to(device=ref.device, dtype=ref.dtype).expand(ref.shape).contiguous()


def _grid(n: int):
    return lambda meta: (triton.cdiv(n, meta["BLOCK"]),)


def _noise_args(la, u, seed, training, who):
    """(u tensor or la, seed tensor or la, HAS_U): the noise inputs of a kernel launch."""
    has_u = training and u is not None
    u_t = _like(u, la) if has_u else la
    if training and not has_u:
        if seed is None:
            raise ValueError(f"msa_fast.kernels.{who}: training without u needs a 0-dim int64 seed")
        seed_t = seed.reshape(()).to(device=la.device, dtype=torch.int64)
    else:
        seed_t = la
    return u_t, seed_t, has_u


def hard_concrete_forward(log_alpha: torch.Tensor, u: Optional[torch.Tensor], seed: Optional[torch.Tensor],
                          beta: float, gamma: float, zeta: float, threshold: Optional[float], training: bool,
                          eps: float, with_s_bar: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(z, s_bar)`` of the Hard Concrete gate; ``s_bar`` is ``empty(0)`` unless ``with_s_bar``.

    Outputs are contiguous, in ``log_alpha``'s shape and dtype. ``u`` broadcasts to ``log_alpha``; without it,
    training draws the Philox uniform of ``(seed, flat index)``. Parameter validation is the caller's.
    """
    fp64 = _is_fp64(log_alpha.dtype)
    la = log_alpha.contiguous()
    z = torch.empty_like(la, memory_format=torch.contiguous_format)
    s_bar = (torch.empty_like(la, memory_format=torch.contiguous_format) if with_s_bar
             else torch.empty((0,), dtype=la.dtype, device=la.device))
    n = la.numel()
    if n == 0:
        return z, s_bar
    u_t, seed_t, has_u = _noise_args(la, u, seed, training, "hard_concrete_forward")
    torch.library.wrap_triton(_hard_concrete_forward_kernel)[_grid(n)](
        _io(la), _io(u_t), seed_t, _io(z), _io(s_bar if with_s_bar else z), n, _bits(beta), _bits(gamma),
        _bits(zeta), _bits(0.0 if threshold is None else threshold), _bits(eps),
        HAS_U=has_u, HAS_THRESHOLD=threshold is not None, TRAINING=bool(training), WITH_S_BAR=bool(with_s_bar),
        BF16=la.dtype == torch.bfloat16, FP64=fp64)
    return z, s_bar


def hard_concrete_backward(grad_z: torch.Tensor, grad_s_bar: Optional[torch.Tensor], log_alpha: torch.Tensor,
                           u: Optional[torch.Tensor], seed: Optional[torch.Tensor], beta: float, gamma: float,
                           zeta: float, threshold: Optional[float], training: bool, eps: float,
                           ste: str) -> torch.Tensor:
    """Gradient with respect to ``log_alpha`` (in its dtype, contiguous), recomputing s from ``u`` or the seed.

    ``grad_s_bar`` may be None or empty (no s̄ gradient); ``ste`` is ``'clamp'`` or ``'sbar'``.
    """
    if ste not in ("clamp", "sbar"):
        raise ValueError(f"msa_fast.kernels.hard_concrete_backward: ste must be 'clamp' or 'sbar', got {ste!r}")
    fp64 = _is_fp64(log_alpha.dtype)
    la = log_alpha.contiguous()
    grad = torch.empty_like(la, memory_format=torch.contiguous_format)
    n = la.numel()
    if n == 0:
        return grad
    gz = _like(grad_z, la)
    has_gsb = grad_s_bar is not None and grad_s_bar.numel() > 0
    gsb = _like(grad_s_bar, la) if has_gsb else gz
    u_t, seed_t, has_u = _noise_args(la, u, seed, training, "hard_concrete_backward")
    torch.library.wrap_triton(_hard_concrete_backward_kernel)[_grid(n)](
        _io(gz), _io(gsb), _io(la), _io(u_t), seed_t, _io(grad), n, _bits(beta), _bits(gamma), _bits(zeta),
        _bits(0.0 if threshold is None else threshold), _bits(eps),
        HAS_GSB=has_gsb, HAS_U=has_u, HAS_THRESHOLD=threshold is not None, TRAINING=bool(training),
        STE_SBAR=ste == "sbar", BF16=la.dtype == torch.bfloat16, FP64=fp64)
    return grad


def _l0(grad, log_alpha, beta, gamma, zeta, eps, backward):
    fp64 = _is_fp64(log_alpha.dtype)
    la = log_alpha.contiguous()
    out = torch.empty_like(la, memory_format=torch.contiguous_format)
    n = la.numel()
    if n == 0:
        return out
    g = _like(grad, la) if backward else la
    torch.library.wrap_triton(_hard_concrete_l0_kernel)[_grid(n)](
        _io(g), _io(la), _io(out), n, _bits(beta), _bits(gamma), _bits(zeta), _bits(eps),
        BACKWARD=backward, BF16=la.dtype == torch.bfloat16, FP64=fp64)
    return out


def hard_concrete_l0_forward(log_alpha: torch.Tensor, beta: float, gamma: float, zeta: float,
                             eps: float) -> torch.Tensor:
    """``clamp(σ(log α − β·log(−γ/ζ)), eps, 1 − eps)`` elementwise, in ``log_alpha``'s dtype."""
    return _l0(None, log_alpha, beta, gamma, zeta, eps, backward=False)


def hard_concrete_l0_backward(grad: torch.Tensor, log_alpha: torch.Tensor, beta: float, gamma: float, zeta: float,
                              eps: float) -> torch.Tensor:
    """``grad·p(1 − p)`` where ``p`` lies in ``[eps, 1 − eps]``, else 0 (the clamp's gradient)."""
    return _l0(grad, log_alpha, beta, gamma, zeta, eps, backward=True)
