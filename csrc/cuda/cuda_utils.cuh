#pragma once
// What the CUDA kernels share: accumulation types, launch sizes, and 16-byte packed loads with
// a scalar fallback. Every kernel launches on the current stream under a device guard and
// never reads a value back to the host.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>

namespace fastmtl::cuda {

// fp32 accumulation for half/bfloat16/float32, fp64 for float64 (docs/design.md, "Accumulation
// dtypes and non-finite numbers").
template <typename scalar_t>
using acc_type = at::opmath_type<scalar_t>;

constexpr int kThreads = 256;

// Enough blocks to fill the device a few times over; grid-stride loops do the rest.
inline int64_t blocks_for(int64_t work_items, int64_t per_block = kThreads) {
  const int64_t wanted = (work_items + per_block - 1) / per_block;
  const int64_t fill = static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 8;
  return std::max<int64_t>(1, std::min(wanted, fill));
}

// Sixteen bytes of scalar_t: one vectorised load or store.
template <typename scalar_t>
struct alignas(16) Pack {
  static constexpr int kSize = 16 / sizeof(scalar_t);
  scalar_t v[kSize];
};

// Packed access is safe when every row starts on a 16-byte boundary.
inline bool rows_pack_aligned(const at::Tensor& grads) {
  const int64_t bytes = grads.element_size();
  return reinterpret_cast<uintptr_t>(grads.const_data_ptr()) % 16 == 0 && (grads.stride(0) * bytes) % 16 == 0;
}

inline void check_cuda(const at::Tensor& tensor, const char* name) {
  TORCH_CHECK(tensor.is_cuda(), "fastmtl: ", name, " must be a CUDA tensor, got ", tensor.device());
}

}  // namespace fastmtl::cuda
