"""Triton kernels (kernels/) against the C++ CPU kernels, under the Triton interpreter (tiny shapes).

* Philox: ``tl.randint`` known answers (ops.md §0.8), the launcher's stream and the uniform / index helpers
  against ``torch.ops.msa_fast.philox_randint``.
* cutoff: bit-identical to ``torch.ops.msa_fast.cutoff`` for every mode, padding side and dtype (§9).
* hard_concrete / hard_concrete_l0: forward and backward against the C++ kernels (§7, §10 tolerances).
* Traceability and GPU compilation, in a subprocess without the interpreter: make_fx (symbolic shapes) sees
  only torch ops and ``triton_kernel_wrapper_mutation`` nodes, and the kernels compile to sm_80 cubins.
"""

import os

# Before triton (and the kernels) are imported: interpreter, IEEE dots, one autotune config.
os.environ["TRITON_INTERPRET"] = "1"
os.environ["MSA_FAST_INPUT_PRECISION"] = "ieee"
os.environ["MSA_FAST_AUTOTUNE"] = "0"

import importlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")
pytest.importorskip("msa_fast._C", reason="the C++ kernels are the reference of these tests")

pytestmark = pytest.mark.triton

REPO = Path(__file__).resolve().parents[2]


def _kernels(name):
    """``msa_fast.kernels.<name>`` once the package is wired, else ``kernels.<name>`` from the repo root."""
    try:
        return importlib.import_module(f"msa_fast.kernels.{name}")
    except ImportError:
        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        return importlib.import_module(f"kernels.{name}")


kphilox = _kernels("philox")
kcutoff = _kernels("cutoff")
khc = _kernels("hard_concrete")
ops = torch.ops.msa_fast

SEEDS = [0, 1, 2**63 - 1]
INT_OF = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def _seed(s):
    return torch.tensor(s, dtype=torch.int64)


def _bits(t):
    return t.contiguous().view(INT_OF[t.element_size()])


# ----------------------------------------------------------------------------------------------
# Philox


@triton.jit
def _randint_literal_seed_kernel(out_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, tl.randint(1234, offs).to(tl.uint64).to(tl.int64))


@triton.jit
def _helpers_kernel(seed_ptr, n, u_ptr, idx_ptr, count, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < count
    r = tl.randint(tl.load(seed_ptr), offs.to(tl.uint32))
    tl.store(u_ptr + offs, kphilox.uniform_from_bits(r), mask=mask)
    tl.store(idx_ptr + offs, kphilox.index_from_bits(r, n), mask=mask)


def test_randint_known_answers():
    out = torch.empty(4, dtype=torch.int64)
    _randint_literal_seed_kernel[(1,)](out, BLOCK=4)
    assert out.tolist() == [546353992, 2666454581, 1070188760, 3055983166]
    assert kphilox.philox_randint(_seed(1234), 0, 4).tolist() == [546353992, 2666454581, 1070188760, 3055983166]


@pytest.mark.parametrize("seed", SEEDS)
def test_philox_randint_matches_cpp(seed):
    g = torch.Generator().manual_seed(seed % 1000)
    offsets = [0, 2**32 - 37] + torch.randint(0, 2**32 - 100, (2,), generator=g).tolist()
    for offset in offsets:
        for count in (1, 37):
            got = kphilox.philox_randint(_seed(seed), offset, count)
            assert got.dtype == torch.int64
            assert torch.equal(got, ops.philox_randint(_seed(seed), offset, count)), (seed, offset, count)
    assert kphilox.philox_randint(_seed(seed), 5, 0).shape == (0,)
    with pytest.raises(ValueError):
        kphilox.philox_randint(_seed(seed), 2**32 - 1, 2)


@pytest.mark.parametrize("seed", SEEDS)
def test_uniform_and_index_rules(seed):
    count, n = 50, 7
    u = torch.empty(count, dtype=torch.float32)
    idx = torch.empty(count, dtype=torch.int64)
    _helpers_kernel[(1,)](_seed(seed), n, u, idx, count, BLOCK=64)
    r = ops.philox_randint(_seed(seed), 0, count).tolist()
    want_u = torch.tensor([(2 * (x >> 9) + 1) * 2.0**-24 for x in r], dtype=torch.float64)
    assert torch.equal(u.double(), want_u)  # exact in fp32
    assert u.min() > 0 and u.max() < 1
    assert idx.tolist() == [(x * n) >> 32 for x in r]


# ----------------------------------------------------------------------------------------------
# cutoff


def _check_cutoff(x, ratio, mode, seed, lengths, side):
    want = ops.cutoff(x, ratio, mode, _seed(seed), lengths, side)
    got = kcutoff.cutoff_forward(x, ratio, mode, _seed(seed), lengths, side)
    assert got.dtype == x.dtype and got.shape == x.shape and got.is_contiguous()
    assert torch.equal(_bits(got), _bits(want)), (tuple(x.shape), x.dtype, ratio, mode, seed, lengths, side)
    return got


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("mode", ["feature", "token", "span"])
def test_cutoff_bit_identical(mode, side):
    g = torch.Generator().manual_seed(0)
    k = 0
    # fp32: odd shapes (one tile; several tiles with ragged edges; D = L = 1), ratios 0 / 0.3 / 1,
    # default lengths and lengths containing 0 and L.
    for B, L, D in [(3, 7, 5), (2, 33, 130), (2, 1, 1)]:
        x = torch.randn(B, L, D, generator=g)
        lengths = torch.tensor([0, L, max(L // 2, 1)][:B] + [L] * max(0, B - 3))
        for ratio in (0.0, 0.3, 1.0):
            for lens in (None, lengths):
                _check_cutoff(x, ratio, mode, SEEDS[k % 3], lens, side)
                k += 1
    # Every dtype, NaN/Inf in x (selected to 0 where cut, passed through elsewhere), int32 lengths.
    for dtype in (torch.float16, torch.bfloat16, torch.float64, torch.float32):
        x = torch.randn(3, 7, 5, generator=g).to(dtype)
        x[0, 1, 2] = float("nan")
        x[1, 3, 0] = float("inf")
        x[2, 6, 4] = -0.0
        for seed in SEEDS:
            _check_cutoff(x, 0.5, mode, seed, torch.tensor([0, 7, 4], dtype=torch.int32), side)


def test_cutoff_noncontiguous_and_identity():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 4, 3, generator=g).transpose(0, 2)  # [3, 4, 5], non-contiguous
    for mode in ("feature", "token", "span"):
        _check_cutoff(x, 0.4, mode, 2**63 - 1, torch.tensor([4, 2, 0]), "left")
    # ratio 0 (and D·ratio < 1) is the identity, bit for bit.
    y = torch.randn(2, 3, 4, generator=g).to(torch.bfloat16)
    assert torch.equal(_bits(kcutoff.cutoff_forward(y, 0.0, "feature", _seed(3), None, "right")), _bits(y))
    assert torch.equal(_bits(kcutoff.cutoff_forward(y, 0.2, "feature", _seed(3), None, "right")), _bits(y))
    with pytest.raises(ValueError):
        kcutoff.cutoff_forward(y, 0.2, "nope", _seed(3), None, "right")
    with pytest.raises(ValueError):
        kcutoff.cutoff_forward(y, 0.2, "token", _seed(3), None, "middle")


def test_cutoff_feature_ratio_one_zeroes_drawn_features():
    x = torch.ones(2, 3, 64)
    out = kcutoff.cutoff_forward(x, 1.0, "feature", _seed(5), None, "right")
    zeroed = (out[:, 0] == 0).sum(dim=1).double()
    # 64 draws with replacement: about 63 % zeroed; every time step of a sample shares its cut set.
    assert ((zeroed > 25) & (zeroed < 55)).all()
    assert torch.equal(out[:, 0], out[:, 2])


# ----------------------------------------------------------------------------------------------
# hard_concrete

BETA, GAMMA, ZETA, EPS = 2 / 3, -0.1, 1.1, 1e-6
TOL = {torch.float32: (1e-5, 1e-6), torch.float64: (1e-12, 1e-14), torch.float16: (1e-3, 1e-6),
       torch.bfloat16: (8e-3, 1e-6)}


def _close(got, want, dtype, what, keep=None):
    assert got.dtype == want.dtype and got.shape == want.shape, what
    rtol, atol = TOL[dtype]
    got, want = got.double(), want.double()
    if keep is not None:
        got, want = got[keep], want[keep]
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol, equal_nan=True, msg=lambda m: f"{what}: {m}")


def _gate_inputs(dtype, g):
    la = (torch.randn(3, 41, generator=g) * 3).to(dtype)
    la[0, 0], la[0, 1], la[0, 2] = float("inf"), -float("inf"), float("nan")
    u = torch.rand(3, 41, generator=g).to(dtype)
    u[1, 0], u[1, 1] = 0.0, 1.0  # clamped to [eps, 1 − eps]
    return la, u


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_hard_concrete_matches_cpp(dtype):
    g = torch.Generator().manual_seed(2)
    la, u = _gate_inputs(dtype, g)
    gz = torch.randn(3, 41, generator=g).to(dtype)
    gsb = torch.randn(3, 41, generator=g).to(dtype)
    cases = [(True, u, None), (True, u[2], None), (True, None, 0), (True, None, 2**63 - 1), (False, None, None)]
    for training, uu, seed in cases:
        s = None if seed is None else _seed(seed)
        for thr in (None, 0.5):
            args = (BETA, GAMMA, ZETA, thr, training, EPS)
            want_z, want_sb = ops.hard_concrete(la, uu, s, *args, "clamp", True)
            z, sb = khc.hard_concrete_forward(la, uu, s, *args, True)
            what = f"training={training} u={'given' if uu is not None else 'philox'} seed={seed} thr={thr}"
            _close(sb, want_sb, dtype, "s_bar " + what)
            # Threshold decisions are exact away from the boundary (|s̄ − t| < 1e-6 excluded, §10).
            keep = None if thr is None else (want_sb.double() - thr).abs() >= 1e-6
            _close(z, want_z, dtype, "z " + what, keep)
            z2, sb2 = khc.hard_concrete_forward(la, uu, s, *args, False)
            assert torch.equal(_bits(z2), _bits(z)) and sb2.numel() == 0
            for ste in ("clamp", "sbar"):
                for grad_sb in (None, gsb, torch.empty(0, dtype=dtype)):
                    want = ops.hard_concrete_backward(gz, grad_sb, la, uu, s, *args, ste)
                    got = khc.hard_concrete_backward(gz, grad_sb, la, uu, s, *args, ste)
                    _close(got, want, dtype, f"grad {what} ste={ste} grad_s_bar={grad_sb is not None}")
            # ±inf log_alpha: z = 1 / 0 and a zero gradient, not NaN.
            assert z[0, 0].item() == 1 and z[0, 1].item() == 0
            assert torch.isnan(z[0, 2]) if thr is None else z[0, 2].item() == 0  # NaN propagates / fails s̄ > t
            got = khc.hard_concrete_backward(gz, gsb, la, uu, s, *args, "sbar")
            assert got[0, 0].item() == 0 and got[0, 1].item() == 0


def test_hard_concrete_broadcast_grad_and_seed_required():
    g = torch.Generator().manual_seed(3)
    la, u = _gate_inputs(torch.float32, g)
    gz = torch.randn(1, 41, generator=g)
    args = (BETA, GAMMA, ZETA, None, True, EPS)
    want = ops.hard_concrete_backward(gz, None, la, u, None, *args, "clamp")
    _close(khc.hard_concrete_backward(gz, None, la, u, None, *args, "clamp"), want, torch.float32, "broadcast gz")
    with pytest.raises(ValueError):
        khc.hard_concrete_forward(la, None, None, *args, False)
    with pytest.raises(ValueError):
        khc.hard_concrete_backward(gz, None, la, u, None, *args, "nope")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_hard_concrete_l0_matches_cpp(dtype):
    g = torch.Generator().manual_seed(4)
    la, _ = _gate_inputs(dtype, g)
    la[2, :3] = torch.tensor([40.0, -40.0, 14.0]).to(dtype)  # clamped to [eps, 1 − eps]: zero gradient
    grad = torch.randn(3, 41, generator=g).to(dtype)
    for beta, eps in ((BETA, EPS), (0.5, 1e-3)):
        _close(khc.hard_concrete_l0_forward(la, beta, GAMMA, ZETA, eps),
               ops.hard_concrete_l0(la, beta, GAMMA, ZETA, eps), dtype, f"l0 beta={beta}")
        _close(khc.hard_concrete_l0_backward(grad, la, beta, GAMMA, ZETA, eps),
               ops.hard_concrete_l0_backward(grad, la, beta, GAMMA, ZETA, eps), dtype, f"l0 grad beta={beta}")


# ----------------------------------------------------------------------------------------------
# Traceability (make_fx, symbolic shapes) and GPU compilation, without the interpreter.

_TRACE_AND_COMPILE = textwrap.dedent("""
    import os, sys
    os.environ["TRITON_INTERPRET"] = "0"
    sys.path.insert(0, sys.argv[1])
    import torch, triton
    import triton.language as tl
    from torch.fx.experimental.proxy_tensor import make_fx
    from kernels import cutoff as C, dropout as D, hard_concrete as H, philox as P

    seed = torch.tensor(7)
    la = torch.randn(4, 5)
    traces = [
        (lambda x, s, l: C.cutoff_forward(x, 0.3, "token", s, l, "left"),
         (torch.randn(2, 3, 4), seed, torch.tensor([1, 3]))),
        (lambda x, s: C.cutoff_forward(x, 0.3, "feature", s, None, "right"), (torch.randn(2, 3, 4).bfloat16(), seed)),
        (lambda x, s: H.hard_concrete_forward(x, None, s, 2 / 3, -0.1, 1.1, 0.5, True, 1e-6, True), (la, seed)),
        (lambda g, x, u: H.hard_concrete_backward(g, None, x, u, None, 2 / 3, -0.1, 1.1, None, True, 1e-6, "clamp"),
         (la[:1], la, la.sigmoid())),
        (lambda g, x: H.hard_concrete_l0_backward(g, x, 2 / 3, -0.1, 1.1, 1e-6), (la.double(), la.double())),
        (lambda s: P.philox_randint(s, 3, 10), (seed,)),
        (lambda x, s: D.dropout_forward(x, 0.5, s), (torch.randn(3, 7).bfloat16(), seed)),
    ]
    for fn, args in traces:
        code = make_fx(fn, tracing_mode="symbolic")(*args).code
        assert "triton_kernel_wrapper_mutation" in code, code
        assert "_local_scalar_dense" not in code and ".item" not in code, code
    print("TRACED")

    from triton.backends import backends
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if "nvidia" not in backends or not os.path.exists(ptxas):
        print("NO-NVIDIA-BACKEND")
        sys.exit(0)
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    target = GPUTarget("cuda", 80, 32)

    def build(kernel, sig, consts):
        fn = getattr(kernel, "fn", None) if not isinstance(kernel, triton.runtime.JITFunction) else kernel
        sig = {**sig, **{k: "constexpr" for k in consts}}
        triton.compile(ASTSource(fn, sig, consts), target=target)

    i64 = "i64"
    params = {k: i64 for k in ("beta_bits", "gamma_bits", "zeta_bits", "thr_bits", "eps_bits")}
    build(C._cutoff_feature_kernel, {"x_ptr": "*i16", "out_ptr": "*i16", "seed_ptr": "*i64", "L": "i32", "D": "i32",
          "n_draws": "i32"}, {"BLOCK_L": 16, "BLOCK_D": 128, "ROWS_PER_PROG": 128, "BLOCK_T": 32})
    for span in (False, True):
        build(C._cutoff_step_kernel, {"x_ptr": "*i32", "out_ptr": "*i32", "seed_ptr": "*i64", "len_ptr": "*i64",
              "draws_ptr": "*i64", "L": "i32", "D": "i32"},
              {"LEFT_PADDING": True, "SPAN": span, "BLOCK_L": 16, "BLOCK_D": 128, "BLOCK_T": 32})
    build(H._hard_concrete_forward_kernel, {"la_ptr": "*i16", "u_ptr": "*i16", "seed_ptr": "*i64", "z_ptr": "*i16",
          "sbar_ptr": "*i16", "N": "i32", **params}, {"HAS_U": False, "HAS_THRESHOLD": True, "TRAINING": True,
          "WITH_S_BAR": True, "BF16": True, "FP64": False, "BLOCK": 1024})
    build(H._hard_concrete_backward_kernel, {"gz_ptr": "*fp64", "gsb_ptr": "*fp64", "la_ptr": "*fp64", "u_ptr": "*fp64",
          "seed_ptr": "*i64", "grad_ptr": "*fp64", "N": "i32", **params}, {"HAS_GSB": True, "HAS_U": True,
          "HAS_THRESHOLD": False, "TRAINING": True, "STE_SBAR": False, "BF16": False, "FP64": True, "BLOCK": 1024})
    del params["thr_bits"]
    build(H._hard_concrete_l0_kernel,
          {"grad_ptr": "*fp32", "la_ptr": "*fp32", "out_ptr": "*fp32", "N": "i32", **params},
          {"BACKWARD": True, "BF16": False, "FP64": False, "BLOCK": 1024})
    for ct, bf16, ptr in ((tl.float32, True, "*i16"), (tl.float64, False, "*fp64")):
        build(D._dropout_kernel, {"x_ptr": ptr, "out_ptr": ptr, "seed_ptr": "*i64", "numel": "i64", "p_bits": "i64",
              "scale_bits": "i64"}, {"CT": ct, "BF16": bf16, "BLOCK": 1024})
    print("COMPILED")
""")


def test_launchers_trace_and_kernels_compile_for_gpu(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_CACHE_DIR": str(tmp_path / "triton-cache")}
    proc = subprocess.run([sys.executable, "-c", _TRACE_AND_COMPILE, str(REPO)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "TRACED" in proc.stdout
    if "NO-NVIDIA-BACKEND" in proc.stdout:
        pytest.skip("triton's NVIDIA backend (ptxas) is not installed: traced, not compiled")
    assert "COMPILED" in proc.stdout, proc.stdout + proc.stderr
