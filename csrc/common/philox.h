// Counter-based Philox4x32-10 (Salmon et al., SC'11), shared by the CPU and CUDA kernels.
//
// Random numbers are a pure function of (seed, offset) — ops.md §0.8 — so every backend draws the
// same bits and backward passes regenerate masks instead of storing them. The word layout is the one
// of triton.language.randint(seed, offset): key = (lo32(seed), hi32(seed)), counter = (offset, 0, 0, 0),
// output word c0. The Triton kernels in kernels/ therefore get identical integers from tl.randint.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define MSA_HD __host__ __device__ __forceinline__
#else
#define MSA_HD inline
#endif

// Full unrolling of short fixed loops, spelled for each compiler (GCC ignores a bare #pragma unroll).
#if defined(__CUDACC__) || defined(__clang__)
#define MSA_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define MSA_UNROLL _Pragma("GCC unroll 16")
#else
#define MSA_UNROLL
#endif

namespace msa_fast {

struct Philox4x32 {
  uint32_t c0, c1, c2, c3;
};

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

// Full 4-word Philox4x32-10 block; exposed so the Random123 known-answer vectors can be checked.
MSA_HD Philox4x32 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                uint32_t k1) {
  MSA_UNROLL
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2;
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n1 = static_cast<uint32_t>(p1);
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    const uint32_t n3 = static_cast<uint32_t>(p0);
    c0 = n0;
    c1 = n1;
    c2 = n2;
    c3 = n3;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return {c0, c1, c2, c3};
}

// The 32-bit draw `r` of ops.md §0.8 for (seed, offset): tl.randint's output word.
MSA_HD uint32_t philox_randint(uint64_t seed, uint32_t offset) {
  return philox4x32_10(offset, 0u, 0u, 0u, static_cast<uint32_t>(seed),
                       static_cast<uint32_t>(seed >> 32))
      .c0;
}

// Lemire's multiply-shift: an exactly reproducible index in [0, n) from one 32-bit draw.
MSA_HD uint32_t philox_index(uint32_t r, uint32_t n) {
  return static_cast<uint32_t>((static_cast<uint64_t>(r) * n) >> 32);
}

// u = (2·(r >> 9) + 1)·2⁻²⁴: exact in fp32, never 0 or 1 (unlike tl.rand's conversion). The integer is
// below 2²⁵, so it converts through int32: x86 has a vector int32→float conversion but none from uint32,
// and GCC's uint32 emulation made this conversion cost as much as the Philox rounds in dropout's loop.
MSA_HD float philox_uniform(uint32_t r) {
  return static_cast<float>(static_cast<int32_t>(2u * (r >> 9) + 1u)) * 5.9604644775390625e-08f;
}

}  // namespace msa_fast
