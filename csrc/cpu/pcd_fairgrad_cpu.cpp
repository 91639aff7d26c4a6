// PCD's active-set QP and FairGrad's damped Newton solve on the CPU
// (csrc/include/fastmtl/pcd_math.h, fairgrad_math.h).
#include <torch/library.h>

#include "cpu/small_solve_cpu.h"
#include "fastmtl/fairgrad_math.h"
#include "fastmtl/pcd_math.h"
#include "pcd_fairgrad_checks.h"

namespace fastmtl::cpu {
namespace {

at::Tensor pcd_weights_cpu(const at::Tensor& gram, const at::Tensor& scales, const at::Tensor& taus, double tol,
                           double dependence_tol, double precision) {
  check_pcd_inputs(gram, scales, taus, tol, dependence_tol, precision);
  const at::Tensor scales64 = scales.to(at::kDouble).contiguous();
  const at::Tensor taus64 = taus.to(at::kDouble).contiguous();
  return run_small_solve_cpu(gram, 1,
                             PcdSolver{scales64.const_data_ptr<double>(), taus64.const_data_ptr<double>(), tol,
                                       dependence_tol, precision});
}

at::Tensor fairgrad_weights_cpu(const at::Tensor& gram, double alpha, int64_t max_iters) {
  check_fairgrad_inputs(gram, alpha, max_iters);
  return run_small_solve_cpu(gram, 1, FairGradSolver{alpha, max_iters});
}

}  // namespace
}  // namespace fastmtl::cpu

TORCH_LIBRARY_IMPL(fastmtl, CPU, m) {
  m.impl("pcd_weights", &fastmtl::cpu::pcd_weights_cpu);
  m.impl("fairgrad_weights", &fastmtl::cpu::fairgrad_weights_cpu);
}
