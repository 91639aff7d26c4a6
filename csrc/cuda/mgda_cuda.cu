// MGDA's Frank-Wolfe solve on the GPU: one launch, one thread (csrc/include/fastmtl/mgda_math.h).
#include <torch/library.h>

#include "cuda/small_solve_cuda.cuh"
#include "fastmtl/mgda_math.h"
#include "op_checks.h"

namespace fastmtl::cuda {
namespace {

at::Tensor mgda_weights_cuda(const at::Tensor& gram, int64_t max_iters, double epsilon) {
  check_gram_matrix(gram);
  TORCH_CHECK(max_iters > 0 && epsilon > 0, "fastmtl: mgda needs max_iters > 0 and epsilon > 0, got ", max_iters,
              " and ", epsilon);
  return run_small_solve_cuda(gram, 1, MgdaSolver{max_iters, epsilon});
}

}  // namespace
}  // namespace fastmtl::cuda

TORCH_LIBRARY_IMPL(fastmtl, CUDA, m) { m.impl("mgda_weights", &fastmtl::cuda::mgda_weights_cuda); }
