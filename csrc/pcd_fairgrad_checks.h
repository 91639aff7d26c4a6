#pragma once
// Argument checks of the pcd_weights and fairgrad_weights ops, shared by their CPU and CUDA
// kernels (RuntimeError through TORCH_CHECK for a direct torch.ops.fastmtl call; PCD and FairGrad
// check their options first, with friendlier errors). No tensor value is read here (that would
// sync a GPU): the scales and taus are the method's own, already checked.
#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>

#include "op_checks.h"

namespace fastmtl {

inline void check_pcd_inputs(const at::Tensor& gram, const at::Tensor& scales, const at::Tensor& taus, double tol,
                             double dependence_tol, double precision) {
  check_gram_matrix(gram);
  const int64_t T = gram.size(0);
  TORCH_CHECK(scales.dim() == 1 && scales.size(0) == T, "fastmtl: pcd scales must be [T] = [", T, "], got ",
              scales.sizes());
  TORCH_CHECK(taus.dim() == 1 && taus.size(0) == T - 1, "fastmtl: pcd taus must be [T - 1] = [", T - 1, "], got ",
              taus.sizes());
  TORCH_CHECK(at::isFloatingType(scales.scalar_type()) && at::isFloatingType(taus.scalar_type()),
              "fastmtl: pcd scales and taus must be floating-point");
  check_same_device(scales, "scales", gram);
  check_same_device(taus, "taus", gram);
  TORCH_CHECK(tol >= 0 && std::isfinite(tol), "fastmtl: pcd needs a finite tol >= 0, got ", tol);
  TORCH_CHECK(dependence_tol >= 0 && std::isfinite(dependence_tol),
              "fastmtl: pcd needs a finite dependence_tol >= 0, got ", dependence_tol);
  TORCH_CHECK(precision >= 0 && std::isfinite(precision), "fastmtl: pcd needs a finite precision >= 0, got ",
              precision);
}

inline void check_fairgrad_inputs(const at::Tensor& gram, double alpha, int64_t max_iters) {
  check_gram_matrix(gram);
  TORCH_CHECK(alpha >= 0 && std::isfinite(alpha), "fastmtl: fairgrad needs a finite alpha >= 0, got ", alpha);
  TORCH_CHECK(max_iters > 0, "fastmtl: fairgrad needs max_iters > 0, got ", max_iters);
}

}  // namespace fastmtl
