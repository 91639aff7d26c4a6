// The T x T PCGrad solve on the GPU, with no host round-trip: one block, one thread per task
// (tasks are independent: surgery_math.h's pcgrad_project_task). Each task's coefficients a and
// dot products v live in float64 workspaces laid out [k][task], so that the threads of a warp
// touch neighbouring addresses; then one thread per column sums the coefficients into w.
#include <torch/library.h>

#include "cuda/cuda_utils.cuh"
#include "fastmtl/surgery_math.h"
#include "op_checks.h"

namespace fastmtl::cuda {
namespace {

template <typename k_t>
__global__ void __launch_bounds__(kThreads)
    pcgrad_weights_kernel(const k_t* __restrict__ K, const int64_t* __restrict__ order, int64_t T,
                          double* __restrict__ coefficients, double* __restrict__ dots, k_t* __restrict__ w) {
  bool finite = true;  // every thread checks a slice of K; any non-finite entry poisons w
  for (int64_t e = threadIdx.x; e < T * T; e += blockDim.x) finite = finite && is_finite_value(K[e]);
  finite = __syncthreads_and(finite);
  for (int64_t i = threadIdx.x; i < T; i += blockDim.x) {
    pcgrad_project_task(K, T, order ? order + i * T : static_cast<const int64_t*>(nullptr), i, coefficients + i,
                        dots + i, T);
  }
  __syncthreads();
  for (int64_t k = threadIdx.x; k < T; k += blockDim.x) {
    double total = 0;
    for (int64_t i = 0; i < T; ++i) total += coefficients[k * T + i];  // tasks in index order
    w[k] = finite ? static_cast<k_t>(total) : static_cast<k_t>(NAN);
  }
}

at::Tensor pcgrad_weights_cuda(const at::Tensor& gram, const std::optional<at::Tensor>& order) {
  check_pcgrad_inputs(gram, order);
  check_cuda(gram, "gram");
  const at::cuda::OptionalCUDAGuard guard(gram.device());
  const int64_t T = gram.size(0);
  const at::Tensor K = gram.contiguous();
  const at::Tensor order_rows = order.has_value() ? order->contiguous() : at::Tensor();
  at::Tensor coefficients = at::empty({T, T}, gram.options().dtype(at::kDouble));
  at::Tensor dots = at::empty({T, T}, gram.options().dtype(at::kDouble));
  at::Tensor w = at::empty({T}, gram.options());
  const int threads = static_cast<int>(std::min<int64_t>(kThreads, ((T + 31) / 32) * 32));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, K.scalar_type(), "fastmtl_pcgrad_weights_cuda", [&] {
    pcgrad_weights_kernel<scalar_t><<<1, threads, 0, at::cuda::getCurrentCUDAStream()>>>(
        K.const_data_ptr<scalar_t>(), order.has_value() ? order_rows.const_data_ptr<int64_t>() : nullptr, T,
        coefficients.data_ptr<double>(), dots.data_ptr<double>(), w.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return w;
}

}  // namespace
}  // namespace fastmtl::cuda

TORCH_LIBRARY_IMPL(fastmtl, CUDA, m) { m.impl("pcgrad_weights", &fastmtl::cuda::pcgrad_weights_cuda); }
