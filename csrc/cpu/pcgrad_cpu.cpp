// The T x T PCGrad solve on the CPU: the shared pcgrad_solve in double precision.
#include <vector>

#include "cpu/cpu_ops.h"
#include "fastmtl/surgery_math.h"

namespace fastmtl::cpu {

at::Tensor pcgrad_weights_cpu(const at::Tensor& gram, const std::optional<at::Tensor>& order) {
  TORCH_CHECK(gram.dim() == 2 && gram.size(0) == gram.size(1) && gram.size(0) > 0,
              "fastmtl: gram must be a non-empty square [T, T] matrix, got shape ", gram.sizes());
  TORCH_CHECK(at::isFloatingType(gram.scalar_type()), "fastmtl: gram must be floating-point, got ",
              gram.scalar_type());
  const int64_t T = gram.size(0);
  const at::Tensor K = gram.to(at::kDouble).contiguous();
  at::Tensor order_rows;
  if (order.has_value()) {
    TORCH_CHECK(order->dim() == 2 && order->size(0) == T && order->size(1) == T,
                "fastmtl: order must be [T, T] = [", T, ", ", T, "], got ", order->sizes());
    TORCH_CHECK(order->scalar_type() == at::kLong, "fastmtl: order must be int64, got ", order->scalar_type());
    TORCH_CHECK(order->device() == gram.device(), "fastmtl: order and gram must be on the same device");
    order_rows = order->contiguous();
  }
  std::vector<double> scratch(T), weights(T);
  pcgrad_solve<double, int64_t>(K.const_data_ptr<double>(), T,
                                order.has_value() ? order_rows.const_data_ptr<int64_t>() : nullptr, scratch.data(),
                                weights.data());
  at::Tensor w = at::empty({T}, gram.options().dtype(at::kDouble));
  std::copy(weights.begin(), weights.end(), w.data_ptr<double>());
  return w.to(gram.scalar_type());
}

}  // namespace fastmtl::cpu
