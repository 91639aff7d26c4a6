// UPGrad / DualProj's dual-cone QP on the CPU, one job per row of U
// (csrc/include/fastmtl/dual_cone_math.h).
#include <torch/library.h>

#include "cpu/small_solve_cpu.h"
#include "dual_cone_checks.h"
#include "fastmtl/dual_cone_math.h"

namespace fastmtl::cpu {
namespace {

at::Tensor dual_cone_weights_cpu(const at::Tensor& gram, const at::Tensor& U, double norm_eps, double reg_eps) {
  check_dual_cone_inputs(gram, U, norm_eps, reg_eps);
  const at::Tensor rows = U.contiguous();
  const int64_t m = rows.size(0), T = gram.size(0);
  if (m == 0) return at::empty({0, T}, rows.options());
  return run_small_solve_cpu(gram, m, DualConeSolver{rows.const_data_ptr<double>(), norm_eps, reg_eps, m})
      .view({m, T});
}

}  // namespace
}  // namespace fastmtl::cpu

TORCH_LIBRARY_IMPL(fastmtl, CPU, m) { m.impl("dual_cone_weights", &fastmtl::cpu::dual_cone_weights_cpu); }
