"""Dtype transport shared by the Triton kernels: doubles passed as int64 bit patterns (Triton's float
scalars are fp32), bf16 moved as int16 bit patterns with exact widening and round-to-nearest-even
narrowing (the interpreter's own bf16 casts truncate), IEEE division."""

from __future__ import annotations

import struct

import torch
import triton
import triton.language as tl


@triton.jit
def param(bits, CT: tl.constexpr):
    """A Python double passed as its int64 bit pattern, rounded to the compute type."""
    return bits.to(tl.int64).to(tl.float64, bitcast=True).to(CT)


@triton.jit
def load(ptr, offs, mask, CT: tl.constexpr, BF16: tl.constexpr):
    """Masked load (0 outside) widened to the compute type; bf16 comes as int16 bit patterns."""
    if BF16:
        raw = tl.load(ptr + offs, mask=mask, other=0)
        return (raw.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True).to(CT)
    else:
        return tl.load(ptr + offs, mask=mask, other=0).to(CT)


@triton.jit
def store(ptr, offs, v, mask, BF16: tl.constexpr):
    """Store in the pointer's dtype; bf16 as round-to-nearest-even int16 bit patterns (NaN → 0x7FC0)."""
    if BF16:
        w = v.to(tl.float32).to(tl.uint32, bitcast=True)
        rounded = (w + (((w >> 16) & 1) + 0x7FFF)) >> 16
        h = tl.where(v != v, 0x7FC0, rounded)
        tl.store(ptr + offs, h.to(tl.uint16).to(tl.int16, bitcast=True), mask=mask)
    else:
        tl.store(ptr + offs, v.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def div(a, b, CT: tl.constexpr):
    """IEEE division (round to nearest) in the compute type."""
    if CT == tl.float32:
        return tl.div_rn(a, b)
    else:
        return a / b


def bits(v: float) -> int:
    """The int64 bit pattern of a Python double."""
    return struct.unpack("<q", struct.pack("<d", float(v)))[0]


def io(t: torch.Tensor) -> torch.Tensor:
    """The tensor a kernel reads or writes: bf16 as its int16 bit patterns, anything else unchanged."""
    return t.view(torch.int16) if t.dtype == torch.bfloat16 else t
