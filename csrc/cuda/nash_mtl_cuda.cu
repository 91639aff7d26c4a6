// Nash-MTL's damped Newton solve on the GPU: one launch, one thread
// (csrc/include/fastmtl/nash_mtl_math.h).
#include <torch/library.h>

#include "cuda/small_solve_cuda.cuh"
#include "fastmtl/nash_mtl_math.h"
#include "nash_mtl_checks.h"

namespace fastmtl::cuda {
namespace {

at::Tensor nash_mtl_weights_cuda(const at::Tensor& gram, double max_norm, int64_t iterations) {
  check_nash_mtl_inputs(gram, max_norm, iterations);
  return run_small_solve_cuda(gram, 1, NashMtlSolver{max_norm, iterations});
}

}  // namespace
}  // namespace fastmtl::cuda

TORCH_LIBRARY_IMPL(fastmtl, CUDA, m) { m.impl("nash_mtl_weights", &fastmtl::cuda::nash_mtl_weights_cuda); }
