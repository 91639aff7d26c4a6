// The T x T PCGrad solve on the CPU: surgery_math.h's pcgrad_project_task in double precision,
// tasks in parallel (they are independent), then w = the sum of their coefficient rows in task
// order, so the bits do not depend on the thread count.
#include <ATen/Parallel.h>

#include <limits>
#include <vector>

#include "cpu/cpu_ops.h"
#include "fastmtl/surgery_math.h"

namespace fastmtl::cpu {

at::Tensor pcgrad_weights_cpu(const at::Tensor& gram, const std::optional<at::Tensor>& order) {
  check_pcgrad_inputs(gram, order);
  const int64_t T = gram.size(0);
  const at::Tensor K_tensor = gram.to(at::kDouble).contiguous();
  const double* K = K_tensor.const_data_ptr<double>();
  const at::Tensor order_rows = order.has_value() ? order->contiguous() : at::Tensor();
  const int64_t* order_data = order.has_value() ? order_rows.const_data_ptr<int64_t>() : nullptr;
  at::Tensor w = at::zeros({T}, gram.options().dtype(at::kDouble));
  double* weights = w.data_ptr<double>();
  if (!all_finite(K, T)) {  // the projections are undefined: NaN weights, visible downstream
    w.fill_(std::numeric_limits<double>::quiet_NaN());
    return w.to(gram.scalar_type());
  }
  std::vector<double> coefficients(T * T);  // row i: the coefficients of g_i^PC
  // Tasks cost O(T) to O(T^2) each: below 16 tasks the solve is too small to split.
  at::parallel_for(0, T, 16, [&](int64_t begin, int64_t end) {
    std::vector<double> v(T);
    for (int64_t i = begin; i < end; ++i) {
      pcgrad_project_task(K, T, order_data ? order_data + i * T : nullptr, i, coefficients.data() + i * T, v.data(),
                          1);
    }
  });
  for (int64_t i = 0; i < T; ++i) {
    for (int64_t k = 0; k < T; ++k) weights[k] += coefficients[i * T + k];
  }
  return w.to(gram.scalar_type());
}

}  // namespace fastmtl::cpu
