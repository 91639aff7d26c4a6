// GradDrop on the GPU in one pass. One thread per Philox counter: counter q = 64 b + k draws
// the uniforms of elements 256 b + 64 l + k (l = 0..3), the stream layout of philox.h, so a
// warp's 32 threads read 32 consecutive columns of each row (coalesced) and every path (CPU,
// CUDA, torch reference) draws the same numbers. The thread sums its four columns over the T
// rows, forms purity and direction, then re-reads its columns (cache hits) to add the kept
// gradients. The seed is read on the device: no host sync, CUDA-graph capturable.
// column_offset (a column shard of a larger G): local column c is stream element offset + c.
// The threads walk the counters of the blocks spanning [offset, offset + P) (philox_span) and
// shift their columns back by offset % 256; at offset 0 (or a multiple of 256) that is the
// unsharded layout exactly, otherwise the first and last blocks have some idle lanes.
#include <torch/library.h>

#include "cuda/cuda_utils.cuh"
#include "fastmtl/philox.h"
#include "fastmtl/surgery_math.h"
#include "op_checks.h"

namespace fastmtl::cuda {
namespace {

constexpr int kLanes = 4;  // elements per Philox draw

template <typename scalar_t, typename acc_t, bool kHasSigns>
__global__ void __launch_bounds__(kThreads)
    graddrop_kernel(const scalar_t* __restrict__ G, const acc_t* __restrict__ leak, const scalar_t* __restrict__ signs,
                    const int64_t* __restrict__ seed_words, int64_t T, int64_t P, int64_t row_stride,
                    PhiloxSpan span, scalar_t* __restrict__ out) {
  const PhiloxSeed seed = philox_seed_from_words(seed_words[0], seed_words[1]);
  const acc_t poison = graddrop_leak_poison(leak, T);
  const int64_t counters = span.blocks * kPhiloxBlockCounters;
  for (int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; q < counters;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    // Counter q of the span is stream counter 64 first_block + q; its lane-0 element lies
    // `first` columns into this shard (negative for the lanes before the shard's first column).
    const int64_t first = q / kPhiloxBlockCounters * kPhiloxBlockElements + q % kPhiloxBlockCounters - span.shift;
    const Philox4x32 bits = philox_draw(seed, span.first_block * kPhiloxBlockCounters + static_cast<uint64_t>(q));
    acc_t sign[kLanes], signed_sum[kLanes], abs_sum[kLanes], direction[kLanes], acc[kLanes];
    bool inside[kLanes];  // the lane's column is one of this shard's P: 0 <= c < P in one compare
#pragma unroll
    for (int l = 0; l < kLanes; ++l) {
      const int64_t c = first + l * kPhiloxBlockCounters;
      inside[l] = static_cast<uint64_t>(c) < static_cast<uint64_t>(P);
      sign[l] = (kHasSigns && inside[l]) ? sign_of(static_cast<acc_t>(signs[c])) : acc_t(1);
      signed_sum[l] = abs_sum[l] = acc[l] = 0;
    }
    for (int64_t i = 0; i < T; ++i) {  // tasks in index order, as every other path
      const scalar_t* row = G + i * row_stride;
#pragma unroll
      for (int l = 0; l < kLanes; ++l) {
        const int64_t c = first + l * kPhiloxBlockCounters;
        const acc_t g = inside[l] ? static_cast<acc_t>(row[c]) * sign[l] : acc_t(0);
        signed_sum[l] += g;
        abs_sum[l] += fabs(g);
      }
    }
#pragma unroll
    for (int l = 0; l < kLanes; ++l) {
      const acc_t uniform = static_cast<acc_t>(uniform_from_bits(bits.v[l]));
      direction[l] = graddrop_direction(graddrop_purity(signed_sum[l], abs_sum[l]), uniform, sign[l]);
    }
    for (int64_t i = 0; i < T; ++i) {
      const scalar_t* row = G + i * row_stride;
      const acc_t leak_i = leak[i];
#pragma unroll
      for (int l = 0; l < kLanes; ++l) {
        const int64_t c = first + l * kPhiloxBlockCounters;
        const acc_t g = inside[l] ? static_cast<acc_t>(row[c]) : acc_t(0);
        acc[l] += graddrop_keep_factor(g, direction[l], leak_i) * g;
      }
    }
#pragma unroll
    for (int l = 0; l < kLanes; ++l) {
      const int64_t c = first + l * kPhiloxBlockCounters;
      // sign - sign is 0, or NaN for a NaN activation: a NaN never vanishes.
      if (inside[l]) out[c] = static_cast<scalar_t>((kHasSigns ? acc[l] + (sign[l] - sign[l]) : acc[l]) + poison);
    }
  }
}

at::Tensor graddrop_cuda(const at::Tensor& grads_in, const at::Tensor& leak, const std::optional<at::Tensor>& signs,
                         const at::Tensor& seed, int64_t column_offset) {
  check_graddrop_inputs(grads_in, leak, signs, seed, column_offset);
  check_cuda(grads_in, "grads");
  const at::cuda::OptionalCUDAGuard guard(grads_in.device());
  const at::Tensor grads = rows_contiguous(grads_in);
  const int64_t T = grads.size(0), P = grads.size(1);
  const at::Tensor sign_source = signs.has_value() ? signs->contiguous() : at::Tensor();
  const at::Tensor seed_words = seed.contiguous();
  at::Tensor out = at::empty({P}, grads.options().memory_format(at::MemoryFormat::Contiguous));
  const PhiloxSpan span = philox_span(column_offset, P);
  const int64_t counters = span.blocks * kPhiloxBlockCounters;
  const int blocks = static_cast<int>(blocks_for(counters));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grads.scalar_type(), "fastmtl_graddrop_cuda", [&] {
    using acc_t = acc_type<scalar_t>;
    const at::Tensor leak_acc = leak.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const auto launch = [&](auto has_signs) {
      graddrop_kernel<scalar_t, acc_t, decltype(has_signs)::value><<<blocks, kThreads, 0, stream>>>(
          grads.const_data_ptr<scalar_t>(), leak_acc.const_data_ptr<acc_t>(),
          signs.has_value() ? sign_source.const_data_ptr<scalar_t>() : nullptr, seed_words.const_data_ptr<int64_t>(),
          T, P, grads.stride(0), span, out.data_ptr<scalar_t>());
    };
    if (signs.has_value()) {
      launch(std::true_type{});
    } else {
      launch(std::false_type{});
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace
}  // namespace fastmtl::cuda

TORCH_LIBRARY_IMPL(fastmtl, CUDA, m) { m.impl("graddrop", &fastmtl::cuda::graddrop_cuda); }
