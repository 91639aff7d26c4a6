// GradDrop (Chen et al. 2020) in one pass: per 256-column tile, sum the (sign-corrected) task
// gradients and their magnitudes, form the purity P, draw U from Philox (block = tile, so every
// path draws the same numbers), then add each task's gradient scaled by its keep factor.
// The tile's rows sit converted in an L1 buffer, so G is read from memory once. The maths is
// surgery_math.h's graddrop_purity / graddrop_keep_factor written on 32-byte vectors.
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

#include "cpu/cpu_common.h"
#include "cpu/cpu_ops.h"
#include "cpu/philox_cpu.h"
#include "fastmtl/surgery_math.h"

namespace fastmtl::cpu {
namespace {

// One tile is one Philox block: 256 columns, T rows converted to acc_t in an L1 buffer.
constexpr int64_t kTile = kPhiloxBlockElements;
static_assert(kChunkColumns % kTile == 0, "work items must start on Philox block boundaries");

template <typename scalar_t, bool kHasSigns>
FASTMTL_ALWAYS_INLINE void graddrop_range(const scalar_t* G, int64_t T, int64_t row_stride, const scalar_t* signs,
                                          const acc_type<scalar_t>* leak, const PhiloxSeed& seed, int64_t begin,
                                          int64_t end, scalar_t* out) {
  using acc_t = acc_type<scalar_t>;
  using V = vec32<acc_t>;
  constexpr int W = kVecLanes<acc_t>;
  std::vector<acc_t> rows(T * kTile);
  alignas(32) acc_t sign[kTile], uniform[kTile], result[kTile];
  alignas(32) float uniform_bits[kTile];
  const V zero = {};
  const V one = zero + acc_t(1), half = zero + acc_t(0.5);
  for (int64_t c0 = begin; c0 < end; c0 += kTile) {
    const int64_t len = std::min(kTile, end - c0);
    for (int64_t i = 0; i < T; ++i) {  // padding columns are zero: they contribute nothing
      const scalar_t* src = G + i * row_stride + c0;
      acc_t* dst = rows.data() + i * kTile;
      for (int64_t t = 0; t < len; ++t) dst[t] = to_acc<acc_t>(src[t]);
      for (int64_t t = len; t < kTile; ++t) dst[t] = 0;
    }
    for (int64_t t = 0; t < kTile; ++t) {
      sign[t] = (kHasSigns && t < len) ? sign_of(to_acc<acc_t>(signs[c0 + t])) : acc_t(1);
    }
    philox_uniform_block_cpu(seed, static_cast<uint64_t>(c0 / kTile), uniform_bits);
    for (int64_t t = 0; t < kTile; ++t) uniform[t] = uniform_bits[t];

    for (int64_t v = 0; v < kTile; v += W) {
      const V sgn = load_vec(sign + v), u = load_vec(uniform + v);
      V signed_sum = zero, abs_sum = zero;
      for (int64_t i = 0; i < T; ++i) {  // same order as reference.graddrop: bitwise-equal purity
        const V g = load_vec(rows.data() + i * kTile + v) * sgn;
        signed_sum += g;
        abs_sum += g < zero ? -g : g;
      }
      // graddrop_purity, lane-wise.
      const V safe_abs = abs_sum > zero ? abs_sum : one;
      const V purity = abs_sum > zero ? half * (one + signed_sum / safe_abs) : half;
      V acc = zero;
      for (int64_t i = 0; i < T; ++i) {
        const V g = load_vec(rows.data() + i * kTile + v);
        const V gs = g * sgn;
        // graddrop_keep_factor, lane-wise: 1 where kept, leak where dropped.
        const auto keep = ((purity > u) & (gs > zero)) | ((purity < u) & (gs < zero));
        acc += (keep ? one : zero + leak[i]) * g;
      }
      if (kHasSigns) acc += sgn - sgn;  // 0, or NaN for a NaN activation: a NaN never vanishes
      std::memcpy(result + v, &acc, sizeof(acc));
    }
    for (int64_t t = 0; t < len; ++t) out[c0 + t] = static_cast<scalar_t>(result[t]);
  }
}

}  // namespace

at::Tensor graddrop_cpu(const at::Tensor& grads_in, const at::Tensor& leak, const std::optional<at::Tensor>& signs,
                        const at::Tensor& seed) {
  check_task_matrix(grads_in, "grads");
  const at::Tensor grads = rows_contiguous(grads_in);
  const int64_t T = grads.size(0), P = grads.size(1);
  TORCH_CHECK(leak.dim() == 1 && leak.size(0) == T, "fastmtl: leak must be [T] = [", T, "], got ", leak.sizes());
  TORCH_CHECK(leak.device() == grads.device(), "fastmtl: leak and grads must be on the same device");
  TORCH_CHECK(seed.dim() == 1 && seed.size(0) == 2 && seed.scalar_type() == at::kLong,
              "fastmtl: seed must be an int64 tensor of 2 elements (key, offset), got ", seed.scalar_type(), " ",
              seed.sizes());
  TORCH_CHECK(seed.device() == grads.device(), "fastmtl: seed and grads must be on the same device");
  at::Tensor sign_source;
  if (signs.has_value()) {
    TORCH_CHECK(signs->dim() == 1 && signs->size(0) == P, "fastmtl: signs must be [P] = [", P, "], got ",
                signs->sizes());
    TORCH_CHECK(signs->scalar_type() == grads.scalar_type(), "fastmtl: signs dtype ", signs->scalar_type(),
                " differs from grads dtype ", grads.scalar_type());
    TORCH_CHECK(signs->device() == grads.device(), "fastmtl: signs and grads must be on the same device");
    sign_source = signs->contiguous();
  }
  const at::Tensor seed_words = seed.contiguous();
  const PhiloxSeed philox = philox_seed_from_words(seed_words.const_data_ptr<int64_t>()[0],
                                                   seed_words.const_data_ptr<int64_t>()[1]);
  at::Tensor out = at::empty({P}, grads.options().memory_format(at::MemoryFormat::Contiguous));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grads.scalar_type(), "fastmtl_graddrop_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const at::Tensor leak_acc = leak.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const acc_t* lp = leak_acc.const_data_ptr<acc_t>();
    const scalar_t* G = grads.const_data_ptr<scalar_t>();
    const scalar_t* sp = signs.has_value() ? sign_source.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* o = out.data_ptr<scalar_t>();
    const int64_t row_stride = grads.stride(0);
    // Work items start on multiples of kChunkColumns: Philox blocks never split.
    at::parallel_for(0, chunk_count(P), 1, [&](int64_t first, int64_t last) {
      const int64_t begin = first * kChunkColumns, end = std::min(P, last * kChunkColumns);
      if (sp) {
        run_best_isa([&]() FASTMTL_KERNEL_BODY {
          graddrop_range<scalar_t, true>(G, T, row_stride, sp, lp, philox, begin, end, o);
        });
      } else {
        run_best_isa([&]() FASTMTL_KERNEL_BODY {
          graddrop_range<scalar_t, false>(G, T, row_stride, sp, lp, philox, begin, end, o);
        });
      }
    });
  });
  return out;
}

}  // namespace fastmtl::cpu
