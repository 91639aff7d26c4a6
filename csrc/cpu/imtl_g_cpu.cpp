// IMTL-G's pseudo-inverse solve on the CPU (csrc/include/fastmtl/imtl_g_math.h).
#include <torch/library.h>

#include "cpu/small_solve_cpu.h"
#include "fastmtl/imtl_g_math.h"

namespace fastmtl::cpu {
namespace {

at::Tensor imtl_g_weights_cpu(const at::Tensor& gram) {
  check_gram_matrix(gram);
  return run_small_solve_cpu(gram, 1, ImtlGSolver{});
}

}  // namespace
}  // namespace fastmtl::cpu

TORCH_LIBRARY_IMPL(fastmtl, CPU, m) { m.impl("imtl_g_weights", &fastmtl::cpu::imtl_g_weights_cpu); }
