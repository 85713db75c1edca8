"""Philox draws for the Triton kernels (ops.md §0.8).

``tl.randint(seed, offset)`` is Philox4x32-10 with key ``(lo32(seed), hi32(seed))`` and counter
``(offset, 0, 0, 0)``, returning word ``c0``: the same 32-bit ``r`` as ``csrc/common/philox.h``. The helpers
below turn ``r`` into indices and uniforms with the exact integer rules of the spec, never with ``tl.rand``
(whose float conversion differs and can return 0).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["uniform_from_bits", "index_from_bits", "philox_randint"]


@triton.jit
def uniform_from_bits(r):
    """``u = (2·(r >> 9) + 1)·2⁻²⁴`` as fp32 (exact; never 0 or 1). ``r``: uint32 from ``tl.randint``."""
    m = ((r.to(tl.uint64) >> 9) * 2 + 1).to(tl.float32)  # < 2^24: exact in fp32
    return m * 5.9604644775390625e-08  # 2^-24


@triton.jit
def index_from_bits(r, n):
    """``(r·n) >> 32`` in uint64 (Lemire's multiply-shift): an index in ``[0, n)`` as int64."""
    return ((r.to(tl.uint64) * n.to(tl.uint64)) >> 32).to(tl.int64)


@triton.jit
def _philox_randint_kernel(seed_ptr, out_ptr, offset, count, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    t = pid * BLOCK + tl.arange(0, BLOCK)
    seed = tl.load(seed_ptr)
    r = tl.randint(seed, (offset + t).to(tl.uint32))
    tl.store(out_ptr + t, r.to(tl.uint64).to(tl.int64), mask=t < count)


def philox_randint(seed: torch.Tensor, offset: int, count: int, *, device=None) -> torch.Tensor:
    """``r`` for offsets ``offset … offset + count − 1`` as int64 (the ``tl.randint`` stream of ``seed``).

    ``seed``: 0-dim (or one-element) int64 tensor, moved to ``device`` (default: its own device).
    Mirrors ``torch.ops.msa_fast.philox_randint`` for cross-backend tests.
    """
    if offset < 0 or count < 0 or offset + count > 2**32:
        raise ValueError(f"msa_fast.kernels.philox_randint: offsets must stay below 2^32, got offset {offset} "
                         f"count {count}")
    device = seed.device if device is None else torch.device(device)
    seed_t = seed.reshape(()).to(device=device, dtype=torch.int64)
    out = torch.empty((count,), dtype=torch.int64, device=device)
    if count == 0:
        return out
    block = 1024

    torch.library.wrap_triton(_philox_randint_kernel)[(triton.cdiv(count, block),)](
        seed_t, out, offset, count, BLOCK=block)
    return out
