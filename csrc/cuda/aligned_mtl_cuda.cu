// Aligned-MTL's eigen-decomposition solve on the GPU: one launch, one thread, no host
// synchronisation (torch.linalg.eigh checks LAPACK's info on the host)
// (csrc/include/fastmtl/aligned_mtl_math.h).
#include <torch/library.h>

#include <string>

#include "cuda/small_solve_cuda.cuh"
#include "eigen_checks.h"
#include "fastmtl/aligned_mtl_math.h"

namespace fastmtl::cuda {
namespace {

at::Tensor aligned_mtl_weights_cuda(const at::Tensor& gram, c10::string_view scale_mode) {
  const AlignedScale scale = check_aligned_mtl_inputs(gram, std::string(scale_mode));
  return run_small_solve_cuda(gram, 1, AlignedMtlSolver{scale});
}

}  // namespace
}  // namespace fastmtl::cuda

TORCH_LIBRARY_IMPL(fastmtl, CUDA, m) { m.impl("aligned_mtl_weights", &fastmtl::cuda::aligned_mtl_weights_cuda); }
