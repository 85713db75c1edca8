"""Bit-exact comparison helpers for the random ops' tests (cutoff, dropout): every backend must
reproduce the reference's bit patterns, NaN payloads and signed zeros included."""

import torch


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def assert_bit_equal(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(bits(a.contiguous()), bits(b.contiguous())), "outputs differ bit-wise"


def make(shape, dtype=torch.float32, device="cpu"):
    """Standard-normal values drawn in fp32 and cast, so every dtype sees the same numbers."""
    return torch.randn(shape, dtype=torch.float32, device=device).to(dtype)
