// Device side of the CUDA cutoff kernel (ops.md §9), included by csrc/cuda/cutoff.cu. Kept free of
// torch headers: it needs only csrc/common/cutoff.h, which keeps nvcc's device passes light.
//
// Design. One block handles one (sample b, chunk of rows); blocks grid-stride over all of them.
//  1. The block builds the sample's keep mask in dynamic shared memory, threads drawing t in parallel:
//     feature mode a D-byte column mask, token mode a byte per row of the chunk (draws that land
//     outside the chunk are ignored), span mode the same row mask from the directly computed start.
//  2. __syncthreads, then the chunk is streamed in 16-byte vectors when rows allow it (element bits
//     as uint16/32/64, so fp16/bf16, fp32 and fp64 share kernels): AND with the column mask (the
//     CPU kernel's selection, never a multiplication), or rows copied / written as zeros (cut rows
//     are not even read).
// A chunk streams about 2048 vectors (8 per thread). When a sample spans several chunks and has many
// draws (each chunk would redo them all), or the mask exceeds the shared-memory budget (very wide D),
// the mask is instead built once per sample in global memory by a separate draw kernel, spread over
// the whole grid, and the stream kernel reads it.
#pragma once

#include <algorithm>
#include <cstdint>

#include "common/cutoff.h"

namespace msa_fast {
namespace cutoff {
namespace gpu {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;                // grid-stride beyond this
constexpr int64_t kTargetVecs = 2048;                // vectors streamed per chunk (8 per thread)
constexpr int64_t kMaxDrawsPerChunk = 4 * kThreads;  // beyond this, build masks once per sample
constexpr int64_t kMaxSharedMask = 16 * 1024;        // bytes of mask in shared memory (keeps occupancy high)

template <typename bits_t, int N>
struct alignas(sizeof(bits_t) * N) Vec {
  bits_t v[N];
};

struct Geometry {
  int64_t B, L, D;
  int64_t vpr;             // vectors per row = D / N
  int64_t rows_per_block;  // rows of one sample per chunk
  int64_t chunks;          // chunks per sample
  uint64_t seed;
  int64_t feature_draws;
  double ratio;
  Mode mode;
  bool left_padding;
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Launch plan of one call, for vectors of N elements (host side, pure arithmetic).
struct Plan {
  bool global_mask;      // build the masks once per sample in global memory ([B, D] or [B, L] bytes)
  int64_t mask_draws;    // draws per sample of draw_mask_kernel (0: nothing to draw)
  int64_t draw_blocks;   // grid of draw_mask_kernel
  int64_t stream_blocks; // grid of cutoff_kernel
  int64_t shared_bytes;  // dynamic shared memory of cutoff_kernel
};

// Fills g.vpr, g.rows_per_block and g.chunks, and decides where the masks are built.
inline Plan plan_launch(Geometry& g, int N) {
  const bool feature = g.mode == kFeature;
  g.vpr = g.D / N;
  g.rows_per_block = std::min<int64_t>(std::max<int64_t>(ceil_div(kTargetVecs, g.vpr), 1), g.L);
  g.chunks = ceil_div(g.L, g.rows_per_block);
  // Draws of one sample (an upper bound in token mode: n_b ≤ n(L)); span mode draws once per chunk.
  const int64_t draws = feature ? g.feature_draws : (g.mode == kToken ? draws_for(g.L, g.ratio) : 0);
  Plan p{};
  p.shared_bytes = 4 * ceil_div(feature ? g.D : g.rows_per_block, 4);  // row masks: ≤ kTargetVecs bytes
  p.global_mask = p.shared_bytes > kMaxSharedMask || (g.chunks > 1 && draws > kMaxDrawsPerChunk);
  if (p.global_mask) {
    p.shared_bytes = 0;
    p.mask_draws = draws;
    p.draw_blocks = std::min(ceil_div(g.B * draws, kThreads), kMaxBlocks);
  }
  p.stream_blocks = std::min(g.B * g.chunks, kMaxBlocks);
  return p;
}

// Global-mask path: keep[b, j] (pre-filled with 1) gets 0 at every column (feature) or time step
// (token) that a draw of sample b cuts. Draws are spread over the whole grid; duplicate draws store
// the same 0, a benign race.
__global__ void draw_mask_kernel(uint8_t* __restrict__ keep, Geometry g, const int64_t* __restrict__ lengths,
                                 int64_t draws_max) {
  const int64_t total = g.B * draws_max;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = i / draws_max, t = i - b * draws_max;
    if (g.mode == kFeature) {
      keep[b * g.D + feature_index(g.seed, b, g.D, t)] = 0;
    } else {
      const int64_t len = lengths ? lengths[b] : g.L;
      if (t < draws_for(len, g.ratio)) keep[b * g.L + token_cut_row(g.seed, b, g.L, t, len, g.left_padding)] = 0;
    }
  }
}

// kFeature: column mask (D bytes). Otherwise: row mask (rows_per_block bytes of the chunk).
// global_keep == nullptr: the block builds the mask in shared memory; else it reads the [B, D] or
// [B, L] mask from global memory.
template <typename bits_t, int N, bool kFeature>
__global__ void __launch_bounds__(kThreads)
    cutoff_kernel(const Vec<bits_t, N>* __restrict__ x, Vec<bits_t, N>* __restrict__ out, Geometry g,
                  const int64_t* __restrict__ lengths, const uint8_t* __restrict__ global_keep) {
  extern __shared__ uint32_t shared_words[];  // word-typed for alignment and the word-wide fill
  uint8_t* const shared_keep = reinterpret_cast<uint8_t*>(shared_words);
  const int64_t total = g.B * g.chunks;
  const uint32_t vpr = static_cast<uint32_t>(g.vpr);  // D < 2^32 (checked on the host)
  for (int64_t blk = blockIdx.x; blk < total; blk += gridDim.x) {
    const int64_t b = blk / g.chunks, chunk = blk - b * g.chunks;
    const int64_t row0 = chunk * g.rows_per_block;
    const int64_t rows = g.L - row0 < g.rows_per_block ? g.L - row0 : g.rows_per_block;

    // 1. The keep mask of this (sample, chunk).
    const uint8_t* keep = shared_keep;
    if (global_keep != nullptr) {
      keep = kFeature ? global_keep + b * g.D : global_keep + b * g.L + row0;
    } else {
      __syncthreads();  // the previous chunk's readers are done with shared_keep
      if constexpr (kFeature) {
        for (int64_t w = threadIdx.x; w < (g.D + 3) / 4; w += blockDim.x) shared_words[w] = 0x01010101u;
        __syncthreads();
        for (int64_t t = threadIdx.x; t < g.feature_draws; t += blockDim.x)
          shared_keep[feature_index(g.seed, b, g.D, t)] = 0;
      } else {
        const int64_t len = lengths ? lengths[b] : g.L;
        const int64_t n = draws_for(len, g.ratio);
        if (g.mode == kSpan) {
          // Rows [first, first + n) are cut; n = 0 cuts nothing.
          const int64_t first = n > 0 ? span_cut_begin(g.seed, b, g.L, len, n, g.left_padding) : 0;
          for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) {
            const int64_t row = row0 + r;
            shared_keep[r] = !(row >= first && row < first + n);
          }
        } else {
          for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) shared_keep[r] = 1;
          __syncthreads();
          for (int64_t t = threadIdx.x; t < n; t += blockDim.x) {
            const int64_t row = token_cut_row(g.seed, b, g.L, t, len, g.left_padding);
            if (row >= row0 && row < row0 + rows) shared_keep[row - row0] = 0;
          }
        }
      }
      __syncthreads();
    }

    // 2. Stream the chunk: vector v of the chunk is (row r, column vector c); both advance
    //    incrementally so the loop has no division.
    const int64_t nvec = rows * g.vpr;
    const int64_t base = (b * g.L + row0) * g.vpr;
    uint32_t c = threadIdx.x % vpr, r = threadIdx.x / vpr;
    const uint32_t step_c = blockDim.x % vpr, step_r = blockDim.x / vpr;
    for (int64_t v = threadIdx.x; v < nvec; v += blockDim.x) {
      Vec<bits_t, N> o;
      if constexpr (kFeature) {
        const Vec<bits_t, N> in = x[base + v];
        MSA_UNROLL
        for (int j = 0; j < N; ++j) o.v[j] = in.v[j] & keep_word<bits_t>(keep[static_cast<int64_t>(c) * N + j]);
      } else if (keep[r]) {
        o = x[base + v];
      } else {
        MSA_UNROLL
        for (int j = 0; j < N; ++j) o.v[j] = keep_word<bits_t>(false);
      }
      out[base + v] = o;
      c += step_c;
      r += step_r;
      if (c >= vpr) {
        c -= vpr;
        ++r;
      }
    }
  }
}

}  // namespace gpu
}  // namespace cutoff
}  // namespace msa_fast
