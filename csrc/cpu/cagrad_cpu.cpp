// CAGrad's exact solve on the CPU (csrc/include/fastmtl/cagrad_math.h): root search over ρ with
// Wolfe's minimum-norm-point projections.
#include <torch/library.h>

#include "cagrad_checks.h"
#include "cpu/small_solve_cpu.h"
#include "fastmtl/cagrad_math.h"

namespace fastmtl::cpu {
namespace {

at::Tensor cagrad_weights_cpu(const at::Tensor& gram, double c, int64_t rescale, double norm_eps, int64_t max_iters,
                              double tol) {
  check_cagrad_inputs(gram, c, rescale, norm_eps, max_iters, tol);
  return run_small_solve_cpu(gram, 1, CagradSolver{c, rescale, norm_eps, max_iters, tol});
}

}  // namespace
}  // namespace fastmtl::cpu

TORCH_LIBRARY_IMPL(fastmtl, CPU, m) { m.impl("cagrad_weights", &fastmtl::cpu::cagrad_weights_cpu); }
