"""Dropout with a counter-based Philox mask (Srivastava et al. 2014). Not part of ops.md: this docstring is its spec.

Side by side: the reference (the spec, pure PyTorch), the argument checks, the autograd and fake
registrations of the C++/CUDA op ``msa_fast::dropout`` (csrc/cpu/dropout.cpp, csrc/cuda/dropout.cu), the
Triton op ``msa_fast::dropout_triton`` (kernels/dropout.py) and the public :func:`dropout`.

Why a dropout op in a contrastive-learning library: the models of msa_fast train with heavy dropout
(HyCon's MTE: attention dropout 0.5 on ``[B·heads, T, T]``), and on CPU drawing those masks is the largest
single cost of a training step — ``torch.bernoulli_`` in eager mode, a full Philox evaluation per
element in Inductor's generated code. Here every Philox block serves four elements, the mask is a pure
function of (seed, element index), and backward regenerates it instead of storing it.

Element ``i`` of the contiguous input is kept iff ``u ≥ p`` (fp32), where ``u`` is the uniform of word
``i mod 4`` of the Philox4x32-10 block at counter ``i div 4`` (``tl.randint4x(seed, i div 4)``); kept
elements are multiplied by ``1/(1 − p)`` in fp32 (fp64 for fp64 input), dropped ones are exactly 0
(selection: NaN/Inf at a dropped position become 0).
"""

from __future__ import annotations

import torch

from msa_fast.ops import _dispatch, _mask_replay, philox


# ----------------------------------------------------------------------------------------------
# Argument checks shared by every backend (the C++ kernels repeat them for direct torch.ops calls).


def _check(x, p) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"msa_fast.ops.dropout: x must be a floating tensor, got {got}")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"msa_fast.ops.dropout: p must be a float in [0, 1], got {p!r}")


# ----------------------------------------------------------------------------------------------
# Reference (the spec above): Philox in integer PyTorch, the keep rule, torch.where.


def block_words(counter: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """int64 ``[n, 4]``: the four output words of the Philox blocks at the 64-bit ``counter`` values [n]."""
    n = counter.numel()
    seed = seed.to(device=counter.device, dtype=torch.int64)
    words = philox.philox_block(counter & philox.MASK32, counter >> 32, torch.zeros_like(counter),
                                torch.zeros_like(counter), (seed & philox.MASK32).expand(n),
                                ((seed >> 32) & philox.MASK32).expand(n))
    return torch.stack(words, dim=-1)


def keep_mask(x: torch.Tensor, p: float, seed: torch.Tensor) -> torch.Tensor:
    """bool, x's shape: the elements dropout keeps for ``(p, seed)`` (row-major element order)."""
    element = torch.arange(x.numel(), device=x.device, dtype=torch.int64)
    r = block_words(element >> 2, seed).gather(-1, (element & 3)[:, None])[:, 0]
    keep = philox.uniform(r) >= torch.tensor(p, dtype=torch.float32, device=x.device)
    return keep.reshape(x.shape)


def _reference_forward(x, p, seed):
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    scale = 1.0 / (1.0 - p) if p < 1.0 else 0.0
    kept = x.to(compute) * torch.tensor(scale, dtype=compute, device=x.device)
    return torch.where(keep_mask(x, p, seed), kept, torch.zeros((), dtype=compute, device=x.device)).to(x.dtype)


def dropout_reference(x, p=0.5, seed=None, *, training=True, return_seed=False):
    """The pure-PyTorch specification of :func:`dropout` (autograd through ``torch.where``)."""
    _check(x, p)
    seed = philox.seed_tensor(seed, "dropout")
    out = _reference_forward(x, float(p), seed) if training else x
    return (out, seed) if return_seed else out


# ----------------------------------------------------------------------------------------------
# Registrations: the Triton op; fake kernels and autograd (mask replay) in _mask_replay.


@torch.library.triton_op("msa_fast::dropout_triton", mutates_args=())
def _dropout_triton(x: torch.Tensor, p: float, seed: torch.Tensor) -> torch.Tensor:
    from msa_fast.kernels.dropout import dropout_forward

    return dropout_forward(x, p, seed)


_mask_replay.register("dropout", "dropout_triton")  # backward re-drops the gradient with the same seed


# ----------------------------------------------------------------------------------------------
# Public op.


def dropout(x, p=0.5, seed=None, *, training=True, return_seed=False, backend="auto"):
    """Dropout: zero each element with probability ``p`` and scale the rest by ``1/(1 − p)``.

    Args:
        x: float tensor of any shape (fp32/fp16/bf16 with fp32 math; fp64 runs on the reference under
            ``auto``, or on the C++ kernel when asked for).
        p: drop probability in [0, 1]; ``p = 1`` gives zeros, ``p = 0`` a copy of x.
        seed: Python int in [0, 2**63) or 0-dim int64 tensor; ``None`` draws one from torch's default
            generator, so ``torch.manual_seed`` makes runs reproducible. Same seed → same mask on every
            backend, bit for bit; the mask is a function of (seed, element index) and is regenerated in
            backward, never stored.
        training: ``False`` returns x itself (as ``torch.nn.functional.dropout`` in eval).
        return_seed: also return the seed used (0-dim int64 tensor).
        backend: ``'auto'``, ``'reference'``, ``'cpp'``, ``'triton'`` or ``'cuda'``.

    Returns a tensor of x's shape and dtype (contiguous), and the seed if asked for.
    """
    _check(x, p)
    seed = philox.seed_tensor(seed, "dropout")
    p = float(p)
    if not training:
        out = x
    else:
        chosen = _dispatch.resolve("dropout", backend, x, native_op="dropout", triton_op="dropout_triton")
        if chosen == "reference":
            out = _reference_forward(x, p, seed)
        elif chosen == "triton":
            out = torch.ops.msa_fast.dropout_triton(x, p, seed)
        else:
            out = torch.ops.msa_fast.dropout(x, p, seed)
    return (out, seed) if return_seed else out
