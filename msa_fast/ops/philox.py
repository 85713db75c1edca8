"""Philox4x32-10 in integer PyTorch: the reference stream of the random ops (ops.md §0.8).

Bit-identical to ``csrc/common/philox.h`` and to ``tl.randint``. Everything is int64 arithmetic on
values below 2³², with 32×32→64-bit products split into 16-bit halves so nothing overflows int64;
it runs on any device and traces under torch.compile.
"""

from __future__ import annotations

import torch

_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
MASK32 = _MASK32 = 0xFFFFFFFF
SEED_LIMIT = 2**63
OFFSET_LIMIT = 2**32


def _mul_hi_lo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi32, lo32) of the 64-bit product a·b, for a < 2³² constant and b < 2³² int64 tensor."""
    lo_part = a * (b & 0xFFFF)  # < 2⁴⁸
    hi_part = a * (b >> 16)  # < 2⁴⁸
    hi = (hi_part + (lo_part >> 16)) >> 16
    lo = (lo_part + ((hi_part & 0xFFFF) << 16)) & _MASK32
    return hi, lo


def _mulhi(a: torch.Tensor, n: torch.Tensor | int) -> torch.Tensor:
    """(a·n) >> 32 for a, n < 2³² (Lemire's multiply-shift), without overflowing int64."""
    return ((a >> 16) * n + (((a & 0xFFFF) * n) >> 16)) >> 16


def philox_block(c0, c1, c2, c3, k0, k1):
    """The four output words of Philox4x32-10 for int64 tensors of 32-bit counter words and key."""
    for _ in range(10):
        hi1, lo1 = _mul_hi_lo(_M1, c2)
        hi0, lo0 = _mul_hi_lo(_M0, c0)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + _W0) & _MASK32
        k1 = (k1 + _W1) & _MASK32
    return c0, c1, c2, c3


def randint(seed: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """r = tl.randint(seed, offset) for an int64 tensor of offsets: int64 values in [0, 2³²)."""
    seed = seed.to(device=offsets.device, dtype=torch.int64)
    zero = torch.zeros_like(offsets)
    k0 = (seed & _MASK32).expand_as(offsets)
    k1 = ((seed >> 32) & _MASK32).expand_as(offsets)
    return philox_block(offsets, zero, zero, zero, k0, k1)[0]


def uniform(r: torch.Tensor) -> torch.Tensor:
    """u = (2·(r >> 9) + 1)·2⁻²⁴ as fp32: exact, in [2⁻²⁴, 1 − 2⁻²⁴]."""
    return (2 * (r >> 9) + 1).to(torch.float32) * 2.0**-24


def index(r: torch.Tensor, n: torch.Tensor | int) -> torch.Tensor:
    """An index in [0, n) from a draw: (r·n) >> 32 in unsigned 64-bit arithmetic."""
    return _mulhi(r, n)


def seed_tensor(seed, op: str) -> torch.Tensor:
    """The op's seed as a 0-dim int64 CPU tensor; None draws one from torch's default generator."""
    if seed is None:
        return torch.randint(0, SEED_LIMIT - 1, (), dtype=torch.int64)
    if isinstance(seed, torch.Tensor):
        if seed.numel() != 1 or seed.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"msa_fast.ops.{op}: seed must be a Python int or a 0-dim int64 tensor, "
                            f"got {seed.dtype} of shape {tuple(seed.shape)}")
        seed = seed.reshape(()).to(device="cpu", dtype=torch.int64)
        if not torch.compiler.is_compiling() and int(seed) < 0:
            raise ValueError(f"msa_fast.ops.{op}: seed must be non-negative, got {int(seed)}")
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"msa_fast.ops.{op}: seed must be a Python int or a 0-dim int64 tensor, got {type(seed).__name__}")
    if not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"msa_fast.ops.{op}: seed must lie in [0, 2**63), got {seed}")
    return torch.tensor(seed, dtype=torch.int64)
