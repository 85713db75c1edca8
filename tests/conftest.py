"""Test-wide setup. The environment switches must be set before triton or msa_fast is imported:
Triton kernels run on CPU under the interpreter, fp32 tile dots are IEEE, autotuning uses one config
(engineering.md §4)."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("MSA_FAST_INPUT_PRECISION", "ieee")
os.environ.setdefault("MSA_FAST_AUTOTUNE", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.backends.cuda.matmul.allow_tf32 = False


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield
