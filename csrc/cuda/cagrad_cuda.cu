// CAGrad's exact solve on the GPU: one launch, one thread, with the CPU path's early exits (the
// kernel branches on its own data; no host round-trip). The maths: csrc/include/fastmtl/cagrad_math.h.
#include <torch/library.h>

#include "cagrad_checks.h"
#include "cuda/small_solve_cuda.cuh"
#include "fastmtl/cagrad_math.h"

namespace fastmtl::cuda {
namespace {

at::Tensor cagrad_weights_cuda(const at::Tensor& gram, double c, int64_t rescale, double norm_eps, int64_t max_iters,
                               double tol) {
  check_cagrad_inputs(gram, c, rescale, norm_eps, max_iters, tol);
  return run_small_solve_cuda(gram, 1, CagradSolver{c, rescale, norm_eps, max_iters, tol});
}

}  // namespace
}  // namespace fastmtl::cuda

TORCH_LIBRARY_IMPL(fastmtl, CUDA, m) { m.impl("cagrad_weights", &fastmtl::cuda::cagrad_weights_cuda); }
