#pragma once
// Projected (momentum) gradient descent of task weights on the simplex, in Gram space: the weight
// updates of MoDo (Chen et al. 2024, JMLR, Eq. 2.9a) and SDMGrad (Xiao et al. 2023, NeurIPS,
// Alg. 1), one solver for both. From the stored weights w (w0) and the preference w~ (target):
//   A' = A / (m^2 + 1e-8), m = mean_i sqrt(max(A_ii, 0))   (when normalize; else A' = A)
//   v = 0; n_iter times: v <- momentum v + A' (w + lambda w~) + rho w;  w <- P(w - lr v)
//   out = [w | (w + lambda w~) / (1 + lambda)]
// P is the Euclidean projection onto {x >= 0, sum x = 1} (Duchi et al. 2008): with s = y sorted
// descending, rho* the largest j with s_j > (s_1 + ... + s_j - 1) / j and theta = that mean, P(y) =
// max(y - theta, 0). y is first shifted by its maximum (P(y - c 1) = P(y)) so that a huge step
// keeps the simplex's 1 next to y's spread instead of losing it to cancellation. MoDo is one step
// with lambda = 0 and no normalisation; SDMGrad has rho = 0. A may be any square matrix (the papers'
// A = J1 J2^T of two batches is not symmetric). The reference: python/fastmtl/methods/
// stochastic_weightings.py. Solver interface: csrc/cpu/small_solve_cpu.h.
#include <cmath>
#include <cstdint>

#include "fastmtl/macros.h"

namespace fastmtl {

// P(y) in place; sorted: T values of scratch.
FASTMTL_HOST_DEVICE inline void project_onto_simplex(double* y, int64_t T, double* sorted) {
  double top = y[0];
  for (int64_t i = 1; i < T; ++i) top = std::fmax(top, y[i]);
  for (int64_t i = 0; i < T; ++i) {  // insertion sort, descending (T is small)
    const double value = y[i] - top;
    int64_t j = i;
    for (; j > 0 && sorted[j - 1] < value; --j) sorted[j] = sorted[j - 1];
    sorted[j] = value;
  }
  double cumulative = 0, theta = 0;
  for (int64_t j = 0; j < T; ++j) {
    cumulative += sorted[j];
    const double shifted = cumulative - 1;
    if (sorted[j] * static_cast<double>(j + 1) > shifted) theta = shifted / static_cast<double>(j + 1);
  }
  for (int64_t i = 0; i < T; ++i) y[i] = std::fmax(y[i] - top - theta, 0.0);
}

struct SimplexDescentSolver {
  const double* w0;      // [T] the stored weights
  const double* target;  // [T] the preference w~
  double lr, momentum, rho, lambda;
  int64_t n_iter;
  bool normalize;

  // Scratch: the velocity v, the point w + lambda w~, the step, the sort buffer.
  FASTMTL_HOST_DEVICE int64_t scratch_size(int64_t T) const { return 4 * T; }
  FASTMTL_HOST_DEVICE int64_t out_size(int64_t T) const { return 2 * T; }  // [w | weights]

  FASTMTL_HOST_DEVICE void operator()(const double* A, int64_t T, int64_t /*job*/, double* scratch,
                                      double* out) const {
    double* v = scratch;
    double* point = v + T;
    double* step = point + T;
    double* sorted = step + T;
    double* w = out;
    double scale = 1.0;
    if (normalize) {
      double m = 0;
      for (int64_t i = 0; i < T; ++i) m += std::sqrt(std::fmax(A[i * T + i], 0.0));
      m /= static_cast<double>(T);
      scale = 1.0 / (m * m + 1e-8);
    }
    for (int64_t i = 0; i < T; ++i) {
      w[i] = w0[i];
      v[i] = 0;
    }
    for (int64_t k = 0; k < n_iter; ++k) {
      for (int64_t i = 0; i < T; ++i) point[i] = w[i] + lambda * target[i];
      for (int64_t i = 0; i < T; ++i) {
        double row = 0;
        for (int64_t j = 0; j < T; ++j) row += A[i * T + j] * point[j];
        v[i] = momentum * v[i] + scale * row + rho * w[i];
        step[i] = w[i] - lr * v[i];
      }
      project_onto_simplex(step, T, sorted);
      for (int64_t i = 0; i < T; ++i) w[i] = step[i];
    }
    for (int64_t i = 0; i < T; ++i) out[T + i] = (w[i] + lambda * target[i]) / (1 + lambda);
  }
};

}  // namespace fastmtl
