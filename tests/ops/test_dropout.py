"""dropout (spec: msa_fast/ops/dropout.py): every backend bit-exact against the reference, gradients, the Philox element
layout, statistics, opcheck, torch.compile, TorchScript and bad inputs."""

import math

import pytest
import torch

import msa_fast.ops as ops
from msa_fast.ops import reference
from tests.ops.bitwise import assert_bit_equal, make
from tests.ops.backends import fast_backends

BACKENDS = fast_backends("dropout", "dropout_triton")
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
SHAPES = [(1,), (3,), (7, 5), (2, 13, 74), (4, 1, 9, 3), (1031,)]  # sizes not multiples of 4 on purpose


# ---- every backend against the reference --------------------------------------------------------


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_forward_bit_exact(backend, device, shape, p):
    x = make(shape, device=device)
    assert_bit_equal(ops.dropout(x, p, 123, backend=backend), reference.dropout(x, p, 123))


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dtypes_bit_exact_and_dtype_kept(backend, device, dtype):
    x = make((5, 37), dtype, device)
    out = ops.dropout(x, 0.3, 9, backend=backend)
    assert out.dtype == dtype
    assert_bit_equal(out, reference.dropout(x, 0.3, 9))


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("seed", [0, 1, 2**32 + 5, 2**63 - 1])
def test_seeds_bit_exact(backend, device, seed):
    x = make((9, 33), device=device)
    assert_bit_equal(ops.dropout(x, 0.4, seed, backend=backend), reference.dropout(x, 0.4, seed))


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_gradient_is_the_dropped_upstream_gradient(backend, device):
    x = make((6, 11), device=device).requires_grad_()
    out = ops.dropout(x, 0.35, 77, backend=backend)
    upstream = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, x, upstream)
    assert_bit_equal(grad, reference.dropout(upstream, 0.35, 77))
    x_ref = x.detach().clone().requires_grad_()
    (ref_grad,) = torch.autograd.grad(reference.dropout(x_ref, 0.35, 77), x_ref, upstream)
    assert_bit_equal(grad, ref_grad)


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_non_contiguous_input_uses_row_major_order(backend, device):
    x = make((9, 4, 3), device=device).transpose(0, 2)
    assert not x.is_contiguous()
    out = ops.dropout(x, 0.5, 4, backend=backend)
    assert_bit_equal(out, reference.dropout(x, 0.5, 4))
    assert_bit_equal(out, ops.dropout(x.contiguous(), 0.5, 4, backend=backend))


@pytest.mark.parametrize("backend, device", [p for p in BACKENDS if p.values[0] != "triton"])
def test_gradcheck_fp64(backend, device):
    x = torch.randn(3, 7, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ops.dropout(t, 0.4, 3, backend=backend), (x,))
    assert torch.autograd.gradcheck(lambda t: reference.dropout(t, 0.4, 3), (x,))


def test_gradcheck_fp32_against_fp64_gradient():
    x = torch.randn(4, 9, requires_grad=True)
    out = ops.dropout(x, 0.4, 3, backend="cpp")
    (g32,) = torch.autograd.grad(out.sum(), x)
    x64 = x.detach().double().requires_grad_()
    (g64,) = torch.autograd.grad(ops.dropout(x64, 0.4, 3, backend="cpp").sum(), x64)
    torch.testing.assert_close(g32.double(), g64)


def test_gradgradcheck_cpp():
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: ops.dropout(t, 0.5, 3, backend="cpp"), (x,))


# ---- semantics ---------------------------------------------------------------------------------


def test_element_i_uses_word_i_mod_4_of_philox_block_i_div_4():
    """The stream layout of msa_fast/ops/dropout.py, checked against the C++ Philox known-answer op."""
    seed = 2**40 + 12345
    x = torch.ones(4 * 6 + 3)
    out = ops.dropout(x, 0.5, seed, backend="cpp")
    for i in range(x.numel()):
        n = i // 4
        words = torch.tensor([n & 0xFFFFFFFF, n >> 32, 0, 0, seed & 0xFFFFFFFF, seed >> 32], dtype=torch.int64)
        r = int(torch.ops.msa_fast.philox_block(words)[i % 4])
        u = (2 * (r >> 9) + 1) * 2.0**-24
        assert (out[i] != 0) == (u >= 0.5), i


def _cpu_paths():
    paths = ["portable"]
    try:
        torch.ops.msa_fast.dropout_words(torch.tensor(0), 0, 1, "avx2")
        paths.append("avx2")
    except RuntimeError as e:  # no AVX2 on this CPU or build: the portable path is the one in use
        assert "no AVX2 path" in str(e)
    return paths


@pytest.mark.parametrize("path", _cpu_paths())
@pytest.mark.parametrize("seed, first, blocks", [(0, 0, 1), (123, 5, 97), (2**40 + 12345, 2**32 - 37, 200),
                                                 (2**63 - 1, 2**33 + 3, 64)])
def test_cpu_philox_paths_match_the_reference_words(path, seed, first, blocks):
    """The C++ kernel's two Philox paths (AVX2 intrinsics, portable vectorised loop) give the reference's
    words, including 64-bit counters that carry into hi32 inside one batch — beyond any tensor's size."""
    got = torch.ops.msa_fast.dropout_words(torch.tensor(seed), first, blocks, path)
    from msa_fast.ops.dropout import block_words

    counters = torch.arange(first, first + blocks, dtype=torch.int64)
    assert torch.equal(got, block_words(counters, torch.tensor(seed)).reshape(-1))


def test_dropout_words_bad_path_is_named():
    with pytest.raises(RuntimeError, match="path must be 'avx2' or 'portable', got 'sse'"):
        torch.ops.msa_fast.dropout_words(torch.tensor(0), 0, 1, "sse")


def test_p_zero_copies_p_one_zeroes_and_eval_is_identity():
    x = make((5, 8))
    out = ops.dropout(x, 0.0, 1)
    assert_bit_equal(out, x)
    assert out.data_ptr() != x.data_ptr()
    assert torch.equal(ops.dropout(x, 1.0, 1), torch.zeros_like(x))
    assert ops.dropout(x, 0.7, 1, training=False) is x


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_fraction_and_scale(p):
    x = torch.ones(200_000)
    out = ops.dropout(x, p, 2024)
    kept = out != 0
    n = x.numel()
    sd = math.sqrt(p * (1 - p) / n)
    assert abs(kept.float().mean().item() - (1 - p)) < 6 * sd
    assert torch.all(out[kept] == torch.tensor(1 / (1 - p), dtype=torch.float32))


def test_masks_differ_across_seeds_and_positions():
    x = torch.ones(4096)
    a, b = ops.dropout(x, 0.5, 1) != 0, ops.dropout(x, 0.5, 2) != 0
    assert 0.4 < (a != b).float().mean().item() < 0.6
    # the four words of one block are not copies of each other
    blocks = a.view(-1, 4).float()
    assert 0.3 < (blocks[:, 0] != blocks[:, 1]).float().mean().item() < 0.7


def test_selection_not_multiplication():
    x = torch.full((64,), float("nan"))
    out = ops.dropout(x, 0.5, 5)
    dropped = reference.dropout(torch.ones(64), 0.5, 5) == 0
    assert dropped.any() and (~dropped).any()
    assert torch.all(out[dropped] == 0) and torch.all(out[~dropped].isnan())


def test_seed_none_reproducible_and_returned():
    x = make((30,))
    torch.manual_seed(0)
    a, seed = ops.dropout(x, 0.5, return_seed=True)
    torch.manual_seed(0)
    b = ops.dropout(x, 0.5)
    assert_bit_equal(a, b)
    assert_bit_equal(a, ops.dropout(x, 0.5, seed=int(seed)))


def test_no_mask_saved_for_backward():
    saved = []
    x = make((64, 32)).requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        ops.dropout(x, 0.2, 1, backend="cpp").sum().backward()
    assert all(t.numel() <= 1 for t in saved), [tuple(t.shape) for t in saved]  # only the 0-dim seed


def test_nn_module_train_eval_and_fresh_masks():
    from msa_fast.nn import Dropout

    layer = Dropout(0.5)
    assert layer.p == 0.5
    x = make((200,)) + 10
    a, b = layer(x), layer(x)
    assert (a == 0).any() and not torch.equal(a, b)
    layer.eval()
    assert layer(x) is x
    with pytest.raises(ValueError, match="p must lie in"):
        Dropout(1.5)


# ---- registration: opcheck, torch.compile, TorchScript ------------------------------------------


def test_opcheck():
    for shape in [(3, 5, 7), (10,)]:
        x = make(shape).requires_grad_()
        torch.library.opcheck(torch.ops.msa_fast.dropout.default, (x, 0.4, torch.tensor(3)))


def test_torch_compile_fullgraph():
    def f(x):
        y = ops.dropout(x, 0.3, 5, backend="cpp")
        return (y * 2).sum()

    x = make((3, 8, 6)).requires_grad_()
    out = torch.compile(f, fullgraph=True)(x)
    (grad,) = torch.autograd.grad(out, x)
    x2 = x.detach().clone().requires_grad_()
    out2 = f(x2)
    (grad2,) = torch.autograd.grad(out2, x2)
    torch.testing.assert_close(out, out2)
    assert_bit_equal(grad, grad2)


def test_torch_compile_module_draws_a_fresh_seed_each_call():
    from msa_fast.nn import Dropout

    layer = Dropout(0.5)
    f = torch.compile(lambda x: layer(x), fullgraph=True)
    x = torch.ones(256)
    a, b = f(x), f(x)
    assert (a == 0).any() and not torch.equal(a, b)


def test_torchscript_calls_the_op():
    @torch.jit.script
    def scripted(x: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
        return torch.ops.msa_fast.dropout(x, 0.5, seed)

    x = make((2, 3, 10)).requires_grad_()
    out = scripted(x, torch.tensor(8))
    assert_bit_equal(out, reference.dropout(x, 0.5, 8))
    out.sum().backward()
    assert_bit_equal(x.grad, reference.dropout(torch.ones_like(x), 0.5, 8))


# ---- bad inputs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(p=-0.1), ValueError, r"p must be a float in \[0, 1\]"),
    (dict(p=1.5), ValueError, r"p must be a float in \[0, 1\]"),
    (dict(p=True), ValueError, "p must be a float"),
    (dict(p="0.5"), ValueError, "p must be a float"),
    (dict(seed=-3), ValueError, "seed must lie in"),
    (dict(seed=torch.tensor(-3)), ValueError, "seed must be non-negative"),
    (dict(seed=torch.tensor([1, 2])), TypeError, "seed must be a Python int or a 0-dim int64 tensor"),
    (dict(seed=1.5), TypeError, "seed must be a Python int"),
    (dict(backend="gpu"), ValueError, "unknown backend"),
])
def test_bad_arguments(kwargs, error, match):
    args = dict(x=make((3, 5)), p=0.2)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        ops.dropout(**args)


@pytest.mark.parametrize("fn", [ops.dropout, reference.dropout])
def test_bad_x(fn):
    with pytest.raises(TypeError, match="x must be a floating tensor, got torch.int64"):
        fn(torch.ones(3, 5, dtype=torch.int64), 0.2)
    with pytest.raises(TypeError, match="x must be a floating tensor, got list"):
        fn([1.0, 2.0], 0.2)


def test_cpp_kernel_checks_direct_calls():
    with pytest.raises(ValueError, match=r"p must lie in \[0, 1\], got 2"):
        torch.ops.msa_fast.dropout(make((2, 3)), 2.0, torch.tensor(1))
    with pytest.raises(ValueError, match="seed must be a 0-dim int64 tensor"):
        torch.ops.msa_fast.dropout(make((2, 3)), 0.5, torch.tensor(1.0))
    with pytest.raises(ValueError, match="seed must be non-negative"):
        torch.ops.msa_fast.dropout(make((2, 3)), 0.5, torch.tensor(-1))
    with pytest.raises(TypeError, match="x must be float32, float16, bfloat16 or float64, got Int"):
        torch.ops.msa_fast.dropout(torch.ones(2, dtype=torch.int32), 0.5, torch.tensor(1))


def test_forced_unavailable_backend_says_why():
    with pytest.raises(RuntimeError, match="cuda.*not available.*CUDA tensors"):
        ops.dropout(make((2, 3)), 0.2, backend="cuda")


def test_empty_input():
    x = torch.empty(0, 3)
    assert ops.dropout(x, 0.5, 1, backend="cpp").shape == (0, 3)
    assert reference.dropout(x, 0.5, 1).shape == (0, 3)


def test_auto_routes_fp64_to_reference_and_forced_cpp_runs_fp64():
    x = make((2, 3, 8), torch.float64)
    assert_bit_equal(ops.dropout(x, 0.5, seed=1), ops.dropout(x, 0.5, seed=1, backend="cpp"))


def test_deterministic_mode_output_is_fully_written():
    """The C++ kernels allocate without the deterministic-mode NaN fill; every element is still written."""
    x = make((33, 17))
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        out = ops.dropout(x, 0.5, 3, backend="cpp")
    finally:
        torch.use_deterministic_algorithms(before)
    assert_bit_equal(out, reference.dropout(x, 0.5, 3))
