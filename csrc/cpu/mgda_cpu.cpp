// MGDA's Frank-Wolfe solve on the CPU (csrc/include/fastmtl/mgda_math.h).
#include <torch/library.h>

#include "cpu/small_solve_cpu.h"
#include "fastmtl/mgda_math.h"

namespace fastmtl::cpu {
namespace {

at::Tensor mgda_weights_cpu(const at::Tensor& gram, int64_t max_iters, double epsilon) {
  check_gram_matrix(gram);
  TORCH_CHECK(max_iters > 0 && epsilon > 0, "fastmtl: mgda needs max_iters > 0 and epsilon > 0, got ", max_iters,
              " and ", epsilon);
  return run_small_solve_cpu(gram, 1, MgdaSolver{max_iters, epsilon});
}

}  // namespace
}  // namespace fastmtl::cpu

TORCH_LIBRARY_IMPL(fastmtl, CPU, m) { m.impl("mgda_weights", &fastmtl::cpu::mgda_weights_cpu); }
