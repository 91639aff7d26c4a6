// Nash-MTL's damped Newton solve on the CPU (csrc/include/fastmtl/nash_mtl_math.h).
#include <torch/library.h>

#include "cpu/small_solve_cpu.h"
#include "fastmtl/nash_mtl_math.h"
#include "nash_mtl_checks.h"

namespace fastmtl::cpu {
namespace {

at::Tensor nash_mtl_weights_cpu(const at::Tensor& gram, double max_norm, int64_t iterations) {
  check_nash_mtl_inputs(gram, max_norm, iterations);
  return run_small_solve_cpu(gram, 1, NashMtlSolver{max_norm, iterations});
}

}  // namespace
}  // namespace fastmtl::cpu

TORCH_LIBRARY_IMPL(fastmtl, CPU, m) { m.impl("nash_mtl_weights", &fastmtl::cpu::nash_mtl_weights_cpu); }
