#pragma once
// Argument checks of fastmtl::dual_cone_weights(gram, U, norm_eps, reg_eps), shared by its CPU and
// CUDA kernels (csrc/cpu/dual_cone_cpu.cpp, csrc/cuda/dual_cone_cuda.cu): a direct torch.ops call
// must never read out of bounds, and reg_eps > 0 keeps A = K / trace(K) + reg I positive definite.
#include <ATen/ATen.h>

#include <cmath>

#include "op_checks.h"

namespace fastmtl {

inline void check_dual_cone_inputs(const at::Tensor& gram, const at::Tensor& U, double norm_eps, double reg_eps) {
  check_gram_matrix(gram);
  const int64_t T = gram.size(0);
  TORCH_CHECK(U.dim() == 2 && U.size(1) == T, "fastmtl: dual_cone_weights: U must be [m, T] = [m, ", T, "], got ",
              U.sizes());
  TORCH_CHECK(U.scalar_type() == at::kDouble, "fastmtl: dual_cone_weights: U must be float64, got ",
              U.scalar_type());
  TORCH_CHECK(U.device() == gram.device(), "fastmtl: dual_cone_weights: U is on ", U.device(), " but gram on ",
              gram.device());
  TORCH_CHECK(std::isfinite(norm_eps) && norm_eps > 0, "fastmtl: dual_cone_weights: norm_eps must be finite and > 0, got ",
              norm_eps);
  TORCH_CHECK(std::isfinite(reg_eps) && reg_eps > 0, "fastmtl: dual_cone_weights: reg_eps must be finite and > 0, got ",
              reg_eps);
}

}  // namespace fastmtl
