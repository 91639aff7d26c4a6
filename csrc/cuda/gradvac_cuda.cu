// GradVac's pair updates on the GPU (csrc/include/fastmtl/gradvac_math.h): one launch of one
// block, thread i running task i; then the weights, the sum of the coefficient rows, by one torch
// reduction over the [T, T] block (a second tiny launch, deterministic: no atomics). Summing
// inside the solve kernel would need every task done first, a block barrier that the shared
// one-block runner (cuda/small_solve_cuda.cuh) does not give its solvers.
#include <torch/library.h>

#include <tuple>

#include "cuda/small_solve_cuda.cuh"
#include "fastmtl/gradvac_math.h"
#include "gradvac_checks.h"

namespace fastmtl::cuda {
namespace {

std::tuple<at::Tensor, at::Tensor> gradvac_weights_cuda(const at::Tensor& gram, const at::Tensor& targets,
                                                        const std::optional<at::Tensor>& order, double beta,
                                                        double eps) {
  check_gradvac_inputs(gram, targets, order, beta, eps);
  check_cuda(gram, "gram");
  const at::cuda::OptionalCUDAGuard guard(gram.device());
  const int64_t T = gram.size(0);
  const at::Tensor targets_rows = targets.to(at::kDouble).contiguous();
  const at::Tensor order_rows = order.has_value() ? order->contiguous() : at::Tensor();
  const GradVacSolver solver{targets_rows.const_data_ptr<double>(),
                             order.has_value() ? order_rows.const_data_ptr<int64_t>() : nullptr, beta, eps};
  const at::Tensor out = run_small_solve_cuda(gram, T, solver);  // [targets T x T | coefficients T x T]
  return {out.narrow(0, T * T, T * T).view({T, T}).sum(0), out.narrow(0, 0, T * T).view({T, T})};
}

}  // namespace
}  // namespace fastmtl::cuda

TORCH_LIBRARY_IMPL(fastmtl, CUDA, m) { m.impl("gradvac_weights", &fastmtl::cuda::gradvac_weights_cuda); }
