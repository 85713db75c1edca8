"""Device helpers and launch plumbing shared by the per-row contrastive kernels (supcon, info_nce, uniform, hycon,
mgcl).

ops.md §1: tiles of ``BLOCK_M`` owned rows × ``BLOCK_N`` streamed rows, a loop over D in ``BLOCK_D`` chunks
(any D, ragged edges masked), fp32 accumulation (fp64 for fp64 inputs), int64 offsets, and ``tl.dot`` with an
explicit ``input_precision`` constexpr. The ``N × M`` similarity never leaves registers.

* **Normalisation without a second pass over memory.** ``u = n(x)`` is never written: a tile's similarity is
  the raw dot product scaled by the two inverse norms, ``u_i·u_j = (x_i·x_j)·r_i·r_j`` with
  ``r = 1/max(‖x‖, 1e-12)``. The owned rows' norms come from a prologue loop over D; the streamed rows' norms
  are summed from the very tiles the dot product loads. An all-zero row has ``x·y = 0``, hence ``s = 0``, as
  ``n(0) = 0``. fp16/bf16 operands are widened to fp32 exactly, so the raw dot product is also exact under
  TF32 (10 mantissa bits hold fp16 and bf16 values).
* **Backward by recomputation, no atomics.** A backward kernel owns a block of rows *and* a chunk of
  ``BLOCK_DO`` features (grid ``(row blocks, D chunks)``), rebuilds each similarity tile over the whole of D,
  forms the tile's ``dS`` and accumulates ``dS·Ŷ[:, chunk]`` in registers, then writes its ``[BLOCK_M,
  BLOCK_DO]`` block of a fp32 buffer once (the price: the tiles are rebuilt once per feature chunk, so
  ``⌈D/BLOCK_DO⌉`` times; BLOCK_DO is 64–128 in the GPU configs). Row-owned and column-owned launches of
  the same kernel give ``dX̂`` and ``dŶ``. :func:`finish_kernel` then adds the buffers and goes back through
  the normalisation,
  ``dx = (dx̂ − x̂ (x̂·dx̂)) / max(‖x‖, 1e-12)``, with a zero gradient for zero-norm rows and no projection
  for rows with ``0 < ‖x‖ < 1e-12`` (the clamp is active there), exactly like the reference
  ``msa_fast.ops._contrastive.normalize_rows``.
* Scalars (τ, κ) travel as the int64 bit patterns of Python doubles and are rounded to the compute type in the
  kernel, as in ``kernels/hard_concrete.py``: Triton float arguments are fp32, which would cost the fp64
  path its precision.
* bf16 tensors are moved as int16 bit patterns (exact widening; round-to-nearest-even narrowing), because the
  interpreter mishandles bf16 loads and its own fp32 → bf16 cast truncates.
"""

from __future__ import annotations


import torch
import triton
import triton.language as tl

from ._io import bits, div, io, load, param, store  # noqa: F401  (used by the row kernels)

from ._autotune import INTERPRETER, autotune

NORM_EPS = 1e-12


def _configs(*rows, keys=("BLOCK_M", "BLOCK_N", "BLOCK_D", "BLOCK_DO")):
    """One ``triton.Config`` per row ``(block sizes in the order of keys…, num_warps)``."""
    return [triton.Config(dict(zip(keys, row[:-1])), num_warps=row[-1]) for row in rows]


# Configs of the forward kernels (BLOCK_M × BLOCK_N tiles, BLOCK_D chunks of the D loop). The first one is
# what runs with MSA_FAST_AUTOTUNE=0 and under the interpreter: small, so that ragged edges and several tiles
# are exercised at test shapes.
FWD_CONFIGS = _configs((16, 16, 16, 2), (64, 64, 32, 4), (32, 64, 64, 4), (128, 64, 32, 8))

# Configs of the backward kernels: BLOCK_DO is the width of the feature chunk a program owns.
BWD_CONFIGS = _configs((16, 16, 16, 32, 2), (64, 64, 32, 64, 4), (32, 64, 64, 128, 4), (64, 32, 32, 128, 8))

# Configs of the kernels whose tiles carry several statistics or column segments (hycon, mgcl): they hold more
# tile-sized values than the ones above, so these are the configs that compile for sm_80 without register spills
# (ptxas -v, fp32 with TF32 dots). The first, 32 × 32 tiles with 64-wide chunks, is also the interpreter's: a tile
# costs about the same there whatever its size, so fewer, larger tiles keep the tests short (test shapes still span
# several tiles and a ragged edge).
FWD_CONFIGS_WIDE = _configs((32, 32, 64, 8), (64, 64, 32, 8), (32, 32, 32, 4))
BWD_CONFIGS_WIDE = _configs((32, 32, 64, 64, 8), (32, 32, 32, 128, 8), (64, 32, 32, 128, 8))

FINISH_CONFIGS = _configs((16, 16, 2), (16, 128, 4), (64, 64, 4), keys=("BLOCK_M", "BLOCK_D"))


# ----------------------------------------------------------------------------------------------
# Device helpers.


@triton.jit
def norm_of(ss, CT: tl.constexpr):
    """‖x‖ from Σx² (IEEE square root in fp32)."""
    if CT == tl.float32:
        return tl.sqrt_rn(ss)
    else:
        return tl.sqrt(ss)


@triton.jit
def rinv_of(ss, CT: tl.constexpr):
    """1 / max(‖x‖, 1e-12) from Σx² (IEEE sqrt and division in fp32); NaN stays NaN (a select, not a maximum)."""
    if CT == tl.float32:
        nrm = tl.sqrt_rn(ss)
        return tl.div_rn(tl.full(ss.shape, 1, CT), tl.where(nrm < 1e-12, 1e-12, nrm).to(CT))
    else:
        nrm = tl.sqrt(ss)
        return 1.0 / tl.where(nrm < 1e-12, 1e-12, nrm).to(CT)


@triton.jit
def row_sumsq(x_ptr, rows, row_ok, D, CT: tl.constexpr, BF16: tl.constexpr, BLOCK_M: tl.constexpr,
              BLOCK_D: tl.constexpr):
    """Σ_d x[rows, d]² over the whole of D (the prologue of the owned rows)."""
    ss = tl.zeros([BLOCK_M], dtype=CT)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
        x = tl.load(x_ptr + (rows[:, None] * D + d[None, :]), mask=row_ok[:, None] & (d < D)[None, :], other=0)
        if BF16:
            x = (x.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
        x = x.to(CT)
        ss += tl.sum(x * x, axis=1)
    return ss


@triton.jit
def row_pair_sums(x_ptr, y_ptr, rows, row_ok, D, CT: tl.constexpr, BF16: tl.constexpr, BLOCK_M: tl.constexpr,
                  BLOCK_D: tl.constexpr):
    """(Σ x², Σ y², Σ x·y) over the rows ``rows`` of two [N, D] tensors."""
    sx = tl.zeros([BLOCK_M], dtype=CT)
    sy = tl.zeros([BLOCK_M], dtype=CT)
    sxy = tl.zeros([BLOCK_M], dtype=CT)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
        offs = rows[:, None] * D + d[None, :]
        m = row_ok[:, None] & (d < D)[None, :]
        x = load(x_ptr, offs, m, CT, BF16)
        y = load(y_ptr, offs, m, CT, BF16)
        sx += tl.sum(x * x, axis=1)
        sy += tl.sum(y * y, axis=1)
        sxy += tl.sum(x * y, axis=1)
    return sx, sy, sxy


@triton.jit
def tile_dot(x_ptr, y_ptr, rows, row_ok, cols, col_ok, D, CT: tl.constexpr, BF16: tl.constexpr,
             IP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """(x[rows]·y[cols]ᵀ [BLOCK_M, BLOCK_N], Σ_d y[cols, d]² [BLOCK_N]) with a loop over D in BLOCK_D chunks.

    The loads are written out rather than calling :func:`load`: every nested jit call costs a
    re-patching of ``triton.language`` under the interpreter, and this loop is the hot one.
    """
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=CT)
    ss = tl.zeros([BLOCK_N], dtype=CT)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
        d_ok = d < D
        # Both tiles are loaded row-major (coalesced along D); the y tile is transposed for the dot.
        x = tl.load(x_ptr + (rows[:, None] * D + d[None, :]), mask=row_ok[:, None] & d_ok[None, :], other=0)
        y = tl.load(y_ptr + (cols[:, None] * D + d[None, :]), mask=col_ok[:, None] & d_ok[None, :], other=0)
        if BF16:  # int16 bit patterns of bf16: widen exactly
            x = (x.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
            y = (y.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
        x = x.to(CT)
        y = y.to(CT)
        acc = tl.dot(x, tl.trans(y), acc, input_precision=IP)
        ss += tl.sum(y * y, axis=1)
    return acc, ss


@triton.jit
def sim_tile(x_ptr, y_ptr, rows, row_ok, cols, col_ok, r_row, D, NORMALIZE: tl.constexpr, CT: tl.constexpr,
             BF16: tl.constexpr, IP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
             BLOCK_D: tl.constexpr):
    """(s [BLOCK_M, BLOCK_N], r_col [BLOCK_N]): ``s = x̂[rows]·ŷ[cols]ᵀ`` with ``x̂ = n(x)`` (``r_row`` the owned
    rows' inverse norms) and the streamed rows' inverse norms; raw dot products and ``r_col = 1`` if not
    ``NORMALIZE`` (``r_row`` is then unused)."""
    dot, ss = tile_dot(x_ptr, y_ptr, rows, row_ok, cols, col_ok, D, CT, BF16, IP, BLOCK_M, BLOCK_N, BLOCK_D)
    if NORMALIZE:  # (x_i·y_j)(r_i r_j): the same rounding in either role of the two rows
        r_col = rinv_of(ss, CT)
        return dot * (r_row[:, None] * r_col[None, :]), r_col
    else:
        return dot, tl.full([BLOCK_N], 1, CT)


@triton.jit
def acc_rows(acc, w, r_col, y_ptr, cols, col_ok, dd, dd_ok, D, NORMALIZE: tl.constexpr, CT: tl.constexpr,
             BF16: tl.constexpr, IP: tl.constexpr):
    """``acc + w·ŷ[cols, dd]`` for a [BLOCK_M, BLOCK_N] tile of pair gradients ``w`` (``ŷ = n(y)``: ``w`` is
    scaled by the streamed rows' inverse norms ``r_col`` and multiplies the raw rows)."""
    if NORMALIZE:
        w = w * r_col[None, :]
    y = load(y_ptr, cols[:, None] * D + dd[None, :], col_ok[:, None] & dd_ok[None, :], CT, BF16)
    return tl.dot(w.to(CT), y, acc, input_precision=IP)


@triton.jit
def lse_update(m, l, s, keep):
    """One online log-sum-exp step over the kept entries of a [BLOCK_M, BLOCK_N] tile (running max m, sum l).

    A NaN kept entry makes l NaN whatever the max does with it (GPU maxima drop NaN, numpy's keep it).
    """
    sm = tl.where(keep, s, float("-inf"))
    m_new = tl.maximum(m, tl.max(sm, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new).to(m.dtype)
    p = tl.exp(tl.where(keep, s - m_safe[:, None], float("-inf")))
    l = l * tl.exp(m - m_safe) + tl.sum(p, axis=1)
    return m_new, l


@triton.jit
def lse_finish(m, l):
    """log-sum-exp from (m, l): −inf over an empty set, NaN if a NaN entered l."""
    empty = (l == 0) & (m == float("-inf"))
    return tl.where(empty, float("-inf"), m + tl.log(tl.where(empty, 1.0, l).to(l.dtype)))


# ----------------------------------------------------------------------------------------------
# Epilogue: dx from the fp32 buffers dx̂ = a (+ b), back through n(·) if NORMALIZE.


@autotune(FINISH_CONFIGS, key=["N", "D"])
@triton.jit
def finish_kernel(x_ptr, a_ptr, b_ptr, out_ptr, N, D, HAS_B: tl.constexpr, NORMALIZE: tl.constexpr,
                  BF16: tl.constexpr, FP64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    CT: tl.constexpr = tl.float64 if FP64 else tl.float32
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < N
    if NORMALIZE:
        # Pass 1: Σx² and x·dx̂.
        ss = tl.zeros([BLOCK_M], dtype=CT)
        xd = tl.zeros([BLOCK_M], dtype=CT)
        for d0 in range(0, D, BLOCK_D):
            d = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
            offs = rows[:, None] * D + d[None, :]
            m = row_ok[:, None] & (d < D)[None, :]
            x = load(x_ptr, offs, m, CT, BF16)
            g = tl.load(a_ptr + offs, mask=m, other=0).to(CT)
            if HAS_B:
                g += tl.load(b_ptr + offs, mask=m, other=0).to(CT)
            ss += tl.sum(x * x, axis=1)
            xd += tl.sum(x * g, axis=1)
        nrm = norm_of(ss, CT)
        r = rinv_of(ss, CT)
        # dx = (dx̂ − x̂ (x̂·dx̂))·r = dx̂·r − x·(r³ x·dx̂); the projection only where the clamp is inactive.
        proj = tl.where(nrm >= 1e-12, xd * r * r, 0.0).to(CT)
        keep = nrm != 0  # zero rows: zero gradient; NaN rows stay NaN
        for d0 in range(0, D, BLOCK_D):
            d = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
            offs = rows[:, None] * D + d[None, :]
            m = row_ok[:, None] & (d < D)[None, :]
            x = load(x_ptr, offs, m, CT, BF16)
            g = tl.load(a_ptr + offs, mask=m, other=0).to(CT)
            if HAS_B:
                g += tl.load(b_ptr + offs, mask=m, other=0).to(CT)
            dx = tl.where(keep[:, None], (g - x * proj[:, None]) * r[:, None], 0.0)
            store(out_ptr, offs, dx, m, BF16)
    else:
        for d0 in range(0, D, BLOCK_D):
            d = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
            offs = rows[:, None] * D + d[None, :]
            m = row_ok[:, None] & (d < D)[None, :]
            g = tl.load(a_ptr + offs, mask=m, other=0).to(CT)
            if HAS_B:
                g += tl.load(b_ptr + offs, mask=m, other=0).to(CT)
            store(out_ptr, offs, g, m, BF16)


# ----------------------------------------------------------------------------------------------
# Host helpers (torch ops only: traceable by make_fx).


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def dot_precision(dtype: torch.dtype) -> str:
    """The tl.dot operand precision: IEEE under the interpreter and for fp64, else ops.md §0.3's policy."""
    if INTERPRETER or dtype == torch.float64:
        return "ieee"
    from msa_fast.ops._config import input_precision  # lazy: msa_fast.ops may import these kernels

    return input_precision()


def check_rows(who: str, **tensors: torch.Tensor) -> torch.Tensor:
    """Float [N, D] inputs of one launch: same dtype, shape and device; returns the first (for metadata)."""
    first_name, first = None, None
    for name, t in tensors.items():
        if not t.is_floating_point():
            raise TypeError(f"msa_fast.kernels.{who}: {name} must be a floating tensor, got {t.dtype}")
        if t.dim() != 2:
            raise ValueError(f"msa_fast.kernels.{who}: {name} must be [N, D], got shape {tuple(t.shape)}")
        if first is None:
            first_name, first = name, t
        elif t.dtype != first.dtype or t.shape != first.shape or t.device != first.device:
            raise ValueError(f"msa_fast.kernels.{who}: {name} ({t.dtype}, {tuple(t.shape)}, {t.device}) does not "
                             f"match {first_name} ({first.dtype}, {tuple(first.shape)}, {first.device})")
    if first.shape[0] == 0 or first.shape[1] == 0:
        raise ValueError(f"msa_fast.kernels.{who}: empty input (shape {tuple(first.shape)})")
    return first


def check_stacked(op: str, name: str, t: torch.Tensor, what: str, layout: str) -> int:
    """A float ``[3n, d]`` input stacking ``what`` (three views or modalities), checked as the C++ ops check it
    (``TypeError`` for the dtype, ``ValueError`` for the shape); returns n."""
    if not t.is_floating_point():
        raise TypeError(f"{op}: {name} must be fp32/fp16/bf16/fp64, got {t.dtype}")
    if t.dim() != 2:
        raise ValueError(f"{op}: {name} must be {layout}, got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{op}: {name} is empty (shape {tuple(t.shape)})")
    if t.shape[0] % 3:
        raise ValueError(f"{op}: {name} must stack {what}, {layout}, got {t.shape[0]} rows (shape {tuple(t.shape)})")
    return t.shape[0] // 3


def finish(x: torch.Tensor, a: torch.Tensor, b, normalize: bool) -> torch.Tensor:
    """``dx`` in x's dtype from the fp32 buffer ``a`` (plus ``b``): back through ``n(·)`` if ``normalize``."""
    N, D = x.shape
    out = torch.empty_like(x, memory_format=torch.contiguous_format)

    def grid(meta):
        return (triton.cdiv(N, meta["BLOCK_M"]),)

    torch.library.wrap_triton(finish_kernel)[grid](
        io(x), a, a if b is None else b, io(out), N, D, HAS_B=b is not None, NORMALIZE=bool(normalize),
        BF16=x.dtype == torch.bfloat16, FP64=x.dtype == torch.float64)
    return out

