// Unit tests of csrc/include/fastmtl/philox.h: Philox4x32-10 against the Random123 known-answer
// vectors, the float uniform, the seed split, the block stream layout and the block span of a
// column shard. Plain C++; run by CTest.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "fastmtl/philox.h"

#include "check.h"

namespace {

// Random123 kat_vectors, "philox4x32 10" lines: counter (4 words), key (2 words) -> output (4 words).
struct Kat {
  uint32_t ctr[4], key[2], out[4];
};
const Kat kKats[] = {
    {{0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u},
     {0x00000000u, 0x00000000u},
     {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}},
    {{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
     {0xffffffffu, 0xffffffffu},
     {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}},
    {{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
     {0xa4093822u, 0x299f31d0u},
     {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}},
};

void test_known_answers() {
  for (const Kat& kat : kKats) {
    const fastmtl::Philox4x32 r =
        fastmtl::philox4x32_10(kat.ctr[0], kat.ctr[1], kat.ctr[2], kat.ctr[3], kat.key[0], kat.key[1]);
    for (int w = 0; w < 4; ++w) {
      if (r.v[w] != kat.out[w]) {
        std::fprintf(stderr, "%s:%d: philox4x32_10(ctr %08x %08x %08x %08x, key %08x %08x) word %d = %08x, expected %08x\n",
                     __FILE__, __LINE__, kat.ctr[0], kat.ctr[1], kat.ctr[2], kat.ctr[3], kat.key[0], kat.key[1], w,
                     r.v[w], kat.out[w]);
        ++g_failures;
      }
    }
  }
}

void test_uniform_from_bits() {
  using fastmtl::uniform_from_bits;
  EXPECT(uniform_from_bits(0u) == 0.0f);
  EXPECT(uniform_from_bits(0xffu) == 0.0f);  // the low 8 bits are dropped
  EXPECT(uniform_from_bits(0x100u) == 1.0f / 16777216.0f);
  EXPECT(uniform_from_bits(0x80000000u) == 0.5f);
  EXPECT(uniform_from_bits(0xffffffffu) == 1.0f - 1.0f / 16777216.0f);  // largest value: strictly < 1
  EXPECT(uniform_from_bits(0xffffffffu) < 1.0f);
  // Every 24-bit value near the top stays in [0, 1) (float rounding must not reach 1).
  for (uint32_t top = 0xffff00u; top <= 0xffffffu; ++top) {
    const float u = uniform_from_bits((top << 8) | 0xabu);
    if (!(u >= 0.0f && u < 1.0f)) {
      EXPECT(u >= 0.0f && u < 1.0f);
      break;
    }
  }
  // And a spread of real draws.
  const fastmtl::PhiloxSeed seed = fastmtl::philox_seed_from_words(12345, 0);
  double mean = 0;
  const int n = 1 << 14;
  for (int k = 0; k < n; ++k) {
    const float u = fastmtl::philox_uniform_at(seed, static_cast<uint64_t>(k));
    if (!(u >= 0.0f && u < 1.0f)) {
      EXPECT(u >= 0.0f && u < 1.0f);
      break;
    }
    mean += u;
  }
  mean /= n;
  EXPECT(mean > 0.48 && mean < 0.52);  // 1/sqrt(12 n) ~ 0.0023: 8 sigma either side
}

void test_seed_words() {
  const fastmtl::PhiloxSeed s = fastmtl::philox_seed_from_words(0x0123456789abcdefLL, 0x00000007fedcba98LL);
  EXPECT(s.k0 == 0x89abcdefu && s.k1 == 0x01234567u);
  EXPECT(s.offset_lo == 0xfedcba98u && s.offset_hi == 0x00000007u);
  const fastmtl::PhiloxSeed neg = fastmtl::philox_seed_from_words(-1, -2);
  EXPECT(neg.k0 == 0xffffffffu && neg.k1 == 0xffffffffu);
  EXPECT(neg.offset_lo == 0xfffffffeu && neg.offset_hi == 0xffffffffu);
  // philox_draw: counter words 0/1 = the 64-bit counter, words 2/3 = the offset, key = the key word.
  const uint64_t counter = 0x0000000500000003ull;
  const fastmtl::Philox4x32 a = fastmtl::philox_draw(s, counter);
  const fastmtl::Philox4x32 b = fastmtl::philox4x32_10(3u, 5u, 0xfedcba98u, 7u, 0x89abcdefu, 0x01234567u);
  for (int w = 0; w < 4; ++w) EXPECT(a.v[w] == b.v[w]);
  // The zero seed at counter 0 is the first known-answer vector.
  const fastmtl::Philox4x32 z = fastmtl::philox_draw(fastmtl::philox_seed_from_words(0, 0), 0);
  EXPECT(z.v[0] == 0x6627e8d5u && z.v[3] == 0x9b00dbd8u);
}

void test_block_layout() {
  const fastmtl::PhiloxSeed seeds[] = {fastmtl::philox_seed_from_words(0, 0),
                                       fastmtl::philox_seed_from_words(0x0123456789abcdefLL, 42),
                                       fastmtl::philox_seed_from_words(-7, (int64_t{1} << 40) + 5)};
  // Blocks 0 and 1, one whose counter passes 2^32 (word 1 of the counter in use), and the last one.
  const uint64_t blocks[] = {0, 1, 2, (uint64_t{1} << 26) + 3, (~uint64_t{0}) / fastmtl::kPhiloxBlockElements};
  std::vector<float> block(fastmtl::kPhiloxBlockElements);
  for (const fastmtl::PhiloxSeed& seed : seeds) {
    for (uint64_t b : blocks) {
      std::fill(block.begin(), block.end(), -1.0f);
      fastmtl::philox_uniform_block(seed, b, block.data());
      int mismatches = 0;
      for (int64_t e = 0; e < fastmtl::kPhiloxBlockElements; ++e) {
        const uint64_t n = b * fastmtl::kPhiloxBlockElements + static_cast<uint64_t>(e);
        if (fastmtl::philox_uniform_at(seed, n) != block[e]) ++mismatches;
        if (!(block[e] >= 0.0f && block[e] < 1.0f)) ++mismatches;
      }
      if (mismatches) {
        std::fprintf(stderr, "%s:%d: block %llu: %d element(s) differ from philox_uniform_at\n", __FILE__, __LINE__,
                     static_cast<unsigned long long>(b), mismatches);
        ++g_failures;
      }
    }
  }
  // The documented layout: element 256 b + 64 lane + k is word `lane` of the draw for counter 64 b + k.
  const fastmtl::PhiloxSeed seed = seeds[1];
  for (uint64_t b : {uint64_t{0}, uint64_t{3}}) {
    for (int lane = 0; lane < 4; ++lane) {
      for (int k : {0, 1, 63}) {
        const uint64_t n = 256 * b + 64 * static_cast<uint64_t>(lane) + static_cast<uint64_t>(k);
        const fastmtl::Philox4x32 r = fastmtl::philox_draw(seed, 64 * b + static_cast<uint64_t>(k));
        EXPECT(fastmtl::philox_uniform_at(seed, n) == fastmtl::uniform_from_bits(r.v[lane]));
      }
    }
  }
  // Different blocks, keys and offsets give different streams.
  EXPECT(fastmtl::philox_uniform_at(seeds[1], 0) != fastmtl::philox_uniform_at(seeds[1], 256));
  EXPECT(fastmtl::philox_uniform_at(seeds[0], 5) != fastmtl::philox_uniform_at(seeds[1], 5));
  EXPECT(fastmtl::philox_uniform_at(fastmtl::philox_seed_from_words(1, 0), 5) !=
        fastmtl::philox_uniform_at(fastmtl::philox_seed_from_words(1, 1), 5));
}

// philox_span: the blocks drawn for elements [first, first + count) (GradDrop's column shards)
// are the fewest that cover them, and reading from `shift` on gives each element's uniform.
void test_span() {
  const fastmtl::PhiloxSeed seed = fastmtl::philox_seed_from_words(0x0123456789abcdefLL, 42);
  const int64_t firsts[] = {0, 1, 7, 63, 64, 65, 255, 256, 257, 1000, (int64_t{1} << 40) + 3};
  const int64_t counts[] = {0, 1, 5, 192, 193, 255, 256, 257, 600};
  std::vector<float> blocks;
  for (int64_t first : firsts) {
    for (int64_t count : counts) {
      const fastmtl::PhiloxSpan span = fastmtl::philox_span(first, count);
      EXPECT(span.shift >= 0 && span.shift < fastmtl::kPhiloxBlockElements);
      EXPECT(static_cast<int64_t>(span.first_block) * fastmtl::kPhiloxBlockElements + span.shift == first);
      // Covering: the blocks reach the last element; fewest: one block less would not (none for no element).
      if (count == 0) {
        EXPECT(span.blocks == 0);
      } else {
        EXPECT(span.blocks * fastmtl::kPhiloxBlockElements >= span.shift + count);
        EXPECT((span.blocks - 1) * fastmtl::kPhiloxBlockElements < span.shift + count);
      }
      blocks.assign(static_cast<size_t>(span.blocks * fastmtl::kPhiloxBlockElements), -1.0f);
      for (int64_t b = 0; b < span.blocks; ++b) {
        fastmtl::philox_uniform_block(seed, span.first_block + static_cast<uint64_t>(b),
                                      blocks.data() + b * fastmtl::kPhiloxBlockElements);
      }
      int mismatches = 0;
      for (int64_t j = 0; j < count; ++j) {
        const float expected = fastmtl::philox_uniform_at(seed, static_cast<uint64_t>(first + j));
        if (blocks[static_cast<size_t>(span.shift + j)] != expected) ++mismatches;
      }
      if (mismatches) {
        std::fprintf(stderr, "%s:%d: span(%lld, %lld): %d element(s) differ from philox_uniform_at\n", __FILE__,
                     __LINE__, static_cast<long long>(first), static_cast<long long>(count), mismatches);
        ++g_failures;
      }
    }
  }
  // Aligned starts draw exactly the blocks of an unsharded call: ceil(count / 256) from first / 256.
  EXPECT(fastmtl::philox_span(512, 300).first_block == 2 && fastmtl::philox_span(512, 300).blocks == 2);
  EXPECT(fastmtl::philox_span(0, 256).blocks == 1 && fastmtl::philox_span(255, 2).blocks == 2);
}

}  // namespace

int main() {
  test_known_answers();
  test_uniform_from_bits();
  test_seed_words();
  test_block_layout();
  test_span();
  return report("test_philox");
}
