// PCD's active-set QP and FairGrad's damped Newton solve on the GPU: one launch, one thread, no
// host synchronisation (csrc/include/fastmtl/pcd_math.h, fairgrad_math.h). PCD's scales and taus
// are read from global memory through the solver's pointers.
#include <torch/library.h>

#include "cuda/small_solve_cuda.cuh"
#include "fastmtl/fairgrad_math.h"
#include "fastmtl/pcd_math.h"
#include "pcd_fairgrad_checks.h"

namespace fastmtl::cuda {
namespace {

at::Tensor pcd_weights_cuda(const at::Tensor& gram, const at::Tensor& scales, const at::Tensor& taus, double tol,
                            double dependence_tol, double precision) {
  check_pcd_inputs(gram, scales, taus, tol, dependence_tol, precision);
  check_cuda(gram, "gram");
  const at::cuda::OptionalCUDAGuard guard(gram.device());
  const at::Tensor scales64 = scales.to(at::kDouble).contiguous();
  const at::Tensor taus64 = taus.to(at::kDouble).contiguous();
  return run_small_solve_cuda(gram, 1,
                              PcdSolver{scales64.const_data_ptr<double>(), taus64.const_data_ptr<double>(), tol,
                                        dependence_tol, precision});
}

at::Tensor fairgrad_weights_cuda(const at::Tensor& gram, double alpha, int64_t max_iters) {
  check_fairgrad_inputs(gram, alpha, max_iters);
  return run_small_solve_cuda(gram, 1, FairGradSolver{alpha, max_iters});
}

}  // namespace
}  // namespace fastmtl::cuda

TORCH_LIBRARY_IMPL(fastmtl, CUDA, m) {
  m.impl("pcd_weights", &fastmtl::cuda::pcd_weights_cuda);
  m.impl("fairgrad_weights", &fastmtl::cuda::fairgrad_weights_cuda);
}
