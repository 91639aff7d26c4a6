// MGDA's Frank-Wolfe solve on the CPU (csrc/include/fastmtl/mgda_math.h).
#include <torch/library.h>

#include "cpu/small_solve_cpu.h"
#include "fastmtl/mgda_math.h"
#include "mgda_checks.h"

namespace fastmtl::cpu {
namespace {

at::Tensor mgda_weights_cpu(const at::Tensor& gram, int64_t max_iters, double epsilon) {
  check_mgda_inputs(gram, max_iters, epsilon);
  return run_small_solve_cpu(gram, 1, MgdaSolver{max_iters, epsilon});
}

}  // namespace
}  // namespace fastmtl::cpu

TORCH_LIBRARY_IMPL(fastmtl, CPU, m) { m.impl("mgda_weights", &fastmtl::cpu::mgda_weights_cpu); }
