// GradDrop (Chen et al. 2020) in one pass: per column tile, sum the (sign-corrected) task
// gradients and their magnitudes, form the purity P, draw U from Philox (element n of the
// stream, so every path draws the same numbers), then add each task's gradient scaled by its
// keep factor. The tile's rows stay in cache between the two walks, so G is read from memory
// once. The maths is surgery_math.h's graddrop_purity / _direction / _keep_factor on vectors.
// column_offset: G holds columns [offset, offset + P) of a larger matrix (a column shard); local
// column c takes stream element offset + c, so the shards' masks are the unsharded call's.
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

#include "cpu/cpu_common.h"
#include "cpu/cpu_ops.h"
#include "cpu/philox_cpu.h"
#include "fastmtl/surgery_math.h"

namespace fastmtl::cpu {
namespace {

// Tiles of kTileColumns (8 KB per float row): long enough for the hardware prefetcher to stream
// G when the compute loops read it in place (measured 1.7x faster than copying 256-column
// tiles to a buffer first), and a whole number of Philox blocks so that, at a column offset
// that is a multiple of 256 (offset 0 included), each tile draws exactly its own blocks. At any
// other offset a tile's columns start `shift` elements into a block and it draws one more
// block (one in eight more for a full tile), read from `shift` on.
constexpr int64_t kTile = kTileColumns;
// Rows read together in the first walk (measured at T = 8: 4 beat 1 and 8 at P = 1e6 and 4e6).
constexpr int64_t kRowsPerWalk = 4;  // the walk below is written out for exactly four
static_assert(kTile % kPhiloxBlockElements == 0 && kChunkColumns % kTile == 0,
              "tiles must start on Philox block boundaries (relative to the column offset)");

template <int Bytes, typename scalar_t, bool kHasSigns>
FASTMTL_ALWAYS_INLINE void graddrop_range(const scalar_t* G, int64_t T, int64_t row_stride, const scalar_t* signs,
                                          const acc_type<scalar_t>* leak, const PhiloxSeed& seed,
                                          int64_t column_offset, int64_t begin, int64_t end, scalar_t* out) {
  using acc_t = acc_type<scalar_t>;
  using V = vec<acc_t, Bytes>;
  constexpr int W = Bytes / sizeof(acc_t);
  std::vector<acc_t> converted(T * kTile);
  std::vector<const acc_t*> rows(T);
  alignas(64) acc_t sign[kTile], uniform_acc[kTile], result[kTile];
  alignas(64) acc_t sum_buffer[kTile], abs_buffer[kTile], direction_buffer[kTile];
  // One block more than a tile: an unaligned column offset makes a tile straddle kTile / 256 + 1 blocks.
  alignas(64) float uniform_bits[kTile + kPhiloxBlockElements];
  const V zero = {};
  const V one = zero + acc_t(1);
  for (int64_t t = 0; t < kTile; ++t) sign[t] = acc_t(1);
  for (int64_t c0 = begin; c0 < end; c0 += kTile) {
    const int64_t len = std::min(kTile, end - c0);
    for (int64_t i = 0; i < T; ++i) {
      const scalar_t* src = G + i * row_stride + c0;
      if (std::is_same<acc_t, scalar_t>::value && len == kTile) {  // read G in place
        rows[i] = reinterpret_cast<const acc_t*>(src);
        continue;
      }
      // Half/bfloat16 rows, and the last partial tile, go through a zero-padded acc_t copy.
      acc_t* dst = converted.data() + i * kTile;
      for (int64_t t = 0; t < len; ++t) dst[t] = to_acc<acc_t>(src[t]);
      for (int64_t t = len; t < kTile; ++t) dst[t] = 0;
      rows[i] = dst;
    }
    if (kHasSigns) {
      for (int64_t t = 0; t < kTile; ++t) sign[t] = t < len ? sign_of(to_acc<acc_t>(signs[c0 + t])) : acc_t(1);
    }
    // Local column c0 + t is stream element column_offset + c0 + t = uniform_bits[span.shift + t].
    const PhiloxSpan span = philox_span(column_offset + c0, len);
    for (int64_t b = 0; b < span.blocks; ++b) {
      philox_uniform_block_cpu(seed, span.first_block + static_cast<uint64_t>(b),
                               uniform_bits + b * kPhiloxBlockElements);
    }
    const float* tile_uniform = uniform_bits + span.shift;  // load_vec is unaligned-safe
    // Lanes past the last column of a partial tile are never computed (their inputs are unset).
    const int64_t vectors = (len + W - 1) / W;
    if (!std::is_same<acc_t, float>::value) {
      for (int64_t t = 0; t < vectors * W; ++t) uniform_acc[t] = tile_uniform[t];
    }
    const acc_t* uniform =
        std::is_same<acc_t, float>::value ? reinterpret_cast<const acc_t*>(tile_uniform) : uniform_acc;

    // Per-tile lane accumulators (V may alias acc_t: see VectorOf).
    V* signed_sum = reinterpret_cast<V*>(sum_buffer);
    V* abs_sum = reinterpret_cast<V*>(abs_buffer);
    V* direction = reinterpret_cast<V*>(direction_buffer);
    V* acc = reinterpret_cast<V*>(result);
    for (int64_t v = 0; v < vectors; ++v) signed_sum[v] = abs_sum[v] = acc[v] = zero;
    // kRowsPerWalk rows per walk: several memory streams in flight (one row at a time starves
    // DRAM), few enough that the walk stays cache-friendly when G fits in cache.
    // Sums still run over tasks in index order (as reference.graddrop): bitwise-equal purity.
    int64_t i0 = 0;
    for (; i0 + kRowsPerWalk <= T; i0 += kRowsPerWalk) {  // full groups: a fixed-length inner loop
      const acc_t *r0 = rows[i0], *r1 = rows[i0 + 1], *r2 = rows[i0 + 2], *r3 = rows[i0 + 3];
      for (int64_t v = 0; v < vectors; ++v) {
        const V sgn = kHasSigns ? load_vec<V>(sign + v * W) : one;
        const V g0 = load_vec<V>(r0 + v * W) * sgn, g1 = load_vec<V>(r1 + v * W) * sgn;
        const V g2 = load_vec<V>(r2 + v * W) * sgn, g3 = load_vec<V>(r3 + v * W) * sgn;
        signed_sum[v] = (((signed_sum[v] + g0) + g1) + g2) + g3;
        abs_sum[v] = (((abs_sum[v] + vec_abs(g0)) + vec_abs(g1)) + vec_abs(g2)) + vec_abs(g3);
      }
    }
    for (; i0 < T; ++i0) {
      for (int64_t v = 0; v < vectors; ++v) {
        const V g = load_vec<V>(rows[i0] + v * W) * (kHasSigns ? load_vec<V>(sign + v * W) : one);
        signed_sum[v] += g;
        abs_sum[v] += vec_abs(g);
      }
    }
    for (int64_t v = 0; v < vectors; ++v) {
      const V sgn = kHasSigns ? load_vec<V>(sign + v * W) : one;
      direction[v] = graddrop_direction(graddrop_purity(signed_sum[v], abs_sum[v]), load_vec<V>(uniform + v * W), sgn);
    }
    for (int64_t i = 0; i < T; ++i) {
      const V leak_i = zero + leak[i];
      for (int64_t v = 0; v < vectors; ++v) {
        const V g = load_vec<V>(rows[i] + v * W);
        acc[v] += graddrop_keep_factor(g, direction[v], leak_i) * g;
      }
    }
    if (kHasSigns) {  // 0, or NaN for a NaN activation: a NaN never vanishes
      for (int64_t v = 0; v < vectors; ++v) {
        const V sgn = load_vec<V>(sign + v * W);
        acc[v] += sgn - sgn;
      }
    }
    for (int64_t t = 0; t < len; ++t) out[c0 + t] = static_cast<scalar_t>(result[t]);
  }
}

}  // namespace

at::Tensor graddrop_cpu(const at::Tensor& grads_in, const at::Tensor& leak, const std::optional<at::Tensor>& signs,
                        const at::Tensor& seed, int64_t column_offset) {
  check_graddrop_inputs(grads_in, leak, signs, seed, column_offset);
  const at::Tensor grads = rows_contiguous(grads_in);
  const int64_t T = grads.size(0), P = grads.size(1);
  const at::Tensor sign_source = signs.has_value() ? signs->contiguous() : at::Tensor();
  const at::Tensor seed_words = seed.contiguous();
  const PhiloxSeed philox = philox_seed_from_words(seed_words.const_data_ptr<int64_t>()[0],
                                                   seed_words.const_data_ptr<int64_t>()[1]);
  at::Tensor out = at::empty({P}, grads.options().memory_format(at::MemoryFormat::Contiguous));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grads.scalar_type(), "fastmtl_graddrop_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const at::Tensor leak_acc = leak.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const acc_t* lp = leak_acc.const_data_ptr<acc_t>();
    TORCH_CHECK(graddrop_leak_poison(lp, T) == acc_t(0), "fastmtl: leak values must lie in [0, 1]");
    const scalar_t* G = grads.const_data_ptr<scalar_t>();
    const scalar_t* sp = signs.has_value() ? sign_source.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* o = out.data_ptr<scalar_t>();
    const int64_t row_stride = grads.stride(0);
    // Work items start on multiples of kChunkColumns (a fixed split: same bits on any thread
    // count); at an unaligned column offset the block straddling two items is drawn by both.
    at::parallel_for(0, chunk_count(P), 1, [&](int64_t first, int64_t last) {
      const int64_t begin = first * kChunkColumns, end = std::min(P, last * kChunkColumns);
      if (sp) {
        run_best_isa([&](auto isa) FASTMTL_KERNEL_BODY {
          graddrop_range<decltype(isa)::kVectorBytes, scalar_t, true>(G, T, row_stride, sp, lp, philox, column_offset,
                                                                      begin, end, o);
        });
      } else {
        run_best_isa([&](auto isa) FASTMTL_KERNEL_BODY {
          graddrop_range<decltype(isa)::kVectorBytes, scalar_t, false>(G, T, row_stride, sp, lp, philox, column_offset,
                                                                       begin, end, o);
        });
      }
    });
  });
  return out;
}

}  // namespace fastmtl::cpu
