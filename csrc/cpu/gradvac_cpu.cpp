// GradVac's pair updates on the CPU (csrc/include/fastmtl/gradvac_math.h): one job per task,
// in parallel; then the weights, the sum of the coefficient rows in task index order, by one
// plain loop here (the jobs write disjoint rows, so the bits do not depend on the thread count).
#include <torch/library.h>

#include <tuple>

#include "cpu/small_solve_cpu.h"
#include "fastmtl/gradvac_math.h"
#include "gradvac_checks.h"

namespace fastmtl::cpu {
namespace {

std::tuple<at::Tensor, at::Tensor> gradvac_weights_cpu(const at::Tensor& gram, const at::Tensor& targets,
                                                       const std::optional<at::Tensor>& order, double beta,
                                                       double eps) {
  check_gradvac_inputs(gram, targets, order, beta, eps);
  const int64_t T = gram.size(0);
  const at::Tensor targets_rows = targets.to(at::kDouble).contiguous();
  const at::Tensor order_rows = order.has_value() ? order->contiguous() : at::Tensor();
  const GradVacSolver solver{targets_rows.const_data_ptr<double>(),
                             order.has_value() ? order_rows.const_data_ptr<int64_t>() : nullptr, beta, eps};
  const at::Tensor out = run_small_solve_cpu(gram, T, solver);  // [targets T x T | coefficients T x T]
  const double* coefficients = out.const_data_ptr<double>() + T * T;
  at::Tensor weights = at::zeros({T}, out.options());
  double* w = weights.data_ptr<double>();
  for (int64_t i = 0; i < T; ++i) {
    for (int64_t k = 0; k < T; ++k) w[k] += coefficients[i * T + k];
  }
  return {weights, out.narrow(0, 0, T * T).view({T, T})};
}

}  // namespace
}  // namespace fastmtl::cpu

TORCH_LIBRARY_IMPL(fastmtl, CPU, m) { m.impl("gradvac_weights", &fastmtl::cpu::gradvac_weights_cpu); }
