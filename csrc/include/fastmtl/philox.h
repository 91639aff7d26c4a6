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

// The seed a caller passes is two int64 words: word 0 is the key, word 1 the stream offset
// (counter words 2 and 3).
struct PhiloxSeed {
  uint32_t k0, k1, offset_lo, offset_hi;
};

FASTMTL_HOST_DEVICE inline PhiloxSeed philox_seed_from_words(int64_t key, int64_t offset) {
  const uint64_t k = static_cast<uint64_t>(key), o = static_cast<uint64_t>(offset);
  return PhiloxSeed{static_cast<uint32_t>(k), static_cast<uint32_t>(k >> 32), static_cast<uint32_t>(o),
                    static_cast<uint32_t>(o >> 32)};
}

FASTMTL_HOST_DEVICE inline Philox4x32 philox_draw(const PhiloxSeed& seed, uint64_t counter) {
  return philox4x32_10(static_cast<uint32_t>(counter), static_cast<uint32_t>(counter >> 32), seed.offset_lo,
                       seed.offset_hi, seed.k0, seed.k1);
}

// Stream layout: elements come in blocks of 256. Element n = 256 b + 64 lane + k takes word
// `lane` of the draw for counter 64 b + k. The four words of one draw land 64 elements apart,
// so a CPU loop over k writes each lane contiguously and vectorises.
constexpr int64_t kPhiloxBlockElements = 256;
constexpr int64_t kPhiloxBlockCounters = 64;

// Uniform for element n alone (the CUDA kernels and tests use this form).
FASTMTL_HOST_DEVICE inline float philox_uniform_at(const PhiloxSeed& seed, uint64_t n) {
  const uint64_t block = n / kPhiloxBlockElements, within = n % kPhiloxBlockElements;
  const Philox4x32 r = philox_draw(seed, block * kPhiloxBlockCounters + within % kPhiloxBlockCounters);
  return uniform_from_bits(r.v[within / kPhiloxBlockCounters]);
}

// Where elements [first, first + count) of the stream lie in whole blocks: they start `shift`
// elements into block `first_block` and end within block first_block + blocks - 1. A call on a
// column shard (GradDrop's column_offset) draws these blocks and reads from `shift` on, so it
// gets the uniforms the unsharded call draws for its columns; shift = 0 is the aligned case,
// which draws exactly the blocks of an unsharded call. Requires first >= 0, count >= 0.
struct PhiloxSpan {
  uint64_t first_block;
  int64_t shift;   // in [0, 256)
  int64_t blocks;  // ceil((shift + count) / 256); 0 when count is 0
};

FASTMTL_HOST_DEVICE inline PhiloxSpan philox_span(int64_t first, int64_t count) {
  const int64_t shift = first % kPhiloxBlockElements;
  return PhiloxSpan{static_cast<uint64_t>(first / kPhiloxBlockElements), shift,
                    count == 0 ? 0 : (shift + count + kPhiloxBlockElements - 1) / kPhiloxBlockElements};
}

// Uniforms for the whole block b: out[0 .. 255] = elements 256 b .. 256 b + 255.
FASTMTL_HOST_DEVICE inline void philox_uniform_block(const PhiloxSeed& seed, uint64_t block, float* out) {
  for (int64_t k = 0; k < kPhiloxBlockCounters; ++k) {
    const Philox4x32 r = philox_draw(seed, block * kPhiloxBlockCounters + k);
    for (int lane = 0; lane < 4; ++lane) out[lane * kPhiloxBlockCounters + k] = uniform_from_bits(r.v[lane]);
  }
}

}  // namespace fastmtl
