#pragma once
// Philox uniforms for one 256-element block on the CPU. The AVX-512 and AVX2 versions draw 16
// or 8 counters per instruction (the portable loop in philox.h does not vectorise well: GCC
// shuffles the widening multiplies); all give exactly the numbers of philox_uniform_block.
// The random numbers are GradDrop's main cost after the memory traffic, hence two ISA copies.
#include <cstdint>

#include "cpu/cpu_common.h"
#include "fastmtl/philox.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#endif

namespace fastmtl::cpu {

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// (hi, lo) 32-bit halves of x * m in each of eight lanes.
__attribute__((target("avx2"))) inline void mulhilo_x8(__m256i x, __m256i m, __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(x, m);                         // lanes 0, 2, 4, 6
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(x, 32), m);  // lanes 1, 3, 5, 7
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

__attribute__((target("avx2"))) inline void philox_uniform_block_avx2(const PhiloxSeed& seed, uint64_t block,
                                                                      float* out) {
  const __m256i mul0 = _mm256_set1_epi32(static_cast<int>(0xD2511F53u));
  const __m256i mul1 = _mm256_set1_epi32(static_cast<int>(0xCD9E8D57u));
  const __m256 scale = _mm256_set1_ps(1.0f / 16777216.0f);
  const uint64_t first = block * kPhiloxBlockCounters;
  for (int64_t k = 0; k < kPhiloxBlockCounters; k += 8) {
    // Counters first + k .. first + k + 7 never cross a 2^32 boundary: 64 * block + 63 keeps the
    // high word constant within a block.
    const uint64_t counter = first + static_cast<uint64_t>(k);
    __m256i c0 = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(counter))),
                                  _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256i c1 = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(counter >> 32)));
    __m256i c2 = _mm256_set1_epi32(static_cast<int>(seed.offset_lo));
    __m256i c3 = _mm256_set1_epi32(static_cast<int>(seed.offset_hi));
    uint32_t k0 = seed.k0, k1 = seed.k1;
    for (int round = 0; round < 10; ++round) {
      __m256i hi0, lo0, hi1, lo1;
      mulhilo_x8(c0, mul0, hi0, lo0);
      mulhilo_x8(c2, mul1, hi1, lo1);
      c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32(static_cast<int>(k0)));
      c1 = lo1;
      c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32(static_cast<int>(k1)));
      c3 = lo0;
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    const __m256i words[4] = {c0, c1, c2, c3};
    for (int lane = 0; lane < 4; ++lane) {
      const __m256 u = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(words[lane], 8)), scale);
      _mm256_storeu_ps(out + lane * kPhiloxBlockCounters + k, u);
    }
  }
}

// The same rounds as philox_uniform_block_avx2, sixteen counters at a time.
__attribute__((target("avx512f"))) inline void philox_uniform_block_avx512(const PhiloxSeed& seed, uint64_t block,
                                                                          float* out) {
  const __m512i mul0 = _mm512_set1_epi32(static_cast<int>(0xD2511F53u));
  const __m512i mul1 = _mm512_set1_epi32(static_cast<int>(0xCD9E8D57u));
  const __m512 scale = _mm512_set1_ps(1.0f / 16777216.0f);
  const uint64_t first = block * kPhiloxBlockCounters;
  for (int64_t k = 0; k < kPhiloxBlockCounters; k += 16) {
    const uint64_t counter = first + static_cast<uint64_t>(k);
    __m512i c0 = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(counter))),
                                  _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    __m512i c1 = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(counter >> 32)));
    __m512i c2 = _mm512_set1_epi32(static_cast<int>(seed.offset_lo));
    __m512i c3 = _mm512_set1_epi32(static_cast<int>(seed.offset_hi));
    uint32_t k0 = seed.k0, k1 = seed.k1;
    for (int round = 0; round < 10; ++round) {
      const __m512i even0 = _mm512_mul_epu32(c0, mul0), odd0 = _mm512_mul_epu32(_mm512_srli_epi64(c0, 32), mul0);
      const __m512i even1 = _mm512_mul_epu32(c2, mul1), odd1 = _mm512_mul_epu32(_mm512_srli_epi64(c2, 32), mul1);
      const __m512i lo0 = _mm512_mask_blend_epi32(0xAAAA, even0, _mm512_slli_epi64(odd0, 32));
      const __m512i hi0 = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even0, 32), odd0);
      const __m512i lo1 = _mm512_mask_blend_epi32(0xAAAA, even1, _mm512_slli_epi64(odd1, 32));
      const __m512i hi1 = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even1, 32), odd1);
      c0 = _mm512_xor_si512(_mm512_xor_si512(hi1, c1), _mm512_set1_epi32(static_cast<int>(k0)));
      c1 = lo1;
      c2 = _mm512_xor_si512(_mm512_xor_si512(hi0, c3), _mm512_set1_epi32(static_cast<int>(k1)));
      c3 = lo0;
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    const __m512i words[4] = {c0, c1, c2, c3};
    for (int lane = 0; lane < 4; ++lane) {
      const __m512 u = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(words[lane], 8)), scale);
      _mm512_storeu_ps(out + lane * kPhiloxBlockCounters + k, u);
    }
  }
}

#endif

inline void philox_uniform_block_cpu(const PhiloxSeed& seed, uint64_t block, float* out) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if (cpu_has_avx512()) {
    philox_uniform_block_avx512(seed, block, out);
    return;
  }
  if (cpu_has_avx2_fma()) {
    philox_uniform_block_avx2(seed, block, out);
    return;
  }
#endif
  philox_uniform_block(seed, block, out);
}

}  // namespace fastmtl::cpu
