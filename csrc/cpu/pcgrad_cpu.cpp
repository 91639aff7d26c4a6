// The T x T PCGrad solve on the CPU: the shared pcgrad_solve in double precision.
#include <vector>

#include "cpu/cpu_ops.h"
#include "fastmtl/surgery_math.h"

namespace fastmtl::cpu {

at::Tensor pcgrad_weights_cpu(const at::Tensor& gram, const std::optional<at::Tensor>& order) {
  check_pcgrad_inputs(gram, order);
  const int64_t T = gram.size(0);
  const at::Tensor K = gram.to(at::kDouble).contiguous();
  const at::Tensor order_rows = order.has_value() ? order->contiguous() : at::Tensor();
  std::vector<double> scratch(T), weights(T);
  pcgrad_solve<double, int64_t>(K.const_data_ptr<double>(), T,
                                order.has_value() ? order_rows.const_data_ptr<int64_t>() : nullptr, scratch.data(),
                                weights.data());
  at::Tensor w = at::empty({T}, gram.options().dtype(at::kDouble));
  std::copy(weights.begin(), weights.end(), w.data_ptr<double>());
  return w.to(gram.scalar_type());
}

}  // namespace fastmtl::cpu
