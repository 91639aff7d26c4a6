// Gram pass on the GPU: one read of G [T, P] -> K = G G^T [T, T].
// Each block walks column tiles (grid-stride): the T x kTile tile is loaded with packed
// 16-byte reads into shared memory, then the block's threads split the T(T+1)/2 pairs (and,
// for small T, slices of the tile) and accumulate dot products in registers. Per-block
// partial sums go to a workspace that a second kernel reduces in block order: the result is
// deterministic on a given device. T > kMaxTasks falls back to a cuBLAS matmul.
// gram_rescue: the float64 Gram for the weightings when the float32 one overflowed (below).
#include <torch/library.h>

#include "cuda/cuda_utils.cuh"
#include "op_checks.h"

namespace fastmtl::cuda {
namespace {

constexpr int64_t kMaxTasks = 64;
constexpr int kMaxPairs = kMaxTasks * (kMaxTasks + 1) / 2;
constexpr int kMaxAssignments = (kMaxPairs + kThreads - 1) / kThreads;

// Shared-memory tile width: 32 KiB of acc_t at T = kMaxTasks.
template <typename acc_t>
constexpr int tile_columns() {
  return 32 * 1024 / (kMaxTasks * sizeof(acc_t));
}

// Pair p of the upper triangle (row-major over i <= j) -> (i, j).
__device__ inline void pair_of(int p, int T, int& i, int& j) {
  i = 0;
  int row_length = T;
  while (p >= row_length) {
    p -= row_length;
    ++i;
    --row_length;
  }
  j = i + p;
}

template <typename scalar_t, typename acc_t, bool kPacked>
__global__ void __launch_bounds__(kThreads)
    gram_partial_kernel(const scalar_t* __restrict__ G, int T, int64_t P, int64_t row_stride,
                        acc_t* __restrict__ partials) {
  constexpr int kTile = tile_columns<acc_t>();
  // Rows padded by one element: lanes reading one column of different rows hit different banks.
  constexpr int kRow = kTile + 1;
  static_assert(kThreads * kMaxAssignments <= kMaxTasks * kRow, "the final fold reuses the tile's memory");
  __shared__ acc_t tile[kMaxTasks * kRow];
  const int pairs = T * (T + 1) / 2;
  // Small T: several threads share a pair, each summing every slices-th column of the tile.
  // Assignment q = pair * slices + slice: neighbouring lanes take neighbouring columns.
  const int slices = max(1, kThreads / pairs);
  const int assignments = pairs * slices;
  acc_t acc[kMaxAssignments];
  int pair_i[kMaxAssignments], pair_j[kMaxAssignments];
  for (int r = 0; r < kMaxAssignments; ++r) {
    acc[r] = 0;
    const int q = threadIdx.x + r * kThreads;
    if (q < assignments) pair_of(q / slices, T, pair_i[r], pair_j[r]);
  }

  for (int64_t c0 = static_cast<int64_t>(blockIdx.x) * kTile; c0 < P; c0 += static_cast<int64_t>(gridDim.x) * kTile) {
    __syncthreads();  // the previous tile is consumed
    if constexpr (kPacked) {
      constexpr int kPack = Pack<scalar_t>::kSize;
      for (int e = threadIdx.x; e < T * (kTile / kPack); e += kThreads) {
        const int row = e / (kTile / kPack), col = (e % (kTile / kPack)) * kPack;
        const int64_t c = c0 + col;
        const scalar_t* src = G + row * row_stride + c;
        if (c + kPack <= P) {
          const Pack<scalar_t> pack = *reinterpret_cast<const Pack<scalar_t>*>(src);
#pragma unroll
          for (int t = 0; t < kPack; ++t) tile[row * kRow + col + t] = static_cast<acc_t>(pack.v[t]);
        } else {  // scalar tail
          for (int t = 0; t < kPack; ++t) tile[row * kRow + col + t] = c + t < P ? static_cast<acc_t>(src[t]) : acc_t(0);
        }
      }
    } else {
      for (int e = threadIdx.x; e < T * kTile; e += kThreads) {
        const int row = e / kTile, col = e % kTile;
        const int64_t c = c0 + col;
        tile[row * kRow + col] = c < P ? static_cast<acc_t>(G[row * row_stride + c]) : acc_t(0);
      }
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < kMaxAssignments; ++r) {
      const int q = threadIdx.x + r * kThreads;
      if (q >= assignments) break;
      const acc_t* xi = tile + pair_i[r] * kRow;
      const acc_t* xj = tile + pair_j[r] * kRow;
      acc_t sum = 0;
      for (int col = q % slices; col < kTile; col += slices) sum += xi[col] * xj[col];
      acc[r] += sum;
    }
  }

  // Fold the slices of each pair, then write this block's partial sums.
  acc_t* reduce = tile;
  __syncthreads();  // every thread is done with the last tile
  for (int r = 0; r < kMaxAssignments; ++r) reduce[threadIdx.x + r * kThreads] = acc[r];
  __syncthreads();
  for (int p = threadIdx.x; p < pairs; p += kThreads) {
    acc_t total = 0;
    for (int s = 0; s < slices; ++s) total += reduce[p * slices + s];
    partials[static_cast<int64_t>(blockIdx.x) * pairs + p] = total;
  }
}

// K[i, j] = K[j, i] = sum over blocks (in block order) of the partials of pair (i, j).
template <typename acc_t>
__global__ void gram_finalize_kernel(const acc_t* __restrict__ partials, int blocks, int T, acc_t* __restrict__ K) {
  const int pairs = T * (T + 1) / 2;
  for (int p = blockIdx.x * blockDim.x + threadIdx.x; p < pairs; p += gridDim.x * blockDim.x) {
    double total = 0;  // hundreds of block partials: add them in double
    for (int b = 0; b < blocks; ++b) total += static_cast<double>(partials[static_cast<int64_t>(b) * pairs + p]);
    int i, j;
    pair_of(p, T, i, j);
    K[i * T + j] = static_cast<acc_t>(total);
    K[j * T + i] = static_cast<acc_t>(total);
  }
}

at::Tensor gram_cuda(const at::Tensor& grads_in) {
  check_task_matrix(grads_in);
  check_cuda(grads_in, "grads");
  const at::cuda::OptionalCUDAGuard guard(grads_in.device());
  const at::Tensor grads = rows_contiguous(grads_in);
  const int64_t T = grads.size(0), P = grads.size(1);
  const auto acc_dtype = grads.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  if (T > kMaxTasks) {  // beyond the shared-memory tile: cuBLAS, still on the device
    const at::Tensor X = grads.to(acc_dtype);
    const at::Tensor K = at::mm(X, X.t());
    return at::triu(K) + at::triu(K, 1).t();
  }
  at::Tensor K = at::empty({T, T}, grads.options().dtype(acc_dtype));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const bool packed = rows_pack_aligned(grads);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grads.scalar_type(), "fastmtl_gram_cuda", [&] {
    using acc_t = acc_type<scalar_t>;
    const int64_t tiles = (P + tile_columns<acc_t>() - 1) / tile_columns<acc_t>();
    const int blocks = static_cast<int>(blocks_for(tiles, 1));
    const int pairs = static_cast<int>(T * (T + 1) / 2);
    at::Tensor partials = at::empty({blocks, pairs}, grads.options().dtype(acc_dtype));
    const auto launch = [&](auto packed_tag) {
      gram_partial_kernel<scalar_t, acc_t, decltype(packed_tag)::value><<<blocks, kThreads, 0, stream>>>(
          grads.const_data_ptr<scalar_t>(), static_cast<int>(T), P, grads.stride(0), partials.data_ptr<acc_t>());
    };
    if (packed) {
      launch(std::true_type{});
    } else {
      launch(std::false_type{});
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    gram_finalize_kernel<acc_t><<<1, kThreads, 0, stream>>>(partials.const_data_ptr<acc_t>(), blocks,
                                                            static_cast<int>(T), K.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return K;
}

// gram_rescue's pass. out already holds K in float64; `finite` (on the device: no host sync)
// says whether K is entirely finite, and then every block exits at once. Otherwise K overflowed
// (or G holds NaN/Inf) and out becomes G G^T in float64: one block per pair i <= j, a float64
// dot product tree-reduced in shared memory in a fixed order, mirrored so out is exactly
// symmetric. The rare path, written for clarity rather than speed.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    gram_rescue_kernel(const scalar_t* __restrict__ G, int64_t T, int64_t P, int64_t row_stride,
                       const bool* __restrict__ finite, double* __restrict__ out) {
  if (*finite) return;
  __shared__ double partial[kThreads];
  for (int64_t p = blockIdx.x; p < T * T; p += gridDim.x) {
    const int64_t i = p / T, j = p % T;
    if (j < i) continue;  // uniform across the block: every thread skips the pair together
    const scalar_t* xi = G + i * row_stride;
    const scalar_t* xj = G + j * row_stride;
    double sum = 0;
    for (int64_t c = threadIdx.x; c < P; c += blockDim.x) {
      sum += static_cast<double>(xi[c]) * static_cast<double>(xj[c]);
    }
    partial[threadIdx.x] = sum;
    __syncthreads();
    for (int half = kThreads / 2; half > 0; half /= 2) {
      if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
      __syncthreads();
    }
    if (threadIdx.x == 0) out[i * T + j] = out[j * T + i] = partial[0];
    __syncthreads();  // partial is reused by the block's next pair
  }
}

at::Tensor gram_rescue_cuda(const at::Tensor& grads_in, const at::Tensor& gram) {
  check_gram_rescue_inputs(grads_in, gram);
  check_cuda(grads_in, "grads");
  const at::cuda::OptionalCUDAGuard guard(grads_in.device());
  const at::Tensor grads = rows_contiguous(grads_in);
  const int64_t T = grads.size(0), P = grads.size(1);
  at::Tensor out = at::empty({T, T}, gram.options().dtype(at::kDouble));
  out.copy_(gram);
  const at::Tensor finite = at::isfinite(gram).all();  // a device scalar, read by the kernel
  const int blocks = static_cast<int>(blocks_for(T * T, 1));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grads.scalar_type(), "fastmtl_gram_rescue_cuda", [&] {
    gram_rescue_kernel<scalar_t><<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        grads.const_data_ptr<scalar_t>(), T, P, grads.stride(0), finite.const_data_ptr<bool>(), out.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace
}  // namespace fastmtl::cuda

TORCH_LIBRARY_IMPL(fastmtl, CUDA, m) {
  m.impl("gram", &fastmtl::cuda::gram_cuda);
  m.impl("gram_rescue", &fastmtl::cuda::gram_rescue_cuda);
}
