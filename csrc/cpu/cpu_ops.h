#pragma once
// CPU implementations of the fastmtl operators (schemas in csrc/ops.cpp) and the input checks
// they share. The Python layer gives friendlier errors first; these checks keep a direct
// torch.ops.fastmtl call from ever reading out of bounds.
#include <ATen/ATen.h>

#include <optional>
#include <string>

namespace fastmtl::cpu {

inline void check_task_matrix(const at::Tensor& grads, const char* name) {
  TORCH_CHECK(grads.dim() == 2, "fastmtl: ", name, " must be a [T, P] matrix, got ", grads.dim(), " dimensions");
  TORCH_CHECK(grads.size(0) > 0 && grads.size(1) > 0, "fastmtl: ", name, " must be non-empty, got shape ",
              grads.sizes());
  TORCH_CHECK(at::isFloatingType(grads.scalar_type()), "fastmtl: ", name, " must be a floating-point tensor, got ",
              grads.scalar_type());
}

// Kernels walk each row with unit stride; any row stride is fine.
inline at::Tensor rows_contiguous(const at::Tensor& grads) {
  return (grads.stride(1) == 1 && grads.stride(0) >= grads.size(1)) ? grads : grads.contiguous();
}

at::Tensor gram_cpu(const at::Tensor& grads);
at::Tensor pcgrad_weights_cpu(const at::Tensor& gram, const std::optional<at::Tensor>& order);
at::Tensor combine_cpu(const at::Tensor& grads, const at::Tensor& weights);
void combine_into_cpu(const at::Tensor& grads, const at::Tensor& weights, const at::Tensor& out);
at::Tensor graddrop_cpu(const at::Tensor& grads, const at::Tensor& leak, const std::optional<at::Tensor>& signs,
                        const at::Tensor& seed);
at::Tensor cluster_tasks_cpu(const at::Tensor& similarity, std::optional<int64_t> n_groups,
                             std::optional<double> threshold, const std::string& linkage);

}  // namespace fastmtl::cpu
