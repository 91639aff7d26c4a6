// Aligned-MTL's eigen-decomposition solve on the CPU (csrc/include/fastmtl/aligned_mtl_math.h).
#include <torch/library.h>

#include <string>

#include "cpu/small_solve_cpu.h"
#include "eigen_checks.h"
#include "fastmtl/aligned_mtl_math.h"

namespace fastmtl::cpu {
namespace {

at::Tensor aligned_mtl_weights_cpu(const at::Tensor& gram, c10::string_view scale_mode) {
  const AlignedScale scale = check_aligned_mtl_inputs(gram, std::string(scale_mode));
  return run_small_solve_cpu(gram, 1, AlignedMtlSolver{scale});
}

}  // namespace
}  // namespace fastmtl::cpu

TORCH_LIBRARY_IMPL(fastmtl, CPU, m) { m.impl("aligned_mtl_weights", &fastmtl::cpu::aligned_mtl_weights_cpu); }
