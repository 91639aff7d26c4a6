#pragma once
// Argument checks of the mgda_weights op, shared by its CPU and CUDA kernels (RuntimeError
// through TORCH_CHECK for a direct torch.ops.fastmtl call; MGDA checks its options first).
#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>

#include "op_checks.h"

namespace fastmtl {

inline void check_mgda_inputs(const at::Tensor& gram, int64_t max_iters, double epsilon) {
  check_gram_matrix(gram);
  TORCH_CHECK(max_iters > 0, "fastmtl: mgda needs max_iters > 0, got ", max_iters);
  TORCH_CHECK(epsilon > 0 && std::isfinite(epsilon), "fastmtl: mgda needs a finite epsilon > 0, got ", epsilon);
}

}  // namespace fastmtl
