// UPGrad / DualProj's dual-cone QP on the GPU: one launch, one block, one thread per row of U
// (csrc/include/fastmtl/dual_cone_math.h); each row branches on its own data (early exits), so
// the host never waits.
#include <torch/library.h>

#include "cuda/small_solve_cuda.cuh"
#include "dual_cone_checks.h"
#include "fastmtl/dual_cone_math.h"

namespace fastmtl::cuda {
namespace {

at::Tensor dual_cone_weights_cuda(const at::Tensor& gram, const at::Tensor& U, double norm_eps, double reg_eps) {
  check_dual_cone_inputs(gram, U, norm_eps, reg_eps);
  const at::Tensor rows = U.contiguous();
  const int64_t m = rows.size(0), T = gram.size(0);
  if (m == 0) return at::empty({0, T}, rows.options());  // no launch: a block needs a thread
  return run_small_solve_cuda(gram, m, DualConeSolver{rows.const_data_ptr<double>(), norm_eps, reg_eps, m})
      .view({m, T});
}

}  // namespace
}  // namespace fastmtl::cuda

TORCH_LIBRARY_IMPL(fastmtl, CUDA, m) { m.impl("dual_cone_weights", &fastmtl::cuda::dual_cone_weights_cuda); }
