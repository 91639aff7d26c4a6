#pragma once
// Runs a T x T solver (csrc/include/fastmtl/*_math.h) on the GPU in one launch of one block, with
// no host round-trip: the CUDA twin of csrc/cpu/small_solve_cpu.h (which documents the solver
// interface). K is copied to shared memory in float64 when T <= kSharedTasks (32 KiB); beyond,
// the same code reads it from global memory (slower, still one launch, no size limit). Thread j
// runs jobs j, j + blockDim, ... one after another in its own slice of a global float64 workspace
// (cached): blockDim slices at most, not one per job (UPGrad has T jobs of O(T^2) scratch each).
// A non-finite K makes every output NaN, as on the CPU.
#include <ATen/ATen.h>

#include <cstdint>

#include "cuda/cuda_utils.cuh"
#include "fastmtl/dense_math.h"
#include "fastmtl/surgery_math.h"

namespace fastmtl::cuda {

constexpr int64_t kSharedTasks = 64;

template <typename Solver>
__global__ void __launch_bounds__(kThreads)
    small_solve_kernel(const double* __restrict__ K_global, int64_t T, int64_t jobs, int64_t per_job,
                       double* __restrict__ scratch, double* __restrict__ out, Solver solver) {
  extern __shared__ double K_shared[];
  const bool shared = T <= kSharedTasks;
  bool finite = true;
  for (int64_t e = threadIdx.x; e < T * T; e += blockDim.x) {
    const double value = K_global[e];
    finite = finite && is_finite_value(value);
    if (shared) K_shared[e] = value;
  }
  finite = __syncthreads_and(finite);
  const double* K = shared ? K_shared : K_global;
  if (!finite) {
    for (int64_t e = threadIdx.x; e < solver.out_size(T); e += blockDim.x) out[e] = NAN;
    return;
  }
  double* mine = scratch + threadIdx.x * per_job;
  for (int64_t job = threadIdx.x; job < jobs; job += blockDim.x) solver(K, T, job, mine, out);
}

template <typename Solver>
at::Tensor run_small_solve_cuda(const at::Tensor& gram, int64_t jobs, const Solver& solver) {
  check_cuda(gram, "gram");
  const at::cuda::OptionalCUDAGuard guard(gram.device());
  const int64_t T = gram.size(0);
  const at::Tensor K = gram.to(at::kDouble).contiguous();
  const int64_t per_job = solver.scratch_size(T);
  const int threads = static_cast<int>(std::min<int64_t>(kThreads, ((jobs + 31) / 32) * 32));
  at::Tensor scratch = at::empty({std::max<int64_t>(1, std::min<int64_t>(jobs, threads) * per_job)}, K.options());
  at::Tensor out = at::empty({solver.out_size(T)}, K.options());
  const size_t shared_bytes = T <= kSharedTasks ? static_cast<size_t>(T * T) * sizeof(double) : 0;
  small_solve_kernel<Solver><<<1, threads, shared_bytes, at::cuda::getCurrentCUDAStream()>>>(
      K.const_data_ptr<double>(), T, jobs, per_job, scratch.data_ptr<double>(), out.data_ptr<double>(), solver);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace fastmtl::cuda
