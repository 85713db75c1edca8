"""cutoff (ops.md §9): every backend bit-exact against the reference, gradients, masks, statistics,
opcheck, torch.compile, TorchScript and bad inputs."""

import math

import pytest
import torch

import msa_fast.ops as ops
from msa_fast.ops import reference
from tests.ops.bitwise import assert_bit_equal, make
from tests.ops.backends import BACKENDS

MODES = ["feature", "token", "span"]
SIDES = ["right", "left"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
SHAPES = [(3, 7, 5), (2, 13, 74), (1, 1, 1), (4, 1, 9)]


def lengths_for(B, L, device="cpu"):
    # covers 0, L and values between
    return torch.tensor([[0, L, max(L // 2, 1), L - 1][b % 4] for b in range(B)], device=device).clamp(0, L)


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ratio", [0.0, 0.2, 0.5, 1.0])
def test_forward_bit_exact(backend, device, mode, shape, ratio):
    x = make(shape, device=device)
    lengths = lengths_for(shape[0], shape[1], device) if mode != "feature" else None
    for side in SIDES:
        expected = reference.cutoff(x, ratio, mode, 123, lengths, padding_side=side)
        assert_bit_equal(ops.cutoff(x, ratio, mode, 123, lengths, padding_side=side, backend=backend), expected)


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_dtypes_bit_exact_and_dtype_kept(backend, device, dtype, mode):
    x = make((3, 11, 6), dtype, device)
    lengths = torch.tensor([11, 4, 0], device=device)
    out = ops.cutoff(x, 0.4, mode, 9, lengths, backend=backend)
    assert out.dtype == dtype
    assert_bit_equal(out, reference.cutoff(x, 0.4, mode, 9, lengths))


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("seed", [0, 1, 2**63 - 1])
def test_seeds_bit_exact(backend, device, seed):
    x = make((5, 9, 33), device=device)
    for mode in MODES:
        assert_bit_equal(ops.cutoff(x, 0.3, mode, seed, backend=backend), reference.cutoff(x, 0.3, mode, seed))


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_gradient_is_the_cut_upstream_gradient(backend, device, mode):
    x = make((3, 8, 10), device=device).requires_grad_()
    lengths = torch.tensor([8, 5, 2], device=device)
    out = ops.cutoff(x, 0.3, mode, 77, lengths, padding_side="left", backend=backend)
    upstream = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, x, upstream)
    assert_bit_equal(grad, reference.cutoff(upstream, 0.3, mode, 77, lengths, padding_side="left"))
    x_ref = x.detach().clone().requires_grad_()
    ref_out = reference.cutoff(x_ref, 0.3, mode, 77, lengths, padding_side="left")
    (ref_grad,) = torch.autograd.grad(ref_out, x_ref, upstream)
    assert_bit_equal(grad, ref_grad)


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_non_contiguous_input(backend, device):
    base = make((9, 4, 3), device=device)
    x = base.transpose(0, 2)  # [3, 4, 9], non-contiguous
    assert not x.is_contiguous()
    for mode in MODES:
        assert_bit_equal(ops.cutoff(x, 0.5, mode, 4, backend=backend), reference.cutoff(x, 0.5, mode, 4))


@pytest.mark.parametrize("backend, device", [p for p in BACKENDS if p.values[0] != "triton"])
def test_gradcheck_fp64(backend, device):
    x = torch.randn(2, 5, 4, dtype=torch.float64, device=device, requires_grad=True)
    for mode in MODES:
        assert torch.autograd.gradcheck(lambda t: ops.cutoff(t, 0.5, mode, 3, backend=backend), (x,))
        assert torch.autograd.gradcheck(lambda t: reference.cutoff(t, 0.5, mode, 3), (x,))


def test_gradgradcheck_cpp():
    x = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: ops.cutoff(t, 0.5, "feature", 3, backend="cpp"), (x,))


# ---- semantics ---------------------------------------------------------------------------------


def test_ratio_zero_and_small_d_ratio_are_identity():
    x = make((4, 6, 3))
    for mode in MODES:
        assert_bit_equal(ops.cutoff(x, 0.0, mode, 1), x)
    assert_bit_equal(ops.cutoff(x, 0.3, "feature", 1), x)  # int(3·0.3) = 0 draws
    assert_bit_equal(ops.cutoff(x, 0.1, "token", 1), x)  # int(6·0.1) = 0


def test_feature_cut_is_the_same_columns_at_every_step_including_padding():
    x = make((6, 12, 40)) + 10.0  # no natural zeros
    out = ops.cutoff(x, 0.25, "feature", 5, torch.tensor([12, 3, 0, 7, 12, 1]))
    zero_cols = out == 0
    assert torch.equal(zero_cols, zero_cols[:, :1, :].expand_as(zero_cols))
    per_sample = zero_cols[:, 0, :].sum(1)
    assert (per_sample >= 1).all() and (per_sample <= int(40 * 0.25)).all()
    assert not torch.equal(zero_cols[0, 0], zero_cols[1, 0])  # samples draw independently


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("mode", ["token", "span"])
def test_step_cuts_never_touch_padding_and_mask_matches(mode, side):
    B, L = 64, 20
    x = make((B, L, 3)) + 10.0
    lengths = torch.randint(0, L + 1, (B,))
    out, mask = ops.cutoff(x, 0.5, mode, 11, lengths, padding_side=side, return_mask=True)
    steps = torch.arange(L)[None, :]
    begin = (L - lengths)[:, None] if side == "left" else torch.zeros(B, 1, dtype=torch.long)
    valid = (steps >= begin) & (steps < begin + lengths[:, None])
    cut_rows = (out == 0).all(-1)
    assert not (cut_rows & ~valid).any(), "a padding step was cut"
    assert torch.equal(mask, valid & ~cut_rows)
    counts = cut_rows.sum(1)
    expected = (lengths.double() * 0.5).long()
    if mode == "span":
        assert torch.equal(counts, expected)
        idx = cut_rows.nonzero()
        for b in range(B):  # one contiguous block
            rows = idx[idx[:, 0] == b, 1]
            if len(rows):
                assert rows.max() - rows.min() + 1 == len(rows)
    else:
        assert (counts <= expected).all() and (counts[expected > 0] >= 1).all()


def test_feature_mask_is_the_valid_mask():
    x = make((3, 5, 8))
    lengths = torch.tensor([5, 2, 0])
    _, mask = ops.cutoff(x, 0.5, "feature", 1, lengths, return_mask=True)
    assert mask.tolist() == [[True] * 5, [True, True, False, False, False], [False] * 5]


@pytest.mark.slow
@pytest.mark.parametrize("ratio", [0.2, 1.0])
def test_feature_cut_fraction_statistics(ratio):
    B, D = 4000, 50
    x = torch.ones(B, 1, D)
    zeroed = (ops.cutoff(x, ratio, "feature", 2024) == 0).double().mean().item()
    n = int(D * ratio)
    expected = 1 - (1 - 1 / D) ** n  # draws with replacement
    assert zeroed == pytest.approx(expected, abs=4 * math.sqrt(expected * (1 - expected) / (B * D)) + 1e-3)
    if ratio == 1.0:
        assert 0.62 < zeroed < 0.65


def test_selection_not_multiplication():
    x = make((2, 3, 16))
    x[..., :] = float("nan")
    out = ops.cutoff(x, 0.5, "feature", 3)
    assert ((out == 0) | out.isnan()).all()
    assert (out == 0).any() and out.isnan().any()  # cut NaNs become 0, the rest pass through
    assert torch.equal((out == 0), (reference.cutoff(x, 0.5, "feature", 3) == 0))


def test_check_finite_raises():
    x = make((2, 3, 4))
    x[1, 2, 3] = float("inf")
    with pytest.raises(ValueError, match=r"cutoff: x has 1 non-finite"):
        ops.cutoff(x, 0.5, check_finite=True)


def test_seed_none_reproducible_and_returned():
    x = make((3, 4, 20))
    torch.manual_seed(0)
    a, seed = ops.cutoff(x, 0.5, return_seed=True)
    torch.manual_seed(0)
    b = ops.cutoff(x, 0.5)
    assert_bit_equal(a, b)
    assert_bit_equal(a, ops.cutoff(x, 0.5, seed=int(seed)))
    assert_bit_equal(a, ops.cutoff(x, 0.5, seed=seed))


def test_no_mask_saved_for_backward():
    saved = []
    x = make((4, 16, 32)).requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        ops.cutoff(x, 0.2, "feature", 1, backend="cpp").sum().backward()
    assert all(t.numel() <= 1 for t in saved), [tuple(t.shape) for t in saved]  # only the 0-dim seed


def test_nn_module_train_and_eval():
    from msa_fast.nn import Cutoff

    layer = Cutoff(0.5, "token")
    x = make((2, 10, 4)) + 10
    assert (layer(x) == 0).any()
    layer.eval()
    assert layer(x) is x


# ---- registration: opcheck, torch.compile, TorchScript ------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_opcheck(mode):
    x = make((3, 5, 7)).requires_grad_()
    for args in [(x, 0.4, mode, torch.tensor(3), None, "right"),
                 (x, 0.4, mode, torch.tensor(3), torch.tensor([5, 2, 0]), "left")]:
        torch.library.opcheck(torch.ops.msa_fast.cutoff.default, args)


def test_torch_compile_fullgraph():
    def f(x, lengths):
        y = ops.cutoff(x, 0.3, "token", 5, lengths, backend="cpp")
        return (y * 2).sum()

    x = make((3, 8, 6)).requires_grad_()
    lengths = torch.tensor([8, 3, 0])
    compiled = torch.compile(f, fullgraph=True)
    out = compiled(x, lengths)
    (grad,) = torch.autograd.grad(out, x)
    x2 = x.detach().clone().requires_grad_()
    out2 = f(x2, lengths)
    (grad2,) = torch.autograd.grad(out2, x2)
    torch.testing.assert_close(out, out2)
    assert_bit_equal(grad, grad2)


def test_torchscript_calls_the_op():
    @torch.jit.script
    def scripted(x: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
        return torch.ops.msa_fast.cutoff(x, 0.5, "feature", seed, None, "right")

    x = make((2, 3, 10)).requires_grad_()
    out = scripted(x, torch.tensor(8))
    assert_bit_equal(out, reference.cutoff(x, 0.5, "feature", 8))
    out.sum().backward()
    assert_bit_equal(x.grad, reference.cutoff(torch.ones_like(x), 0.5, "feature", 8))


# ---- bad inputs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(ratio=-0.1), ValueError, "ratio"),
    (dict(ratio=1.5), ValueError, "ratio"),
    (dict(mode="word"), ValueError, "mode"),
    (dict(padding_side="middle"), ValueError, "padding_side"),
    (dict(lengths=torch.tensor([5, 6, 3])), ValueError, r"lengths must lie in \[0, L\] = \[0, 5\]"),
    (dict(lengths=torch.tensor([5, -1, 3])), ValueError, "lengths must lie"),
    (dict(lengths=torch.tensor([5, 5])), ValueError, r"lengths must be \[B\]"),
    (dict(lengths=torch.tensor([5.0, 5.0, 5.0])), TypeError, "lengths must be an int32/int64"),
    (dict(seed=-3), ValueError, "seed"),
    (dict(backend="gpu"), ValueError, "unknown backend"),
])
def test_bad_arguments(kwargs, error, match):
    args = dict(x=make((3, 5, 4)), ratio=0.2, mode="token")
    args.update(kwargs)
    with pytest.raises(error, match=match):
        ops.cutoff(**args)


@pytest.mark.parametrize("x, error, match", [
    (torch.ones(3, 5, 4, dtype=torch.int64), TypeError, "floating"),
    (torch.ones(5, 4), ValueError, r"\[B, L, D\]"),
    (torch.ones(0, 5, 4), ValueError, r"x is empty \(shape \(0, 5, 4\)\)"),
    (torch.ones(1, 1, 1).expand(2**22, 1, 2**10), ValueError, "2\\*\\*32"),
])
def test_bad_x(x, error, match):
    with pytest.raises(error, match=match):
        ops.cutoff(x, 0.2)
    with pytest.raises(error, match=match):
        reference.cutoff(x, 0.2)


def test_cpp_kernel_checks_direct_calls():
    with pytest.raises(ValueError, match="lengths must lie"):
        torch.ops.msa_fast.cutoff(make((2, 3, 4)), 0.5, "token", torch.tensor(1), torch.tensor([4, 1]), "right")
    with pytest.raises(ValueError, match="ratio"):
        torch.ops.msa_fast.cutoff(make((2, 3, 4)), 2.0, "token", torch.tensor(1), None, "right")


def test_forced_unavailable_backend_says_why():
    with pytest.raises(RuntimeError, match="cuda.*not available.*CUDA tensors"):
        ops.cutoff(make((2, 3, 4)), 0.2, backend="cuda")


def test_auto_routes_fp64_to_reference_and_forced_cpp_runs_fp64():
    x = make((2, 3, 8), torch.float64)
    assert_bit_equal(ops.cutoff(x, 0.5, seed=1), ops.cutoff(x, 0.5, seed=1, backend="cpp"))


_HUGE_PAGE_PROBE = """
import sys, torch
import msa_fast.ops as ops


def vm_flags_at(address):
    inside = False
    for line in open("/proc/self/smaps"):
        head = line.split()[0]
        if "-" in head and all(c in "0123456789abcdef-" for c in head):
            lo, hi = (int(v, 16) for v in head.split("-"))
            inside = lo <= address < hi
        elif inside and line.startswith("VmFlags:"):
            return line.split()[1:]
    return []


big = ops.cutoff(torch.zeros(64, 500, 300), 0.2, "feature", 1, backend="cpp")  # 36.6 MiB
small = ops.cutoff(torch.zeros(4, 50, 30), 0.2, "feature", 1, backend="cpp")
interior = (big.data_ptr() + 2**21 - 1) // 2**21 * 2**21
print("big", "hg" in vm_flags_at(interior), "small", "hg" in vm_flags_at(small.data_ptr()))
"""


def _thp_mode() -> str | None:
    try:
        text = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return None
    return text[text.index("[") + 1:text.index("]")]


@pytest.mark.skipif(_thp_mode() in (None, "never"), reason="no transparent huge pages on this machine")
def test_large_output_is_advised_as_huge_pages():
    """Outputs of 32 MiB and more come from fresh mmaps; their 2 MiB-aligned interior is advised as huge
    pages (csrc/cpu/output_pages.h) so the first writes do not fault once per 4 KiB page; small outputs
    are left alone. Run in a fresh process: other libraries in this one may advise the heap themselves."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _HUGE_PAGE_PROBE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["big", "True", "small", "False"], proc.stdout
