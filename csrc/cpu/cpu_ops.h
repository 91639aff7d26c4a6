#pragma once
// CPU implementations of the fastmtl operators (schemas in csrc/ops.cpp).
#include <ATen/ATen.h>

#include <optional>
#include <string>

#include "op_checks.h"

namespace fastmtl::cpu {

at::Tensor gram_cpu(const at::Tensor& grads);
at::Tensor gram_rescue_cpu(const at::Tensor& grads, const at::Tensor& gram);
at::Tensor pcgrad_weights_cpu(const at::Tensor& gram, const std::optional<at::Tensor>& order);
at::Tensor combine_cpu(const at::Tensor& grads, const at::Tensor& weights);
void combine_into_cpu(const at::Tensor& grads, const at::Tensor& weights, const at::Tensor& out);
at::Tensor graddrop_cpu(const at::Tensor& grads, const at::Tensor& leak, const std::optional<at::Tensor>& signs,
                        const at::Tensor& seed, int64_t column_offset);
at::Tensor cluster_tasks_cpu(const at::Tensor& similarity, std::optional<int64_t> n_groups,
                             std::optional<double> threshold, const std::string& linkage);

}  // namespace fastmtl::cpu
