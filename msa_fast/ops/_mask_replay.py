"""Fake and autograd registrations shared by the random masking ops (``cutoff``, ``dropout``).

Both compute ``y = x ⊙ m`` (times a constant) where the mask ``m`` is a pure function of the op's other
arguments (seed, rate, mode, lengths, ...): the derivative is the same op applied to the upstream
gradient with the same arguments, so backward replays the op and no mask is ever stored — only the
other arguments (the 0-dim seed, optional lengths) are saved.
"""

from __future__ import annotations

import torch

from msa_fast.ops import _dispatch


def _fake(x, *args):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    args = inputs[1:]
    ctx.tensor_slots = tuple(i for i, a in enumerate(args) if a is None or isinstance(a, torch.Tensor))
    ctx.save_for_backward(*(args[i] for i in ctx.tensor_slots))
    ctx.args = args  # non-tensor arguments are read back from here; tensors come from saved_tensors


def _replay(op):
    def backward(ctx, grad):
        args = list(ctx.args)
        for i, saved in zip(ctx.tensor_slots, ctx.saved_tensors):
            args[i] = saved
        return (op(grad, *args),) + (None,) * len(args)

    return backward


def register(native_op: str, triton_op: str) -> None:
    """Fake kernel of the C++/CUDA op (when the extension is built) and replay autograd of both ops."""
    if _dispatch.native_built():
        torch.library.register_fake(f"msa_fast::{native_op}", _fake)
        torch.library.register_autograd(f"msa_fast::{native_op}", _replay(getattr(torch.ops.msa_fast, native_op).default),
                                        setup_context=_setup_context)
    torch.library.register_autograd(f"msa_fast::{triton_op}", _replay(getattr(torch.ops.msa_fast, triton_op).default),
                                    setup_context=_setup_context)
