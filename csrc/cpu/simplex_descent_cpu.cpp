// MoDo's and SDMGrad's projected weight descent on the CPU (csrc/include/fastmtl/simplex_descent_math.h).
#include <torch/library.h>

#include "cpu/small_solve_cpu.h"
#include "fastmtl/simplex_descent_math.h"
#include "simplex_descent_checks.h"

namespace fastmtl::cpu {
namespace {

at::Tensor simplex_descent_weights_cpu(const at::Tensor& gram, const at::Tensor& w, const at::Tensor& target,
                                       double lr, double momentum, double rho, double lambda, int64_t n_iter,
                                       bool normalize) {
  check_simplex_descent_inputs(gram, w, target, lr, momentum, rho, lambda, n_iter);
  const at::Tensor w0 = w.to(at::kDouble).contiguous();
  const at::Tensor preference = target.to(at::kDouble).contiguous();
  const SimplexDescentSolver solver{w0.const_data_ptr<double>(), preference.const_data_ptr<double>(), lr, momentum,
                                    rho, lambda, n_iter, normalize};
  return run_small_solve_cpu(gram, 1, solver);
}

}  // namespace
}  // namespace fastmtl::cpu

TORCH_LIBRARY_IMPL(fastmtl, CPU, m) { m.impl("simplex_descent_weights", &fastmtl::cpu::simplex_descent_weights_cpu); }
