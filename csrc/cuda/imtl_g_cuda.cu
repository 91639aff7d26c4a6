// IMTL-G's pseudo-inverse solve on the GPU: one launch, one thread, no host synchronisation
// (torch.linalg.pinv checks LAPACK's info on the host) (csrc/include/fastmtl/imtl_g_math.h).
#include <torch/library.h>

#include "cuda/small_solve_cuda.cuh"
#include "fastmtl/imtl_g_math.h"
#include "op_checks.h"

namespace fastmtl::cuda {
namespace {

at::Tensor imtl_g_weights_cuda(const at::Tensor& gram) {
  check_gram_matrix(gram);
  return run_small_solve_cuda(gram, 1, ImtlGSolver{});
}

}  // namespace
}  // namespace fastmtl::cuda

TORCH_LIBRARY_IMPL(fastmtl, CUDA, m) { m.impl("imtl_g_weights", &fastmtl::cuda::imtl_g_weights_cuda); }
