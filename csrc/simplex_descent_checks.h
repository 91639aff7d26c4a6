#pragma once
// Argument checks of the simplex_descent_weights op (MoDo, SDMGrad), shared by its CPU and CUDA
// kernels (RuntimeError through TORCH_CHECK for a direct torch.ops.fastmtl call; the methods check
// their options first).
#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>

#include "op_checks.h"

namespace fastmtl {

inline void check_simplex_descent_inputs(const at::Tensor& gram, const at::Tensor& w, const at::Tensor& target,
                                         double lr, double momentum, double rho, double lambda, int64_t n_iter) {
  check_gram_matrix(gram);
  const int64_t T = gram.size(0);
  for (const auto& [vector, name] : {std::pair<const at::Tensor&, const char*>{w, "w"}, {target, "target"}}) {
    TORCH_CHECK(vector.dim() == 1 && vector.size(0) == T, "fastmtl: simplex_descent ", name, " must be [T] = [", T,
                "], got ", vector.sizes());
    TORCH_CHECK(at::isFloatingType(vector.scalar_type()), "fastmtl: simplex_descent ", name,
                " must be floating-point, got ", vector.scalar_type());
    check_same_device(vector, name, gram);
  }
  TORCH_CHECK(lr > 0 && std::isfinite(lr), "fastmtl: simplex_descent needs a finite lr > 0, got ", lr);
  TORCH_CHECK(momentum >= 0 && momentum < 1, "fastmtl: simplex_descent needs momentum in [0, 1), got ", momentum);
  TORCH_CHECK(rho >= 0 && std::isfinite(rho), "fastmtl: simplex_descent needs a finite rho >= 0, got ", rho);
  TORCH_CHECK(lambda >= 0 && std::isfinite(lambda), "fastmtl: simplex_descent needs a finite lambda >= 0, got ",
              lambda);
  TORCH_CHECK(n_iter >= 1, "fastmtl: simplex_descent needs n_iter >= 1, got ", n_iter);
}

}  // namespace fastmtl
