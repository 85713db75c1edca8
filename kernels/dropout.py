"""Triton kernel of dropout (spec: msa_fast/ops/dropout.py), bit-identical to ``csrc/cpu/dropout.cpp``.

One program handles ``BLOCK`` Philox blocks = ``4·BLOCK`` elements: ``tl.randint4x(seed, n)`` for 64-bit
counters ``n`` gives the four words of block ``n`` (counter words ``(lo32(n), hi32(n), 0, 0)``), and word
``k`` decides element ``4n + k``. Math in fp32 (fp64 for fp64 tensors); the keep rule ``u ≥ p`` in fp32 with
the spec's exact uniform (``uniform_from_bits``); dropped elements are stored as 0 by selection. Dtype
transport (doubles as bit patterns, bf16 with round-to-nearest-even narrowing) is ``_io``'s. The seed
stays a device tensor (no ``.item()``), so the launcher traces under make_fx.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._autotune import autotune
from ._io import bits as _bits, io as _io, load as _load, param as _param, store as _store
from .philox import uniform_from_bits

__all__ = ["dropout_forward"]

# Each program streams 4·BLOCK elements; the best block size depends on the GPU, so the autotuner picks.
_CONFIGS = [
    triton.Config({"BLOCK": 256}, num_warps=4),
    triton.Config({"BLOCK": 512}, num_warps=4),
    triton.Config({"BLOCK": 1024}, num_warps=8),
]


@triton.jit
def _apply(x_ptr, out_ptr, e, r, p, scale, numel, CT: tl.constexpr, BF16: tl.constexpr):
    ok = e < numel
    v = _load(x_ptr, e, ok, CT, BF16) * scale
    _store(out_ptr, e, tl.where(uniform_from_bits(r) >= p, v, 0.0).to(CT), ok, BF16)


@autotune(_CONFIGS, key=["numel"])
@triton.jit
def _dropout_kernel(x_ptr, out_ptr, seed_ptr, numel, p_bits, scale_bits, CT: tl.constexpr, BF16: tl.constexpr,
                    BLOCK: tl.constexpr):
    n = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    seed = tl.load(seed_ptr)
    p = _param(p_bits, tl.float32)  # u is compared with fp32(p) on every backend
    scale = _param(scale_bits, CT)
    r0, r1, r2, r3 = tl.randint4x(seed, n)
    e = 4 * n
    _apply(x_ptr, out_ptr, e, r0, p, scale, numel, CT, BF16)
    _apply(x_ptr, out_ptr, e + 1, r1, p, scale, numel, CT, BF16)
    _apply(x_ptr, out_ptr, e + 2, r2, p, scale, numel, CT, BF16)
    _apply(x_ptr, out_ptr, e + 3, r3, p, scale, numel, CT, BF16)


def dropout_forward(x: torch.Tensor, p: float, seed: torch.Tensor) -> torch.Tensor:
    """Dropout of ``x`` (any shape) with the Philox stream of ``seed`` (0-dim int64); contiguous output.

    Value checks on ``p`` and the seed belong to the caller (``msa_fast.ops.dropout``): this launcher never
    reads tensor values on the host.
    """
    if not x.is_floating_point():
        raise TypeError(f"msa_fast.kernels.dropout: x must be a floating tensor, got {x.dtype}")
    p = float(p)
    x = x.contiguous()
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    numel = x.numel()
    if numel == 0:
        return out
    seed_t = seed.reshape(()).to(device=x.device, dtype=torch.int64)
    scale = 1.0 / (1.0 - p) if p < 1.0 else 0.0

    def grid(meta):
        return (triton.cdiv(triton.cdiv(numel, 4), meta["BLOCK"]),)

    torch.library.wrap_triton(_dropout_kernel)[grid](
        _io(x), _io(out), seed_t, numel, _bits(p), _bits(scale),
        CT=tl.float64 if x.dtype == torch.float64 else tl.float32, BF16=x.dtype == torch.bfloat16)
    return out
