// GradDrop (Chen et al. 2020) in one pass: per column tile, sum the (sign-corrected) task
// gradients and their magnitudes, form the purity P, draw U from Philox (element n of the
// stream, so any tiling gives the same numbers), then add each task's gradient scaled by its
// keep factor. The second walk over the tile's rows hits L1, so G is read from memory once.
#include <ATen/Parallel.h>

#include "cpu/cpu_common.h"
#include "cpu/cpu_ops.h"
#include "fastmtl/philox.h"
#include "fastmtl/surgery_math.h"

namespace fastmtl::cpu {
namespace {

static_assert(kTileColumns % 4 == 0 && kChunkColumns % 4 == 0, "Philox draws four uniforms per counter");

template <typename scalar_t, bool kHasSigns>
FASTMTL_ALWAYS_INLINE void graddrop_range(const scalar_t* G, int64_t T, int64_t row_stride, const scalar_t* signs,
                                          const acc_type<scalar_t>* leak, const PhiloxSeed& seed, int64_t begin,
                                          int64_t end, scalar_t* out) {
  using acc_t = acc_type<scalar_t>;
  acc_t sign[kTileColumns], signed_sum[kTileColumns], abs_sum[kTileColumns], purity[kTileColumns];
  acc_t acc[kTileColumns];
  float uniform[kTileColumns];
  for (int64_t c0 = begin; c0 < end; c0 += kTileColumns) {
    const int64_t len = std::min(kTileColumns, end - c0);
    for (int64_t t = 0; t < len; ++t) {
      sign[t] = kHasSigns ? sign_of(to_acc<acc_t>(signs[c0 + t])) : acc_t(1);
      signed_sum[t] = 0;
      abs_sum[t] = 0;
      acc[t] = 0;
    }
    for (int64_t i = 0; i < T; ++i) {
      const scalar_t* row = G + i * row_stride + c0;
      for (int64_t t = 0; t < len; ++t) {
        const acc_t g = to_acc<acc_t>(row[t]) * sign[t];
        signed_sum[t] += g;
        abs_sum[t] += g < 0 ? -g : g;
      }
    }
    for (int64_t t = 0; t < len; ++t) purity[t] = graddrop_purity(signed_sum[t], abs_sum[t]);
    // c0 is a multiple of 4, so group q of this tile is group (c0 / 4 + q) of the stream.
    for (int64_t q = 0; q * 4 < len; ++q) philox_uniform4(seed, static_cast<uint64_t>(c0 / 4 + q), uniform + 4 * q);
    for (int64_t i = 0; i < T; ++i) {
      const scalar_t* row = G + i * row_stride + c0;
      const acc_t leak_i = leak[i];
      for (int64_t t = 0; t < len; ++t) {
        const acc_t g = to_acc<acc_t>(row[t]);
        acc[t] += graddrop_keep_factor(purity[t], static_cast<acc_t>(uniform[t]), g * sign[t], leak_i) * g;
      }
    }
    for (int64_t t = 0; t < len; ++t) {
      // sign - sign is 0, or NaN for a NaN activation: a NaN input never vanishes.
      const acc_t poison = kHasSigns ? sign[t] - sign[t] : acc_t(0);
      out[c0 + t] = static_cast<scalar_t>(acc[t] + poison);
    }
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
    // Work items start on multiples of kChunkColumns (a multiple of 4): Philox groups never split.
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
