// The CPU side of the fused masked pairwise-similarity engine (ops.md §1), shared by the contrastive
// kernels in csrc/cpu/ (supcon.cpp, ...).
//
// Design: rows are processed in blocks of BM. For each block one BLAS GEMM writes the BM × M slab of
// similarities (never the N × M matrix: the slab is capped at a few MiB, so it stays in cache), then
// each loss runs its epilogue on the slab rows in parallel: masks and weights from per-row metadata,
// online statistics, and in backward the pair gradients dS, written back into the slab so that two
// more GEMMs give dX and dY. Epilogue loops are plain float loops over one slab row, compiled for
// AVX-512, AVX2 and baseline x86-64 with runtime selection (target_clones), with a branch-free exp
// that the compiler vectorises.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "common/contrastive.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__CUDACC__)
// One clone per instruction set. "arch=haswell" (AVX2 + FMA) rather than "avx2,fma": GCC splits the
// latter into two clones, and the AVX2 one then has no FMA. The loops vectorise only with
// -fno-trapping-math (setup.py): otherwise GCC keeps the compare-and-select clamps of fast_exp as
// branches (a compare may raise FE_INVALID) and, without AVX-512 masking, runs the loop scalar.
#define MSA_VECTOR_CLONES __attribute__((target_clones("avx512f", "arch=haswell", "default")))
#else
#define MSA_VECTOR_CLONES
#endif

// Epilogue helpers must be inlined into each target clone: with several loops per clone GCC stops
// inlining on its own, and an out-of-line call runs the default (scalar) build of the loop body.
#if defined(__GNUC__)
#define MSA_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define MSA_ALWAYS_INLINE inline
#endif

namespace msa_fast {
namespace pairwise {

using contrastive::kNormEps;  // n(x) = x / max(‖x‖, 1e-12), ops.md preamble
constexpr int64_t kSlabBytes = int64_t(4) << 20;

// The branch-free exp of the epilogues (fp64: std::exp), shared with the CUDA kernels.
using contrastive::fast_exp;

// Rows of a block such that the BM × M slab stays within kSlabBytes (at least 8 rows, at most rows).
inline int64_t block_rows(int64_t rows, int64_t cols, int64_t elem_bytes) {
  const int64_t bm = kSlabBytes / std::max<int64_t>(cols * elem_bytes, 1);
  return std::min(rows, std::max<int64_t>(8, bm));
}

// u = n(x) row-wise (or x itself), in the compute dtype, with the norms kept for backward.
struct Normalized {
  at::Tensor u;         // [N, D] compute dtype, contiguous
  at::Tensor inv_norm;  // [N] 1 / max(‖x‖, eps), 0 for zero rows (their gradient is 0, ops.md §1)
};

// Division (like F.normalize in the references), not a multiply by the reciprocal: a 1-D row becomes
// exactly ±1, so its tangential gradient is exactly 0.
inline Normalized normalize_rows(const at::Tensor& x, at::ScalarType compute, bool normalize) {
  at::Tensor xc = x.to(compute).contiguous();
  if (!normalize) return {xc, at::Tensor()};
  at::Tensor norm = at::linalg_vector_norm(xc, 2, {1}, /*keepdim=*/true);
  const at::Tensor nonzero = norm != 0, safe = norm.clamp_min(kNormEps);
  return {xc / safe * nonzero, (safe.reciprocal() * nonzero).squeeze(1)};
}

// Loss statistics accumulate in fp32 for fp32/fp16/bf16 inputs and in fp64 for fp64 (ops.md §0.2).
inline at::ScalarType compute_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Two arguments that are one tensor (k is q, g is p): normalise and reduce once.
inline bool same_tensor(const at::Tensor& a, const at::Tensor& b) {
  return a.is_same(b) || (a.data_ptr() == b.data_ptr() && a.sizes() == b.sizes() && a.strides() == b.strides() &&
                          a.scalar_type() == b.scalar_type());
}

// dx = (du − u (u·du)) / max(‖x‖, eps): back through n(·) (ops.md §1), zero-norm rows get 0.
inline at::Tensor normalize_backward(const at::Tensor& du, const Normalized& n) {
  if (!n.inv_norm.defined()) return du;
  at::Tensor dot = (n.u * du).sum(1, /*keepdim=*/true);
  return (du - n.u * dot) * n.inv_norm.unsqueeze(1);
}

// ------------------------------------------------------------------------------------------------
// Triangular blocking for symmetric losses (s = U Uᵀ with symmetric pair relations: hycon, supcon):
// block b holds rows [i0, i1) and its slab only the columns [i0, N) (the upper triangle plus the
// diagonal block). A row's statistics = its own slab row (columns ≥ i0) + what the earlier blocks
// accumulated for it on their column side; backward needs 1.5 full GEMMs instead of 3 since
// dU[i0:i1] += G[:, i0:N] U[i0:N] and dU[i1:N] += G[:, i1:N]ᵀ U[i0:i1]. Blocks go round-robin to
// T = at::get_num_threads() work items, each with its own slab (single-threaded GEMMs, so a slab is
// made and consumed on one core) and its own column sums / dU, summed in a fixed order at the end: the
// partition depends only on N and T, so results are deterministic for a given thread count; no atomics.

// Slab per thread: small enough to stay near the core between the GEMM that writes it and the epilogue
// (and the backward GEMM) that read it.
constexpr int64_t kSlabBytesPerThread = int64_t(8) << 20;

// Rows per block: a slab of about kSlabBytesPerThread (at least 64 rows, for GEMM efficiency), but no
// more than an even share of the rows per thread, so that mid-sized N still uses every core.
inline int64_t slab_rows(int64_t n, int64_t elem_bytes) {
  const int64_t by_bytes = std::max<int64_t>(64, kSlabBytesPerThread / std::max<int64_t>(n * elem_bytes, 1));
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t share = (n + threads - 1) / threads;
  return std::max<int64_t>(1, std::min({n, by_bytes, (share + 15) / 16 * 16}));
}

struct Blocking {
  int64_t N, bm, blocks, items;
};

inline Blocking triangular_blocking(int64_t N, int64_t elem_bytes) {
  const int64_t bm = slab_rows(N, elem_bytes);
  const int64_t blocks = (N + bm - 1) / bm;
  return {N, bm, blocks, std::min<int64_t>(blocks, std::max<int64_t>(1, at::get_num_threads()))};
}

// One slab of the triangular blocking: rows [i0, i0 + rows) × columns [i0, N) of s = U Uᵀ, held in the
// buffer of work item `item` (which owns the item's accumulators).
struct TriangularSlab {
  int64_t item, i0, rows, W;  // W = N − i0 columns
  at::Tensor s;               // [rows, W]
};

// Runs fn(slab) for every block, blocks round-robin over the work items in parallel, each item with one
// slab buffer and single-threaded GEMMs (the calling thread's region).
template <typename Fn>
inline void for_each_triangular_slab(const Blocking& bl, const at::Tensor& u, Fn&& fn) {
  at::parallel_for(0, bl.items, 1, [&](int64_t t0, int64_t t1) {
    at::Tensor buffer = at::empty({bl.bm * bl.N}, u.options());
    for (int64_t t = t0; t < t1; ++t) {
      for (int64_t b = t; b < bl.blocks; b += bl.items) {
        const int64_t i0 = b * bl.bm, rows = std::min(bl.bm, bl.N - i0), W = bl.N - i0;
        at::Tensor s = buffer.narrow(0, 0, rows * W).view({rows, W});
        at::mm_out(s, u.narrow(0, i0, rows), u.narrow(0, i0, W).t());
        fn(TriangularSlab{t, i0, rows, W, s});
      }
    }
  });
}

// dU += G U for a symmetric G whose slab rows G[i0:i1, i0:N] are in slab.s:
// dU[i0:i1] += G[:, i0:N] U[i0:N] and dU[i1:N] += G[:, i1:N]ᵀ U[i0:i1].
inline void add_symmetric_slab_grad(const at::Tensor& du, const TriangularSlab& sl, const at::Tensor& u) {
  const int64_t N = u.size(0), i1 = sl.i0 + sl.rows;
  const at::Tensor u_blk = u.narrow(0, sl.i0, sl.rows);
  du.narrow(0, sl.i0, sl.rows).addmm_(sl.s, u.narrow(0, sl.i0, sl.W));
  if (i1 < N) du.narrow(0, i1, N - i1).addmm_(sl.s.narrow(1, sl.rows, sl.W - sl.rows).t(), u_blk);
}

// Calls fn(b, e) on [begin, end) without the index `skip` (the anchor itself).
template <typename Fn>
inline void around(int64_t begin, int64_t end, int64_t skip, Fn&& fn) {
  if (skip < begin || skip >= end) {
    if (begin < end) fn(begin, end);
    return;
  }
  if (begin < skip) fn(begin, skip);
  if (skip + 1 < end) fn(skip + 1, end);
}

}  // namespace pairwise
}  // namespace msa_fast
