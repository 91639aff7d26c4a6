// MoDo's and SDMGrad's projected weight descent on the GPU: one launch, no host synchronisation
// (the torch path launches a few ops per inner step) (csrc/include/fastmtl/simplex_descent_math.h).
#include <torch/library.h>

#include "cuda/small_solve_cuda.cuh"
#include "fastmtl/simplex_descent_math.h"
#include "simplex_descent_checks.h"

namespace fastmtl::cuda {
namespace {

at::Tensor simplex_descent_weights_cuda(const at::Tensor& gram, const at::Tensor& w, const at::Tensor& target,
                                        double lr, double momentum, double rho, double lambda, int64_t n_iter,
                                        bool normalize) {
  check_simplex_descent_inputs(gram, w, target, lr, momentum, rho, lambda, n_iter);
  const at::Tensor w0 = w.to(at::kDouble).contiguous();
  const at::Tensor preference = target.to(at::kDouble).contiguous();
  const SimplexDescentSolver solver{w0.const_data_ptr<double>(), preference.const_data_ptr<double>(), lr, momentum,
                                    rho, lambda, n_iter, normalize};
  return run_small_solve_cuda(gram, 1, solver);
}

}  // namespace
}  // namespace fastmtl::cuda

TORCH_LIBRARY_IMPL(fastmtl, CUDA, m) {
  m.impl("simplex_descent_weights", &fastmtl::cuda::simplex_descent_weights_cuda);
}
