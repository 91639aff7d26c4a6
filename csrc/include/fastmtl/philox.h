#pragma once
// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11).
// Counter-based: the random bits of element n depend only on (key, counter n), so the CPU
// kernel, the CUDA kernel and the pure-PyTorch reference all draw the same numbers for the
// same seed, whatever the thread layout.
#include <cstdint>

#include "fastmtl/macros.h"

namespace fastmtl {

struct Philox4x32 {
  uint32_t v[4];
};

FASTMTL_HOST_DEVICE inline void philox_mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t product = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  hi = static_cast<uint32_t>(product >> 32);
  lo = static_cast<uint32_t>(product);
}

// Four 32-bit random words for counter (c0, c1, c2, c3) under key (k0, k1).
FASTMTL_HOST_DEVICE inline Philox4x32 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                                    uint32_t k0, uint32_t k1) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(kMul0, c0, hi0, lo0);
    philox_mulhilo(kMul1, c2, hi1, lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
  return Philox4x32{{c0, c1, c2, c3}};
}

// A float uniform in [0, 1) from the top 24 bits of a random word: exact in float32.
FASTMTL_HOST_DEVICE inline float uniform_from_bits(uint32_t bits) {
  return static_cast<float>(bits >> 8) * (1.0f / 16777216.0f);
}

// The seed a caller passes is two int64 words: word 0 is the key, word 1 the stream offset.
// Element n of the stream uses counter (n / 4, offset) and lane n % 4.
struct PhiloxSeed {
  uint32_t k0, k1, offset_lo, offset_hi;
};

FASTMTL_HOST_DEVICE inline PhiloxSeed philox_seed_from_words(int64_t key, int64_t offset) {
  const uint64_t k = static_cast<uint64_t>(key), o = static_cast<uint64_t>(offset);
  return PhiloxSeed{static_cast<uint32_t>(k), static_cast<uint32_t>(k >> 32), static_cast<uint32_t>(o),
                    static_cast<uint32_t>(o >> 32)};
}

// Uniforms for elements 4*group .. 4*group+3.
FASTMTL_HOST_DEVICE inline void philox_uniform4(const PhiloxSeed& seed, uint64_t group, float out[4]) {
  const Philox4x32 r = philox4x32_10(static_cast<uint32_t>(group), static_cast<uint32_t>(group >> 32),
                                     seed.offset_lo, seed.offset_hi, seed.k0, seed.k1);
  for (int lane = 0; lane < 4; ++lane) out[lane] = uniform_from_bits(r.v[lane]);
}

}  // namespace fastmtl
