"""Cutoff augmentation (Shen et al. 2020, https://github.com/dinghanshen/Cutoff; MMCL §3.2): ops.md §9.

Side by side: the reference (the spec, pure PyTorch), the argument checks, the autograd and fake
registrations of the C++/CUDA op ``msa_fast::cutoff`` (csrc/cpu/cutoff.cpp, csrc/cuda/cutoff.cu), the
Triton op ``msa_fast::cutoff_triton`` (kernels/cutoff.py) and the public :func:`cutoff`.

Cut entries become exactly 0 by selection (NaN/Inf at a cut position become 0); no rescaling. The
cut set is a pure function of (seed, sample, draw), so backward re-applies the same cut to the
upstream gradient and no mask is ever stored.
"""

from __future__ import annotations

import torch

from msa_fast.ops import _config, _dispatch, _mask_replay, philox

_MODES = ("feature", "token", "span")
_SIDES = ("right", "left")


# ----------------------------------------------------------------------------------------------
# Argument checks shared by every backend (the C++ kernels repeat them for direct torch.ops calls).


def _check(x, ratio, mode, lengths, padding_side, check_finite) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"msa_fast.ops.cutoff: x must be a floating tensor, got {got}")
    if x.dim() != 3:
        raise ValueError(f"msa_fast.ops.cutoff: x must be [B, L, D], got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"msa_fast.ops.cutoff: x is empty (shape {tuple(x.shape)})")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
        raise ValueError(f"msa_fast.ops.cutoff: ratio must be a float in [0, 1], got {ratio!r}")
    if mode not in _MODES:
        raise ValueError(f"msa_fast.ops.cutoff: mode must be one of {_MODES}, got {mode!r}")
    if padding_side not in _SIDES:
        raise ValueError(f"msa_fast.ops.cutoff: padding_side must be one of {_SIDES}, got {padding_side!r}")
    if check_finite or _config.check_finite_default():
        _dispatch.check_finite("cutoff", x=x)
    B, L, D = x.shape
    if B * max(D, L) >= philox.OFFSET_LIMIT:
        raise ValueError(f"msa_fast.ops.cutoff: B·max(D, L) = {B * max(D, L)} reaches 2**32, the Philox offset "
                         f"limit (shape {tuple(x.shape)}); split the batch")
    if lengths is None:
        return
    if not isinstance(lengths, torch.Tensor) or lengths.dtype not in (torch.int32, torch.int64):
        got = lengths.dtype if isinstance(lengths, torch.Tensor) else type(lengths).__name__
        raise TypeError(f"msa_fast.ops.cutoff: lengths must be an int32/int64 tensor, got {got}")
    if lengths.shape != (B,):
        raise ValueError(f"msa_fast.ops.cutoff: lengths must be [B] = [{B}], got shape {tuple(lengths.shape)}")
    if lengths.device != x.device:
        raise ValueError(f"msa_fast.ops.cutoff: lengths is on {lengths.device} but x is on {x.device}")
    if not torch.compiler.is_compiling():
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo < 0 or hi > L:
            raise ValueError(f"msa_fast.ops.cutoff: lengths must lie in [0, L] = [0, {L}], got values in [{lo}, {hi}]")


# ----------------------------------------------------------------------------------------------
# Reference (ops.md §9 "Reference"): Philox in integer PyTorch, index math as specified, torch.where.


def _lengths_or_full(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    B, L, _ = x.shape
    if lengths is None:
        return torch.full((B,), L, dtype=torch.int64, device=x.device)
    return lengths.to(torch.int64)


def _valid_begin(lengths: torch.Tensor, L: int, padding_side: str) -> torch.Tensor:
    return L - lengths if padding_side == "left" else torch.zeros_like(lengths)


def _cut_steps(x, ratio, mode, seed, lengths, padding_side) -> torch.Tensor:
    """bool [B, L]: the time steps a token or span cut zeroes."""
    B, L, _ = x.shape
    length = _lengths_or_full(x, lengths)
    count = (length.to(torch.float64) * ratio).to(torch.int64)  # int(len·ratio), as Python computes it
    begin = _valid_begin(length, L, padding_side)
    steps = torch.arange(L, device=x.device)
    samples = torch.arange(B, device=x.device, dtype=torch.int64)
    if mode == "token":
        draws = torch.arange(L, device=x.device, dtype=torch.int64)
        r = philox.randint(seed, samples[:, None] * L + draws[None, :])
        pos = begin[:, None] + philox.index(r, length[:, None])
        pos = torch.where(draws[None, :] < count[:, None], pos, L)  # unused draws land in a spare column
        cut = torch.zeros(B, L + 1, dtype=torch.bool, device=x.device)
        return cut.scatter(1, pos, True)[:, :L]
    r = philox.randint(seed, samples)
    room = length - count
    start = torch.where(room >= 1, philox.index(r, room.clamp(min=1)), 0) + begin
    return (steps[None, :] >= start[:, None]) & (steps[None, :] < (start + count)[:, None])


def _cut_features(x, ratio, seed) -> torch.Tensor:
    """bool [B, D]: the features a feature cut zeroes (at every time step, padding included)."""
    B, _, D = x.shape
    n = int(D * ratio)
    cut = torch.zeros(B, D, dtype=torch.bool, device=x.device)
    if n == 0:
        return cut
    draws = torch.arange(n, device=x.device, dtype=torch.int64)
    samples = torch.arange(B, device=x.device, dtype=torch.int64)
    idx = philox.index(philox.randint(seed, samples[:, None] * D + draws[None, :]), D)
    return cut.scatter(1, idx, True)


def _reference_forward(x, ratio, mode, seed, lengths, padding_side):
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    if mode == "feature":
        return torch.where(_cut_features(x, ratio, seed)[:, None, :], zero, x)
    return torch.where(_cut_steps(x, ratio, mode, seed, lengths, padding_side)[:, :, None], zero, x)


def valid_mask(x, ratio, mode, seed, lengths=None, padding_side="right") -> torch.Tensor:
    """bool [B, L]: valid steps (from lengths and padding side) minus the steps a token/span cut cleared."""
    B, L, _ = x.shape
    length = _lengths_or_full(x, lengths)
    begin = _valid_begin(length, L, padding_side)
    steps = torch.arange(L, device=x.device)[None, :]
    valid = (steps >= begin[:, None]) & (steps < (begin + length)[:, None])
    if mode == "feature":
        return valid
    return valid & ~_cut_steps(x, ratio, mode, seed, lengths, padding_side)


def _finish(out, x, ratio, mode, seed, lengths, padding_side, return_mask, return_seed):
    if not (return_mask or return_seed):
        return out
    result = [out]
    if return_mask:
        result.append(valid_mask(x, ratio, mode, seed, lengths, padding_side))
    if return_seed:
        result.append(seed)
    return tuple(result)


def cutoff_reference(x, ratio, mode="feature", seed=None, lengths=None, *, padding_side="right",
                     return_mask=False, return_seed=False, check_finite=False):
    """The pure-PyTorch specification of :func:`cutoff` (autograd through ``torch.where``)."""
    _check(x, ratio, mode, lengths, padding_side, check_finite)
    seed = philox.seed_tensor(seed, "cutoff")
    out = _reference_forward(x, float(ratio), mode, seed, lengths, padding_side)
    return _finish(out, x, ratio, mode, seed, lengths, padding_side, return_mask, return_seed)


# ----------------------------------------------------------------------------------------------
# Registrations: the Triton op; fake kernels and autograd (mask replay) in _mask_replay.


@torch.library.triton_op("msa_fast::cutoff_triton", mutates_args=())
def _cutoff_triton(x: torch.Tensor, ratio: float, mode: str, seed: torch.Tensor, lengths: torch.Tensor | None,
                   padding_side: str) -> torch.Tensor:
    from msa_fast.kernels.cutoff import cutoff_forward

    return cutoff_forward(x, ratio, mode, seed, lengths, padding_side)


_mask_replay.register("cutoff", "cutoff_triton")  # backward re-cuts the gradient with the same seed


# ----------------------------------------------------------------------------------------------
# Public op.


def cutoff(x, ratio, mode="feature", seed=None, lengths=None, *, padding_side="right", return_mask=False,
           return_seed=False, check_finite=False, backend="auto"):
    """Cutoff augmentation: zero features (``'feature'``), time steps (``'token'``) or one span (``'span'``).

    Args:
        x: ``[B, L, D]`` float tensor (fp32/fp16/bf16; fp64 runs on the reference under ``auto``).
        ratio: fraction in [0, 1]; feature mode draws ``int(D·ratio)`` features per sample with
            replacement, token mode ``int(len·ratio)`` steps, span mode one span of ``int(len·ratio)``.
        mode: ``'feature'`` (MMCL's choice), ``'token'`` or ``'span'``.
        seed: Python int in [0, 2**63) or 0-dim int64 tensor; ``None`` draws one from torch's default
            generator, so ``torch.manual_seed`` makes runs reproducible. Same seed → same cut on
            every backend, bit for bit.
        lengths: ``[B]`` int valid lengths (token and span modes never touch padding).
        padding_side: ``'right'`` (valid steps ``[0, len)``) or ``'left'`` (``[L − len, L)``).
        return_mask: also return the bool ``[B, L]`` valid mask with cut steps cleared.
        return_seed: also return the seed used (0-dim int64 tensor).
        check_finite: raise ValueError if x has NaN/Inf (also ``MSA_FAST_CHECK_FINITE=1``); otherwise
            values pass through, and a NaN at a cut position becomes 0.
        backend: ``'auto'``, ``'reference'``, ``'cpp'``, ``'triton'`` or ``'cuda'``.

    Returns the cut tensor (x's shape and dtype), followed by the mask and/or seed if asked for.
    """
    _check(x, ratio, mode, lengths, padding_side, check_finite)
    chosen = _dispatch.resolve("cutoff", backend, x, native_op="cutoff", triton_op="cutoff_triton")
    seed = philox.seed_tensor(seed, "cutoff")
    ratio = float(ratio)
    if chosen == "reference":
        out = _reference_forward(x, ratio, mode, seed, lengths, padding_side)
    elif chosen == "triton":
        out = torch.ops.msa_fast.cutoff_triton(x, ratio, mode, seed, lengths, padding_side)
    else:
        out = torch.ops.msa_fast.cutoff(x, ratio, mode, seed, lengths, padding_side)
    return _finish(out, x, ratio, mode, seed, lengths, padding_side, return_mask, return_seed)
