// Combine pass on the GPU: out = w . G, one read of G and one write of out. Each thread owns a
// 16-byte pack of columns (scalar fallback for unaligned rows and the tail) and accumulates
// the T rows in acc_t; the weights sit in shared memory.
#include <torch/library.h>

#include "cuda/cuda_utils.cuh"
#include "op_checks.h"

namespace fastmtl::cuda {
namespace {

template <typename scalar_t, typename acc_t, bool kPacked>
__global__ void __launch_bounds__(kThreads)
    combine_kernel(const scalar_t* __restrict__ G, const acc_t* __restrict__ weights, int64_t T, int64_t P,
                   int64_t row_stride, scalar_t* __restrict__ out) {
  extern __shared__ unsigned char shared_bytes[];
  acc_t* w = reinterpret_cast<acc_t*>(shared_bytes);
  for (int64_t i = threadIdx.x; i < T; i += blockDim.x) w[i] = weights[i];
  __syncthreads();
  constexpr int kPack = kPacked ? Pack<scalar_t>::kSize : 1;
  const int64_t packs = (P + kPack - 1) / kPack;
  for (int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; q < packs;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = q * kPack;
    acc_t acc[kPack];
#pragma unroll
    for (int t = 0; t < kPack; ++t) acc[t] = 0;
    const bool whole = c + kPack <= P;
    for (int64_t i = 0; i < T; ++i) {
      const scalar_t* src = G + i * row_stride + c;
      if (kPacked && whole) {
        const Pack<scalar_t> pack = *reinterpret_cast<const Pack<scalar_t>*>(src);
#pragma unroll
        for (int t = 0; t < kPack; ++t) acc[t] += w[i] * static_cast<acc_t>(pack.v[t]);
      } else {
        for (int t = 0; t < kPack && c + t < P; ++t) acc[t] += w[i] * static_cast<acc_t>(src[t]);
      }
    }
    if (kPacked && whole) {
      Pack<scalar_t> pack;
#pragma unroll
      for (int t = 0; t < kPack; ++t) pack.v[t] = static_cast<scalar_t>(acc[t]);
      *reinterpret_cast<Pack<scalar_t>*>(out + c) = pack;
    } else {
      for (int t = 0; t < kPack && c + t < P; ++t) out[c + t] = static_cast<scalar_t>(acc[t]);
    }
  }
}

void combine_into_cuda(const at::Tensor& grads_in, const at::Tensor& weights, const at::Tensor& out) {
  check_task_matrix(grads_in);
  check_cuda(grads_in, "grads");
  check_weights(grads_in, weights);
  check_out(grads_in, out);
  const at::cuda::OptionalCUDAGuard guard(grads_in.device());
  if (!out.is_contiguous()) {  // write densely, then scatter once
    at::Tensor dense = at::empty({grads_in.size(1)}, grads_in.options());
    combine_into_cuda(grads_in, weights, dense);
    out.copy_(dense);
    return;
  }
  const at::Tensor grads = rows_contiguous(grads_in);
  const int64_t T = grads.size(0), P = grads.size(1);
  const bool packed = rows_pack_aligned(grads) && reinterpret_cast<uintptr_t>(out.data_ptr()) % 16 == 0;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grads.scalar_type(), "fastmtl_combine_cuda", [&] {
    using acc_t = acc_type<scalar_t>;
    const at::Tensor w = weights.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const size_t shared = T * sizeof(acc_t);
    TORCH_CHECK(shared <= 48 * 1024, "fastmtl: combine supports at most ", 48 * 1024 / sizeof(acc_t), " tasks on CUDA");
    const auto launch = [&](auto packed_tag) {
      constexpr bool kPacked = decltype(packed_tag)::value;
      constexpr int kPack = kPacked ? Pack<scalar_t>::kSize : 1;
      const int blocks = static_cast<int>(blocks_for((P + kPack - 1) / kPack));
      combine_kernel<scalar_t, acc_t, kPacked><<<blocks, kThreads, shared, stream>>>(
          grads.const_data_ptr<scalar_t>(), w.const_data_ptr<acc_t>(), T, P, grads.stride(0), out.data_ptr<scalar_t>());
    };
    if (packed) {
      launch(std::true_type{});
    } else {
      launch(std::false_type{});
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor combine_cuda(const at::Tensor& grads, const at::Tensor& weights) {
  check_task_matrix(grads);
  at::Tensor out = at::empty({grads.size(1)}, grads.options().memory_format(at::MemoryFormat::Contiguous));
  combine_into_cuda(grads, weights, out);
  return out;
}

}  // namespace
}  // namespace fastmtl::cuda

TORCH_LIBRARY_IMPL(fastmtl, CUDA, m) {
  m.impl("combine", &fastmtl::cuda::combine_cuda);
  m.impl("combine_into", &fastmtl::cuda::combine_into_cuda);
}
