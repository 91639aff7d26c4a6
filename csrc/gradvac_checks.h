#pragma once
// Argument checks of the gradvac_weights op, shared by its CPU and CUDA kernels (RuntimeError
// through TORCH_CHECK for a direct torch.ops.fastmtl call; GradVac checks its options first).
// The order's values are not read here (that would sync a GPU): the solver skips entries outside
// [0, T) (csrc/include/fastmtl/gradvac_math.h).
#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <optional>

#include "op_checks.h"

namespace fastmtl {

inline void check_gradvac_inputs(const at::Tensor& gram, const at::Tensor& targets,
                                 const std::optional<at::Tensor>& order, double beta, double eps) {
  check_pcgrad_inputs(gram, order);  // gram [T, T] floating; order [T, T] int64 on gram's device
  const int64_t T = gram.size(0);
  TORCH_CHECK(targets.dim() == 2 && targets.size(0) == T && targets.size(1) == T, "fastmtl: gradvac targets must be [T, T] = [",
              T, ", ", T, "], got ", targets.sizes());
  TORCH_CHECK(at::isFloatingType(targets.scalar_type()), "fastmtl: gradvac targets must be floating-point, got ",
              targets.scalar_type());
  check_same_device(targets, "targets", gram);
  TORCH_CHECK(beta >= 0 && beta <= 1, "fastmtl: gradvac needs beta in [0, 1], got ", beta);
  TORCH_CHECK(eps > 0 && std::isfinite(eps), "fastmtl: gradvac needs a finite eps > 0, got ", eps);
}

}  // namespace fastmtl
