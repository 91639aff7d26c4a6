// MGDA's Frank-Wolfe solve on the GPU: one launch, one thread (csrc/include/fastmtl/mgda_math.h).
#include <torch/library.h>

#include "cuda/small_solve_cuda.cuh"
#include "fastmtl/mgda_math.h"
#include "mgda_checks.h"

namespace fastmtl::cuda {
namespace {

at::Tensor mgda_weights_cuda(const at::Tensor& gram, int64_t max_iters, double epsilon) {
  check_mgda_inputs(gram, max_iters, epsilon);
  return run_small_solve_cuda(gram, 1, MgdaSolver{max_iters, epsilon});
}

}  // namespace
}  // namespace fastmtl::cuda

TORCH_LIBRARY_IMPL(fastmtl, CUDA, m) { m.impl("mgda_weights", &fastmtl::cuda::mgda_weights_cuda); }
