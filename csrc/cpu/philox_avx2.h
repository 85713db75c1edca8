// Philox4x32-10 of many consecutive counters at once with AVX2 intrinsics (CPU only; the rounds are
// the ones of common/philox.h, which stays the single definition for the tests and the CUDA kernels).
//
// Why intrinsics: GCC vectorises common/philox.h's `uint64_t(m) * c` as 64-bit lanes (4 per ymm) with
// packing around every multiply: 2.5 ns per 32-bit word on this project's 2.45 GHz AVX2 machine. Here
// each 32×32→64 product of 8 lanes is two vpmuludq (even and odd lanes) and two blends, and four
// independent groups of 8 blocks run interleaved so the multiplies' latency is hidden: 0.86 ns per
// word (single-threaded, measured with a standalone loop over this function).
//
// Word layout: block n (counter (lo32(n), hi32(n), 0, 0), key (lo32(seed), hi32(seed))) writes its
// four output words c0..c3 to words[4·(n − first) + 0..3]: exactly dropout::block's order.
#pragma once

#include <cstdint>

#include "common/philox.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MSA_FAST_PHILOX_AVX2 1
#include <immintrin.h>
#endif

namespace msa_fast {
namespace philox_avx2 {

// Blocks per call of philox_words: four interleaved groups of eight lanes.
constexpr int64_t kBlocks = 32;

#if defined(MSA_FAST_PHILOX_AVX2)

inline bool supported() {
  static const bool ok = __builtin_cpu_supports("avx2");
  return ok;
}

// hi, lo of the eight 32×32→64-bit products a[i]·m.
__attribute__((target("avx2"), always_inline)) inline void mulhilo8(__m256i a, __m256i m, __m256i& hi,
                                                                   __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(a, m);                         // lanes 0, 2, 4, 6
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);   // lanes 1, 3, 5, 7
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}

// The 4·kBlocks words of blocks first .. first + kBlocks − 1 (layout above).
__attribute__((target("avx2"))) inline void philox_words(uint64_t seed, uint64_t first, uint32_t* words) {
  constexpr int kGroups = kBlocks / 8;
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(kPhiloxM0));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(kPhiloxM1));
  __m256i c0[kGroups], c1[kGroups], c2[kGroups], c3[kGroups];
  for (int q = 0; q < kGroups; ++q) {
    alignas(32) uint32_t lo[8], hi[8];
    for (int j = 0; j < 8; ++j) {  // 64-bit counters: the carry into hi32 happens inside a group too
      const uint64_t n = first + static_cast<uint64_t>(8 * q + j);
      lo[j] = static_cast<uint32_t>(n);
      hi[j] = static_cast<uint32_t>(n >> 32);
    }
    c0[q] = _mm256_load_si256(reinterpret_cast<const __m256i*>(lo));
    c1[q] = _mm256_load_si256(reinterpret_cast<const __m256i*>(hi));
    c2[q] = _mm256_setzero_si256();
    c3[q] = _mm256_setzero_si256();
  }
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  MSA_UNROLL
  for (int round = 0; round < 10; ++round) {
    const __m256i vk0 = _mm256_set1_epi32(static_cast<int>(k0));
    const __m256i vk1 = _mm256_set1_epi32(static_cast<int>(k1));
    MSA_UNROLL
    for (int q = 0; q < kGroups; ++q) {
      __m256i h0, l0, h1, l1;
      mulhilo8(c0[q], m0, h0, l0);
      mulhilo8(c2[q], m1, h1, l1);
      c0[q] = _mm256_xor_si256(_mm256_xor_si256(h1, c1[q]), vk0);
      c1[q] = l1;
      c2[q] = _mm256_xor_si256(_mm256_xor_si256(h0, c3[q]), vk1);
      c3[q] = l0;
    }
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  for (int q = 0; q < kGroups; ++q) {  // 4×8 transpose: word w of lane j goes to words[4j + w]
    const __m256i t0 = _mm256_unpacklo_epi32(c0[q], c1[q]), t1 = _mm256_unpackhi_epi32(c0[q], c1[q]);
    const __m256i t2 = _mm256_unpacklo_epi32(c2[q], c3[q]), t3 = _mm256_unpackhi_epi32(c2[q], c3[q]);
    const __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);
    const __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
    __m256i* o = reinterpret_cast<__m256i*>(words + 32 * q);
    _mm256_storeu_si256(o + 0, _mm256_permute2x128_si256(u0, u1, 0x20));  // lanes 0, 1
    _mm256_storeu_si256(o + 1, _mm256_permute2x128_si256(u2, u3, 0x20));  // lanes 2, 3
    _mm256_storeu_si256(o + 2, _mm256_permute2x128_si256(u0, u1, 0x31));  // lanes 4, 5
    _mm256_storeu_si256(o + 3, _mm256_permute2x128_si256(u2, u3, 0x31));  // lanes 6, 7
  }
}

#else

inline bool supported() { return false; }
inline void philox_words(uint64_t, uint64_t, uint32_t*) {}

#endif

}  // namespace philox_avx2
}  // namespace msa_fast
