#pragma once
// Argument checks of fastmtl::cagrad_weights, shared by its CPU and CUDA kernels (the Python
// layer, python/fastmtl/methods/cagrad.py, gives friendlier errors first): a direct torch.ops
// call with options the solver does not define raises RuntimeError naming the option.
#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>

#include "op_checks.h"

namespace fastmtl {

inline void check_cagrad_inputs(const at::Tensor& gram, double c, int64_t rescale, double norm_eps,
                                int64_t max_iters, double tol) {
  check_gram_matrix(gram);
  TORCH_CHECK(std::isfinite(c) && c >= 0, "fastmtl: cagrad needs a finite c >= 0, got ", c);
  TORCH_CHECK(rescale >= 0 && rescale <= 2, "fastmtl: cagrad's rescale must be 0, 1 or 2, got ", rescale);
  // norm_eps > 0: the update divides by |g_w| >= norm_eps (0 would divide by 0 in the
  // Pareto-stationary case) and the root search starts at norm_eps / √φ > 0.
  TORCH_CHECK(std::isfinite(norm_eps) && norm_eps > 0, "fastmtl: cagrad needs a finite norm_eps > 0, got ",
              norm_eps);
  TORCH_CHECK(max_iters > 0, "fastmtl: cagrad needs max_iters > 0, got ", max_iters);
  TORCH_CHECK(std::isfinite(tol) && tol >= 0, "fastmtl: cagrad needs a finite tol >= 0, got ", tol);
}

}  // namespace fastmtl
