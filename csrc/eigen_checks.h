#pragma once
// Argument checks of the spectral Gram-space ops (imtl_g_weights, aligned_mtl_weights), shared by
// their CPU and CUDA kernels so that a direct torch.ops.fastmtl call fails the same way on both.
#include <ATen/ATen.h>

#include <string>

#include "fastmtl/aligned_mtl_math.h"
#include "op_checks.h"

namespace fastmtl {

inline AlignedScale check_aligned_mtl_inputs(const at::Tensor& gram, const std::string& scale_mode) {
  check_gram_matrix(gram);
  if (scale_mode == "min") return AlignedScale::kMin;
  if (scale_mode == "median") return AlignedScale::kMedian;
  TORCH_CHECK(scale_mode == "rmse", "fastmtl: aligned_mtl scale_mode must be 'min', 'median' or 'rmse', got '",
              scale_mode, "'");
  return AlignedScale::kRmse;
}

}  // namespace fastmtl
