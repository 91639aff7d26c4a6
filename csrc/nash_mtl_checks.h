#pragma once
// Argument checks of the nash_mtl_weights op, shared by its CPU and CUDA kernels (RuntimeError
// through TORCH_CHECK for a direct torch.ops.fastmtl call; NashMTL checks its options first).
#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>

#include "op_checks.h"

namespace fastmtl {

inline void check_nash_mtl_inputs(const at::Tensor& gram, double max_norm, int64_t iterations) {
  check_gram_matrix(gram);
  TORCH_CHECK(max_norm >= 0 && std::isfinite(max_norm), "fastmtl: nash_mtl needs a finite max_norm >= 0, got ",
              max_norm);
  TORCH_CHECK(iterations > 0, "fastmtl: nash_mtl needs iterations > 0, got ", iterations);
}

}  // namespace fastmtl
