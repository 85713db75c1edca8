"""(backend, device) pairs the op tests run against the reference: every fast backend this machine
can run — C++ on CPU, Triton under the interpreter on CPU, and CUDA/Triton on a GPU when present."""

import pytest
import torch

from msa_fast.ops import _dispatch


def fast_backends(native_op: str = "cutoff", triton_op: str | None = None) -> list:
    pairs = [("cpp", "cpu"), ("triton", "cpu")]
    if torch.cuda.is_available():
        pairs += [("cuda", "cuda"), ("triton", "cuda")]
    params = []
    for backend, device in pairs:
        reason = _dispatch._why_not(backend, torch.device(device), native_op, triton_op)
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        if backend == "triton":
            marks.append(pytest.mark.triton)
        params.append(pytest.param(backend, device, id=f"{backend}-{device}", marks=marks))
    return params


BACKENDS = fast_backends()
